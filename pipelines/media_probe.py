"""Decode limits, safe opening and header probing for untrusted media; filters and clip plans.

Split out of `pipelines.media` by responsibility: this module holds everything decided *before*
pixels are decoded, that is the error types and `DecodeLimits`, the format-restricted opening of
containers / images with their header-level checks (format whitelist, stream count, pixel count),
`probe_video` / `probe_image`, the header-based skip filters and `clip_starts`. `pipelines.media`
holds the codecs proper (encode / decode / resize / GIF) and imports its openers from here; it
re-exports every public name below, so `from pipelines.media import DecodeLimits` keeps working.
This module does not import `pipelines.media` (no cycle).

`MediaError` (a `ValueError`) is raised for undecodable input; inputs refused by a `DecodeLimits`
check raise the subclass `MediaLimitError`, whose `.reason` is one of `LIMIT_REASONS`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import av
from PIL import Image, UnidentifiedImageError

# Tolerance when comparing presentation times (seconds): pts are rationals, output times are
# floats k/fps, and a frame exactly at t must count as "at or before t".
TIME_EPS = 1e-6

# MediaLimitError.reason values (plain MediaError: "undecodable").
LIMIT_REASONS = (
    "too_many_pixels",
    "too_many_frames",
    "too_many_streams",
    "decode_timeout",
    "unexpected_format",
)


class MediaError(ValueError):
    """Input that cannot be decoded or encoded (corrupt bytes, zero frames, odd sizes...)."""

    reason: str = "undecodable"


class MediaLimitError(MediaError):
    """Input refused by a `DecodeLimits` check; `.reason` is one of `LIMIT_REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in LIMIT_REASONS:
            raise ValueError(f"unknown limit reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one decode call may cost; all are checked before the work they bound."""

    max_pixels: int = 4096 * 4096  # per frame / image, from the header, before pixels are decoded
    max_frames: int = 100_000  # source frames decoded (and output frames returned) per call
    max_streams: int = 16  # streams of any kind in a container
    max_decode_s: float = 60.0  # wall time per call, checked between packets / frames
    # Returned frames, in bytes: a long 4K video decoded without `max_frames` would otherwise fill RAM.
    max_output_bytes: int = 4 << 30
    # PyAV `container.format.name` of the demuxers FFmpeg may run (its `format_whitelist`): MP4/MOV,
    # Matroska/WebM and AVI cover web video. Not "mpegts" (HLS segments; its probe is lax) and never
    # image2/jpeg_pipe, which would "decode" a JPEG named .mp4 as a one-frame video.
    video_formats: tuple[str, ...] = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi")
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # Pillow `Image.format`

    def __post_init__(self) -> None:
        if min(self.max_pixels, self.max_frames, self.max_streams, self.max_output_bytes) < 1:
            raise ValueError(f"limits must be positive: {self}")
        if self.max_decode_s < 0 or not self.video_formats or not self.image_formats:
            raise ValueError(f"invalid limits: {self}")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class VideoInfo:
    """What a container header says about its first video stream (no frames decoded)."""

    width: int  # coded size; rotation metadata is not applied (nor is it when decoding)
    height: int
    fps: float | None  # average rate, else FFmpeg's guess; None when unknown
    duration_s: float | None  # stream duration, else container duration; None when unknown
    num_streams: int  # all streams (video, audio, subtitles, data)
    format_name: str  # PyAV container.format.name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str  # e.g. "h264", "vp9"


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as stored; EXIF orientation may swap width and height when decoding
    height: int
    format_name: str  # Pillow Image.format, e.g. "JPEG"
    mode: str  # Pillow mode before conversion, e.g. "RGB", "P", "I;16"


# File signatures, only to say what a refused input is ("a JPEG image" beats "EINVAL") and, for
# images, to tell a format we do not accept from bytes nobody could decode.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF8", "GIF"),
    (8, b"WEBP", "WEBP"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (4, b"ftyp", "ISO-BMFF (mp4/mov/heic/avif)"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (8, b"AVI ", "AVI"),
)
_VIDEO_KINDS = ("ISO-BMFF (mp4/mov/heic/avif)", "Matroska/WebM", "AVI")


def _sniff(head: bytes) -> str | None:
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return kind
    return None


def _is_bytes(src: object) -> bool:
    return isinstance(src, bytes | bytearray | memoryview)


# ----------------------------------------------------------------------------- filters and clips


def check_video_filters(
    info: VideoInfo,
    *,
    min_duration_s: float | None = None,
    max_duration_s: float | None = None,
    min_side: int | None = None,
    max_aspect: float | None = None,
) -> str | None:
    """Skip reason ("too_short", "too_long", "too_small", "bad_aspect") or None to keep the video.

    An unknown duration passes the duration filters: decoding then finds too few frames, or not.
    """
    if info.duration_s is not None:
        if min_duration_s is not None and info.duration_s < min_duration_s:
            return "too_short"
        if max_duration_s is not None and info.duration_s > max_duration_s:
            return "too_long"
    return check_image_filters(info.width, info.height, min_side=min_side, max_aspect=max_aspect)


def check_image_filters(
    width: int, height: int, *, min_side: int | None = None, max_aspect: float | None = None
) -> str | None:
    """Skip reason ("too_small", "bad_aspect") or None. Aspect is long side / short side (>= 1)."""
    short, long = min(width, height), max(width, height)
    if min_side is not None and short < min_side:
        return "too_small"
    if max_aspect is not None and (short <= 0 or long / short > max_aspect):
        return "bad_aspect"
    return None


def clip_starts(
    duration_s: float,
    clip_s: float,
    clips_per_video: int,
    *,
    mode: Literal["consecutive", "spread"] = "consecutive",
) -> list[float]:
    """Start times (seconds) of up to `clips_per_video` non-overlapping clips of `clip_s` seconds.

    "consecutive": 0, clip_s, 2 clip_s, ... from the start. "spread": evenly over the video, first
    clip at 0 and last ending at `duration_s`. Only whole clips count; a video shorter than one clip
    gives [0.0], so the caller decides whether its frames suffice (prepare pads short first clips).
    """
    if clip_s <= 0 or clips_per_video < 1:
        raise ValueError(f"need clip_s > 0 and clips_per_video >= 1, got {clip_s}, {clips_per_video}")
    if mode not in ("consecutive", "spread"):
        raise ValueError(f"mode must be 'consecutive' or 'spread', got {mode!r}")
    fits = math.floor(max(duration_s, 0.0) / clip_s + TIME_EPS)
    n = min(clips_per_video, fits)
    if n <= 1:
        return [0.0]
    if mode == "consecutive":
        return [i * clip_s for i in range(n)]
    # n <= duration / clip_s keeps the step (duration - clip_s) / (n - 1) >= clip_s: no overlap.
    step = (duration_s - clip_s) / (n - 1)
    return [round(i * step, 6) for i in range(n)]


# ----------------------------------------------------------------------------- opening and probing


@contextmanager
def open_video(
    src: bytes | str | os.PathLike, limits: DecodeLimits
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """Open with only `limits.video_formats` demuxers and check the header-level limits.

    Paths are opened by Python and handed to FFmpeg as a file object, so a "path" is never a URL
    ("http:", "concat:", "pipe:") for FFmpeg's protocols.
    """
    with ExitStack() as stack:
        try:
            fp = io.BytesIO(bytes(src)) if _is_bytes(src) else stack.enter_context(open(os.fspath(src), "rb"))
        except OSError as e:
            raise MediaError(f"cannot open video: {e}") from e
        options = {
            # FFmpeg checks this after probing and before the demuxer parses anything.
            "format_whitelist": ",".join(limits.video_formats),
            "protocol_whitelist": "file",  # demuxers that open further files get nothing else
            # Also a codec option: decoders opened while probing stream info refuse bigger frames.
            "max_pixels": str(limits.max_pixels),
        }
        try:
            # timeout: FFmpeg's interrupt callback, the only check while av.open probes streams.
            container = av.open(
                fp,
                mode="r",
                options=options,
                timeout=(limits.max_decode_s,) * 2,
                metadata_errors="replace",  # tags are free text; junk bytes must not fail the video
            )
        except av.error.ArgumentError as e:  # EINVAL: the probed demuxer is not on the whitelist
            fp.seek(0)
            kind = _sniff(fp.read(16))
            if kind not in _VIDEO_KINDS:  # an allowed container kind failing with EINVAL is just broken
                raise MediaLimitError(
                    "unexpected_format",
                    f"probed demuxer not allowed (input looks like {kind or 'an unlisted format'}); "
                    f"allowed demuxers: {limits.video_formats}",
                ) from e
            raise MediaError(f"cannot open video: {e}") from e
        except av.error.ExitError as e:
            raise MediaLimitError("decode_timeout", f"opening took over {limits.max_decode_s}s") from e
        except av.FFmpegError as e:
            raise MediaError(f"cannot open video: {e}") from e
        container = stack.enter_context(container)  # closed before the file object
        name = container.format.name
        if name not in limits.video_formats:  # the whitelist matches aliases; insist on exact names
            raise MediaLimitError("unexpected_format", f"demuxer {name!r} not in {limits.video_formats}")
        if len(container.streams) > limits.max_streams:
            raise MediaLimitError("too_many_streams", f"{len(container.streams)} > {limits.max_streams}")
        if not container.streams.video:
            raise MediaError("no video stream in input")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id this FFmpeg build cannot decode
            raise MediaError("no decoder for the video stream's codec")
        check_pixels(stream.codec_context.width, stream.codec_context.height, limits, "stream header")
        # The decoder enforces it too, for streams whose header understates the size.
        stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        yield container, stream


def check_pixels(width: int, height: int, limits: DecodeLimits, where: str) -> None:
    if width * height > limits.max_pixels:
        raise MediaLimitError("too_many_pixels", f"{where}: {width}x{height} > {limits.max_pixels} pixels")


def stream_rate(stream: av.video.stream.VideoStream) -> float | None:
    return float(stream.average_rate or stream.guessed_rate or 0) or None


def stream_duration(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    last_time: float | None,
    src_rate: float | None,
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    if last_time is not None:
        return last_time + (1.0 / src_rate if src_rate else 0.0)
    return None


def probe_video(src: bytes | str | os.PathLike, limits: DecodeLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Header facts for filters, without decoding frames; applies the format, stream-count and pixel
    limits (raises `MediaLimitError` / `MediaError` exactly as `decode_video` would on opening)."""
    with open_video(src, limits) as (container, stream):
        return video_info(container, stream)


def video_info(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> VideoInfo:
    """The header facts of an opened video (`open_video`); reads no packets."""
    return VideoInfo(
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=stream_rate(stream),
        duration_s=stream_duration(container, stream, None, None),
        num_streams=len(container.streams),
        format_name=container.format.name,
        codec=stream.codec_context.name,
    )


@contextmanager
def open_image(src: bytes | str | os.PathLike, limits: DecodeLimits) -> Iterator[Image.Image]:
    """Pillow image with its header read and checked, pixels not yet decoded."""
    fp = io.BytesIO(bytes(src)) if _is_bytes(src) else os.fspath(src)
    try:
        # formats=: only these plugins parse the bytes (Pillow otherwise tries every one it has).
        im = Image.open(fp, formats=list(limits.image_formats))
    except Image.DecompressionBombError as e:  # Pillow's global limit, if stricter than ours
        raise MediaLimitError("too_many_pixels", str(e)) from e
    except UnidentifiedImageError as e:
        kind = _sniff(_head(fp))
        if kind is not None and kind not in limits.image_formats:
            raise MediaLimitError(
                "unexpected_format", f"input looks like {kind}; allowed: {limits.image_formats}"
            ) from e
        raise MediaError(f"cannot decode image: {e}") from e
    except Exception as e:  # Pillow's parsers raise OSError, SyntaxError, struct.error... on junk
        raise MediaError(f"cannot decode image: {e}") from e
    with im:
        # Our own check, from the header: Pillow's DecompressionBombError only fires at twice its
        # process-wide MAX_IMAGE_PIXELS, which any importer may have changed.
        check_pixels(im.width, im.height, limits, f"{im.format} header")
        yield im


def _head(fp: io.BytesIO | str) -> bytes:
    if isinstance(fp, str):
        with open(fp, "rb") as f:
            return f.read(16)
    fp.seek(0)
    return fp.read(16)


def probe_image(src: bytes | str | os.PathLike, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageInfo:
    """Header facts for filters, without decoding pixels; applies the format and pixel limits."""
    with open_image(src, limits) as im:
        return ImageInfo(width=im.width, height=im.height, format_name=str(im.format), mode=im.mode)
