"""Video and image bytes <-> numpy arrays: encode, decode (with limits), resize, GIF.

Every array here is uint8 RGB: a video is `(T, H, W, 3)`, an image `(H, W, 3)`. Videos are
H.264 (libx264, yuv420p) in MP4, the format WebVid serves and browsers play; images are JPEG.
Decoding failures raise `MediaError` (a `ValueError`) with a message naming the problem, so data
pipelines can catch one exception type and count the bad sample instead of crashing a worker.
Inputs refused by a `DecodeLimits` check raise the subclass `MediaLimitError`; every `MediaError`
carries a `.reason` ("undecodable" or the limit's name) that prepare uses as its skip-count key.

Scraped media is untrusted: decoding only ever runs the demuxers / Pillow plugins we expect, checks
frame sizes from headers before allocating pixels, and bounds frames, streams and wall time.

Where things live: this module holds the codecs proper (encoding, frame decoding with seeking,
resampling and the per-call decode budget, GIFs); `resize_center_crop` is `modeling.pixels`' and the
image codecs (`decode_image`, `encode_jpeg`) are `pipelines.media_image`'s, both re-exported here. The limits, error
types, format-restricted opening, header probing (`probe_video` / `probe_image`), skip filters
and `clip_starts` live in `pipelines.media_probe`, which decides everything knowable before pixels
are decoded; they are re-exported here (see `__all__`), so callers keep importing from this module.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from modeling.pixels import resize_center_crop  # re-exported: the one resize lives with the pixel conversions

# Public names are re-exported (`__all__`); the private ones are the openers and helpers the decoders share.
from pipelines.media_image import decode_image, encode_jpeg  # re-exported: the image codecs
from pipelines.media_probe import (
    DEFAULT_LIMITS,
    LIMIT_REASONS,
    TIME_EPS,
    DecodeLimits,
    ImageInfo,
    MediaError,
    MediaLimitError,
    VideoInfo,
    check_image_filters,
    check_pixels,
    check_video_filters,
    clip_starts,
    open_video,
    probe_image,
    probe_video,
    stream_duration,
    stream_rate,
    video_info,
)

__all__ = [
    "DEFAULT_LIMITS",
    "LIMIT_REASONS",
    "DecodeLimits",
    "DecodedVideo",
    "ImageInfo",
    "MediaError",
    "MediaLimitError",
    "VideoInfo",
    "check_image_filters",
    "check_video_filters",
    "clip_starts",
    "decode_image",
    "decode_raw_clip",
    "decode_video",
    "decode_video_clips",
    "encode_jpeg",
    "encode_mp4",
    "encode_mp4_file",
    "probe_image",
    "probe_video",
    "resize_center_crop",
    "write_gif",
]

# When a seek lands on a keyframe after start_sec (demuxers index by dts, or have no index), retry
# this many seconds earlier; past the last one, decode from the start.
_SEEK_BACKOFF_S = (2.0, 10.0)


@dataclass(frozen=True)
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float  # rate of `frames`: the requested fps, or the source's average rate
    duration: float  # seconds of the source stream (all of it, not just the frames returned)


# ----------------------------------------------------------------------------- video


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise MediaError(f"expected uint8 frames, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise MediaError("cannot encode a video with zero frames")
    _, h, w, _ = frames.shape
    # yuv420p stores chroma at half resolution in both axes, so x264 rejects odd sizes.
    if h % 2 or w % 2:
        raise MediaError(f"H.264 yuv420p needs even width and height, got {w}x{h}")
    return frames


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "medium") -> bytes:
    """(T, H, W, 3) uint8 -> MP4 bytes (H.264 libx264, yuv420p, constant `fps`, x264 `preset`).

    The preset trades encode time for file size at the same quality (crf): `prepare` uses "superfast",
    several times faster than "medium" for ~10-20% larger clips, because re-encoding is a large part of its
    per-clip cost (`PrepareConfig.x264_preset`).

    Same frames -> same bytes (content hashes, caches and the synthetic data set rely on it), which
    takes two settings: one x264 thread, and no macroblock-tree rate control. With mbtree on, this
    x264 build's SIMD path (seen on an AVX-512 CPU) gave different bytes from run to run for small
    frames (27 of 40 test videos at 32-96 px); with mbtree=0 none did. Both cost little here.
    """
    options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
    return _encode_yuv420p(frames, fps, "mp4", "libx264", options)


def encode_webm(frames: np.ndarray, fps: float, crf: int = 32) -> bytes:
    """(T, H, W, 3) uint8 -> WebM bytes (VP9 libvpx-vp9, yuv420p, constant quality `crf`, one thread so the
    same frames give the same bytes), the royalty-free format every browser plays."""
    options = {"crf": str(crf), "b": "0", "threads": "1", "row-mt": "0", "deadline": "good"}
    # bitexact: no random Matroska segment UID, so the same frames give the same bytes
    return _encode_yuv420p(frames, fps, "webm", "libvpx-vp9", options, {"fflags": "+bitexact"})


def _encode_yuv420p(
    frames: np.ndarray, fps: float, fmt: str, codec: str, options: dict, container_options: dict | None = None
) -> bytes:
    """(T, H, W, 3) uint8 -> `fmt` container bytes of one `codec` stream (yuv420p, constant `fps`)."""
    frames = _check_frames(frames)
    if fps <= 0:
        raise MediaError(f"fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    _, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt, container_options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.options = options
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode())  # flush delayed (B-)frames
    return buf.getvalue()


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """(T, H, W, 3) uint8 -> looping animated GIF bytes (Pillow; GIF delays are in 10 ms units)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise MediaError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        "GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        optimize=False,
    )
    return buf.getvalue()


# format name -> (encoder (frames, fps) -> bytes, media type): what `phenaki serve` answers with
VIDEO_FORMATS = {
    "mp4": (encode_mp4, "video/mp4"),
    "webm": (encode_webm, "video/webm"),
    "gif": (encode_gif, "image/gif"),
}


def encode_video(frames: np.ndarray, fps: float, fmt: str) -> tuple[bytes, str]:
    """(T, H, W, 3) uint8 -> (bytes, media type) in `fmt` (one of VIDEO_FORMATS)."""
    if fmt not in VIDEO_FORMATS:
        raise MediaError(f"unknown video format {fmt!r}; formats: {', '.join(VIDEO_FORMATS)}")
    encode, media_type = VIDEO_FORMATS[fmt]
    return encode(frames, fps), media_type


def encode_mp4_file(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """`encode_mp4` written to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps, crf))
    return path


class _Budget:
    """The limits that need decoding to check: frames decoded, wall time, output bytes (per call)."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_decode_s
        self.decoded = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise MediaLimitError("decode_timeout", f"decoding took over {self.limits.max_decode_s}s")

    def frame(self, frame: av.VideoFrame) -> None:
        self.tick()
        self.decoded += 1
        if self.decoded > self.limits.max_frames:
            raise MediaLimitError("too_many_frames", f"decoded more than {self.limits.max_frames} frames")
        check_pixels(frame.width, frame.height, self.limits, "decoded frame")  # size changes mid-stream

    def output(self, count: int, nbytes: int) -> None:
        if count > self.limits.max_frames or count * nbytes > self.limits.max_output_bytes:
            raise MediaLimitError("too_many_frames", f"{count} output frames of {nbytes} bytes")


def _frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, budget: _Budget
) -> Iterator[av.VideoFrame]:
    # container.decode(stream), unrolled so the clock is checked on packets that yield no frame too.
    for packet in container.demux(stream):
        budget.tick()
        for frame in packet.decode():
            budget.frame(frame)
            yield frame


def _timed(frames: Iterator[av.VideoFrame], src_rate: float | None) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time relative to the first frame, frame), decoding from the start of the stream."""
    t0: float | None = None
    for index, frame in enumerate(frames):
        t = frame.time if frame.time is not None else index / (src_rate or 1.0)
        t0 = t if t0 is None else t0
        yield t - t0, frame


class _Overshoot(Exception):
    """The seek cannot be trusted to give the frames a decode from the start gives."""


def _after_keyframe(
    frames: Iterator[av.VideoFrame], t0: float, start_sec: float
) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time relative to t0, frame) after a seek, from the first keyframe on.

    Frames output before that keyframe may be leading pictures of an open GOP, which reference
    frames before the seek point and would differ from a decode from the start: dropped. The
    keyframe must be at or before start_sec, or frames between start_sec and it would be lost.
    """
    keyed = False
    for frame in frames:
        if frame.time is None:
            raise _Overshoot("frame without a timestamp after seeking")
        rel = frame.time - t0
        if not keyed:
            if rel > start_sec + TIME_EPS:
                raise _Overshoot(f"first frame after seeking is at {rel:.3f}s > {start_sec}s")
            if not frame.key_frame:
                continue
            keyed = True
        yield rel, frame
    if not keyed:
        raise _Overshoot("no keyframe after seeking")


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side `size` and the aspect kept (long side rounded, at least `size`)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def _frame_rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    """A decoded frame -> (H, W, 3) uint8 RGB, or with `size` -> (size, size, 3): the short side scaled to
    `size` and the centre cropped, as `resize_center_crop` frames it.

    The scaling runs in FFmpeg's swscale together with the YUV -> RGB conversion, in C: on 320x240 sources
    Pillow's bicubic cost about half as much as decoding the frames (benchmarks/prepare_throughput.py). The
    area filter averages over the source pixels each output pixel covers when shrinking (no aliasing); the
    pixels differ from Pillow's bicubic by a few levels (the filter, and the long side rounded to whole pixels).
    """
    if size is None:
        return frame.to_ndarray(format="rgb24")
    width, height = scaled_size(frame.width, frame.height, size)
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def _resample(
    timed: Iterator[tuple[float, av.VideoFrame]],
    src_rate: float | None,
    fps: float | None,
    max_frames: int | None,
    start_sec: float,
    size: int | None,
    budget: _Budget,
) -> tuple[list[np.ndarray], float | None]:
    """Returns (frames, presentation time of the last decoded frame, relative to the first)."""
    out: list[np.ndarray] = []
    full = max_frames if max_frames is not None else float("inf")
    rel: float | None = None
    # Resampling state: the latest source frame with time <= the next output time, and its RGB
    # (converted lazily and cached, since one source frame may fill several output slots).
    held: tuple[float, av.VideoFrame] | None = None
    held_rgb: np.ndarray | None = None

    def emit(rgb: np.ndarray) -> None:
        if out and rgb.shape != out[0].shape:  # legal in H.264 / VP9, but not one (T, H, W, 3) array
            raise MediaError(f"frame size changed mid-stream: {out[0].shape[:2]} -> {rgb.shape[:2]}")
        out.append(rgb)
        budget.output(len(out), rgb.nbytes)

    for rel, frame in timed:
        if fps is None:
            if rel + TIME_EPS >= start_sec:
                emit(_frame_rgb(frame, size))
        else:
            # This frame starts after the next output time(s): those show the held frame.
            while held is not None and len(out) < full and start_sec + len(out) / fps < rel - TIME_EPS:
                held_rgb = held_rgb if held_rgb is not None else _frame_rgb(held[1], size)
                emit(held_rgb)
            held, held_rgb = (rel, frame), None
        if len(out) >= full:
            return out, rel
    if fps is not None and held is not None:
        # The last frame stays on screen for one frame duration, then the video ends.
        end = held[0] + 1.0 / (src_rate or fps)
        while len(out) < full and start_sec + len(out) / fps < end - TIME_EPS:
            held_rgb = held_rgb if held_rgb is not None else _frame_rgb(held[1], size)
            emit(held_rgb)
    return out, rel


def _decode_seeking(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    src_rate: float | None,
    fps: float | None,
    max_frames: int | None,
    start_sec: float,
    size: int | None,
    budget: _Budget,
) -> tuple[list[np.ndarray], float | None] | None:
    """`_resample` from start_sec via a keyframe seek; None when only a decode from the start is exact.

    Times stay relative to the stream's first frame (t0), so the first frame is decoded to learn t0
    (cheap: the first keyframe) before seeking to the keyframe at or before t0 + start_sec.
    """
    frames = _frames(container, stream, budget)
    first = next(frames, None)
    frames.close()
    if first is None or first.time is None or stream.time_base is None:
        return None
    t0 = first.time
    for backoff in (0.0, *_SEEK_BACKOFF_S):
        target = t0 + start_sec - backoff
        if target <= t0:
            return None
        try:
            container.seek(math.floor(target / stream.time_base), stream=stream, backward=True)
            timed = _after_keyframe(_frames(container, stream, budget), t0, start_sec)
            return _resample(timed, src_rate, fps, max_frames, start_sec, size, budget)
        except _Overshoot:
            continue
        except av.error.ExitError:
            raise
        except av.FFmpegError:  # e.g. a demuxer that cannot seek here: decode from the start
            return None
    return None


def decode_video(
    src: bytes | str | os.PathLike,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    start_sec: float = 0.0,
    size: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> DecodedVideo:
    """Decode a video to RGB frames.

    Times are measured from the first decoded frame. Frames before `start_sec` are skipped.
    With `fps`, output frame k shows time t_k = start_sec + k / fps and is the latest source frame
    whose presentation time is <= t_k (the source is held, never blended); output stops at the
    end of the source (last pts + one frame duration). At most `max_frames` frames are returned.
    With `start_sec` > 0 the decoder seeks to the keyframe before it; the frames are the same as
    decoding from the start (it falls back to that when a seek cannot guarantee it).
    With `size`, each frame comes out (size, size, 3): short side scaled to `size`, centre cropped, in
    the decoder's scaler (`_frame_rgb`) rather than after it.
    Raises `MediaLimitError` when `limits` refuse the input, `MediaError` when it is undecodable.
    """
    _check_decode_args(fps, max_frames, start_sec, size)
    budget = _Budget(limits)
    with open_video(src, limits) as (container, stream):
        return _decode_opened(container, stream, src, fps, max_frames, start_sec, size, limits, budget)


def _check_decode_args(fps: float | None, max_frames: int | None, start_sec: float, size: int | None) -> None:
    if fps is not None and fps <= 0:
        raise MediaError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames <= 0:
        raise MediaError(f"max_frames must be positive, got {max_frames}")
    if start_sec < 0:
        raise MediaError(f"start_sec must be >= 0, got {start_sec}")
    if size is not None and size <= 0:
        raise MediaError(f"size must be positive, got {size}")


def _decode_opened(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    src: bytes | str | os.PathLike,
    fps: float | None,
    max_frames: int | None,
    start_sec: float,
    size: int | None,
    limits: DecodeLimits,
    budget: _Budget,
) -> DecodedVideo:
    """`decode_video` on a container `open_video` opened from `src` and nothing has read from yet."""
    # No frame threading: at our sizes its start-up costs more than it saves, and loaders
    # already decode many videos in parallel.
    src_rate = stream_rate(stream)
    args = (src_rate, fps, max_frames, start_sec, size, budget)
    try:
        if start_sec <= 0:
            got = _resample(_timed(_frames(container, stream, budget), src_rate), *args)
        elif (got := _decode_seeking(container, stream, *args)) is None:
            # The seek could not be made exact and this container was read from: start afresh.
            with open_video(src, limits) as (fresh, fresh_stream):
                got = _resample(_timed(_frames(fresh, fresh_stream, budget), src_rate), *args)
    except av.error.ExitError as e:
        raise MediaLimitError("decode_timeout", f"FFmpeg interrupted after {limits.max_decode_s}s") from e
    except av.FFmpegError as e:
        raise MediaError(f"cannot decode video: {e}") from e
    out, last_time = got
    duration = stream_duration(container, stream, last_time, src_rate) or 0.0
    if not out:
        raise MediaError(f"no frames decoded (start_sec={start_sec}, stream duration {duration:.3f}s)")
    return DecodedVideo(frames=np.stack(out), fps=float(fps or src_rate or 0.0), duration=duration)


def decode_video_clips(
    src: bytes | str | os.PathLike,
    plan: Callable[[VideoInfo], list[float]],
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    size: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> tuple[VideoInfo, list[tuple[float, DecodedVideo]]]:
    """Probe a video and decode the clips `plan(info)` starts (seconds), opening it once for the probe and
    the first clip: `probe_video` then `decode_video` per start, without demuxing the header twice (about a
    tenth of prepare's per-video work on 320x240 sources). `plan` may raise to refuse the video from its
    header; nothing is decoded then. Returns the header and (start, clip) per start, each clip what
    `decode_video(src, start_sec=start, ...)` returns."""
    _check_decode_args(fps, max_frames, 0.0, size)
    budget = _Budget(limits)
    with open_video(src, limits) as (container, stream):
        info = video_info(container, stream)
        starts = plan(info)
        if not starts:
            return info, []
        _check_decode_args(fps, max_frames, starts[0], size)
        first = _decode_opened(container, stream, src, fps, max_frames, starts[0], size, limits, budget)
    # later clips seek from a fresh open, as decode_video does (the first clip's reads moved this one)
    rest = [
        (s, decode_video(src, fps=fps, max_frames=max_frames, start_sec=s, size=size, limits=limits))
        for s in starts[1:]
    ]
    return info, [(starts[0], first), *rest]


def decode_raw_clip(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """A clip-shard `frames.npy` member (`pipelines.shards.RAW_CLIP_KEY`) -> (T, H, W, 3) uint8, the first
    `max_frames` frames. Raises `MediaError` for bytes that are not such an array (shards may come from anywhere:
    no pickles, and the header's shape must match the bytes before anything is allocated)."""
    from pipelines.shards import load_npy

    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):  # what np.save writes
            raise ValueError(f"unsupported .npy version {version}")
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(buf)
    except (ValueError, EOFError) as e:
        raise MediaError(f"cannot read frames.npy: {e}") from e
    if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8 or shape[0] == 0:
        raise MediaError(f"frames.npy must hold (T, H, W, 3) uint8 frames with T > 0, got {shape} {dtype}")
    if math.prod(shape) != len(data) - buf.tell():
        raise MediaError(f"frames.npy of shape {shape} holds {len(data) - buf.tell()} bytes of pixels")
    frames = load_npy(data)
    return frames[:max_frames] if max_frames is not None else frames


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> looping animated GIF at `path` (for eyeballing samples)."""
    data = encode_gif(frames, fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
