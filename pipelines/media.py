"""Video and image bytes <-> numpy arrays.

Every array here is uint8 RGB: a video is `(T, H, W, 3)`, an image `(H, W, 3)`. Videos are
H.264 (libx264, yuv420p) in MP4, the format WebVid serves and browsers play; images are JPEG.
Decoding failures raise `MediaError` (a `ValueError`) with a message naming the problem, so data
pipelines can catch one exception type and count the bad sample instead of crashing a worker.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

# Tolerance when comparing presentation times (seconds): pts are rationals, output times are
# floats k/fps, and a frame exactly at t must count as "at or before t".
_TIME_EPS = 1e-6


class MediaError(ValueError):
    """Input that cannot be decoded or encoded (corrupt bytes, zero frames, odd sizes...)."""


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


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """(T, H, W, 3) uint8 -> MP4 bytes (H.264 libx264, yuv420p, constant `fps`).

    Same frames -> same bytes (content hashes, caches and the synthetic data set rely on it), which
    takes two settings: one x264 thread, and no macroblock-tree rate control. With mbtree on, this
    x264 build's SIMD path (seen on an AVX-512 CPU) gave different bytes from run to run for small
    frames (27 of 40 test videos at 32-96 px); with mbtree=0 none did. Both cost little here.
    """
    frames = _check_frames(frames)
    if fps <= 0:
        raise MediaError(f"fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    _, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode())  # flush delayed (B-)frames
    return buf.getvalue()


def encode_mp4_file(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """`encode_mp4` written to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(frames, fps, crf))
    return path


def _open(src: bytes | str | os.PathLike) -> av.container.InputContainer:
    try:
        if isinstance(src, bytes | bytearray | memoryview):
            return av.open(io.BytesIO(bytes(src)), mode="r")
        return av.open(os.fspath(src), mode="r")
    except av.FFmpegError as e:
        raise MediaError(f"cannot open video: {e}") from e


def decode_video(
    src: bytes | str | os.PathLike,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    start_sec: float = 0.0,
) -> DecodedVideo:
    """Decode a video to RGB frames.

    Times are measured from the first decoded frame. Frames before `start_sec` are skipped.
    With `fps`, output frame k shows time t_k = start_sec + k / fps and is the latest source frame
    whose presentation time is <= t_k (the source is held, never blended); output stops at the
    end of the source (last pts + one frame duration). At most `max_frames` frames are returned.
    """
    if fps is not None and fps <= 0:
        raise MediaError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames <= 0:
        raise MediaError(f"max_frames must be positive, got {max_frames}")
    if start_sec < 0:
        raise MediaError(f"start_sec must be >= 0, got {start_sec}")
    container = _open(src)
    with container:
        if not container.streams.video:
            raise MediaError("no video stream in input")
        stream = container.streams.video[0]
        # No frame threading: at our sizes its start-up costs more than it saves, and loaders
        # already decode many videos in parallel.
        src_rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        try:
            out, last_time = _decode_frames(container, stream, src_rate, fps, max_frames, start_sec)
        except av.FFmpegError as e:
            raise MediaError(f"cannot decode video: {e}") from e
        duration = _stream_duration(container, stream, last_time, src_rate)
    if not out:
        raise MediaError(f"no frames decoded (start_sec={start_sec}, stream duration {duration:.3f}s)")
    return DecodedVideo(frames=np.stack(out), fps=float(fps or src_rate or 0.0), duration=duration)


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    src_rate: float | None,
    fps: float | None,
    max_frames: int | None,
    start_sec: float,
) -> tuple[list[np.ndarray], float | None]:
    """Returns (frames, presentation time of the last decoded frame, relative to the first)."""
    out: list[np.ndarray] = []
    full = max_frames if max_frames is not None else float("inf")
    t0: float | None = None
    rel: float | None = None
    # Resampling state: the latest source frame with time <= the next output time, and its RGB
    # (converted lazily and cached, since one source frame may fill several output slots).
    held: tuple[float, av.VideoFrame] | None = None
    held_rgb: np.ndarray | None = None
    for index, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else index / (src_rate or 1.0)
        t0 = t if t0 is None else t0
        rel = t - t0
        if fps is None:
            if rel + _TIME_EPS >= start_sec:
                out.append(frame.to_ndarray(format="rgb24"))
        else:
            # This frame starts after the next output time(s): those show the held frame.
            while held is not None and len(out) < full and start_sec + len(out) / fps < rel - _TIME_EPS:
                held_rgb = held_rgb if held_rgb is not None else held[1].to_ndarray(format="rgb24")
                out.append(held_rgb)
            held, held_rgb = (rel, frame), None
        if len(out) >= full:
            return out, rel
    if fps is not None and held is not None:
        # The last frame stays on screen for one frame duration, then the video ends.
        end = held[0] + 1.0 / (src_rate or fps)
        while len(out) < full and start_sec + len(out) / fps < end - _TIME_EPS:
            held_rgb = held_rgb if held_rgb is not None else held[1].to_ndarray(format="rgb24")
            out.append(held_rgb)
    return out, rel


def _stream_duration(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    last_time: float | None,
    src_rate: float | None,
) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    if last_time is not None:
        return last_time + (1.0 / src_rate if src_rate else 0.0)
    return 0.0


# ----------------------------------------------------------------------------- images


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise MediaError(f"expected (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(src: bytes | str | os.PathLike) -> np.ndarray:
    """Any Pillow-readable image (bytes or path) -> (H, W, 3) uint8 RGB.

    Transparent images are composited on white: their RGB under alpha 0 is arbitrary (often
    black), which would otherwise show up as junk around the subject.
    """
    try:
        with Image.open(io.BytesIO(bytes(src)) if isinstance(src, bytes | bytearray) else src) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MediaError(f"cannot decode image: {e}") from e


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size`, then centre-crop to size x size.

    (T, H, W, 3) -> (T, size, size, 3) or (H, W, 3) -> (size, size, 3), uint8.
    Pillow's bicubic widens its kernel by the scale factor when shrinking, so it averages over
    the source area (no aliasing) when downscaling and interpolates smoothly when upscaling.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return resize_center_crop(frames[None], size)[0]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise MediaError(f"expected (T, H, W, 3) or (H, W, 3), got {frames.shape}")
    _, h, w, _ = frames.shape
    if (h, w) == (size, size):
        return frames.copy()
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    out = np.empty((frames.shape[0], size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        im = Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC)
        out[i] = np.asarray(im.crop((left, top, left + size, top + size)))
    return out


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> looping animated GIF at `path` (for eyeballing samples)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise MediaError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    # GIF delays are in 10 ms units; Pillow takes milliseconds.
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=False
    )
    return path
