"""One source record -> its clip samples, or a `SkipSample` naming why not (used by `pipelines.prepare`).

Per record: check the caption (empty, not UTF-8, absurdly long), fetch the bytes with the guarded fetcher
(`pipelines.fetch`: scheme allowlist, private-address blocking, timeouts, retries, size cap) or, for a
WebDataset source, read the one tar member (`pipelines.wds_source`), probe the header against the decode limits
(pixels, streams, demuxer) and the filters (duration, resolution, aspect), then decode each clip with a seek
to its start, resample to `fps`, resize + centre-crop (in the decoder's scaler for videos) and re-encode
(H.264 mp4 / JPEG).

Every failure is a `SkipSample(reason, detail)`; the reasons are the keys of the manifest's `skips`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.fetch import FetchError, fetch_bytes
from pipelines.media import (
    MediaError,
    VideoInfo,
    check_image_filters,
    check_video_filters,
    clip_starts,
    decode_image,
    decode_video_clips,
    encode_jpeg,
    encode_mp4,
    probe_image,
    resize_center_crop,
)
from pipelines.shards import RAW_CLIP_KEY
from pipelines.sources import SourceRecord
from pipelines.wds_source import is_tar_member_url, read_tar_member

if TYPE_CHECKING:
    from pipelines.prepare import PrepareConfig

# Skip reasons (manifest `skips` keys) decided here; fetch and media errors carry their own `.reason`
# (missing, fetch_error, timeout, too_large, blocked; undecodable, too_many_pixels, too_many_frames,
# too_many_streams, decode_timeout, unexpected_format; too_short, too_long, too_small, bad_aspect).
SKIP_EMPTY_CAPTION = "empty_caption"
SKIP_CAPTION_NOT_UTF8 = "caption_not_utf8"
SKIP_CAPTION_TOO_LONG = "caption_too_long"
SKIP_MISSING = "missing"
SKIP_FETCH_ERROR = "fetch_error"
SKIP_UNDECODABLE = "undecodable"
SKIP_TOO_FEW_FRAMES = "too_few_frames"


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def check_caption(caption: str, max_chars: int) -> None:
    """Captions arrive decoded with errors="replace", so U+FFFD marks bytes that were not UTF-8."""
    if not caption.strip():
        raise SkipSample(SKIP_EMPTY_CAPTION, "empty caption")
    if "\ufffd" in caption:
        raise SkipSample(SKIP_CAPTION_NOT_UTF8, f"caption is not valid UTF-8: {caption[:80]!r}")
    if len(caption) > max_chars:
        raise SkipSample(
            SKIP_CAPTION_TOO_LONG, f"{len(caption)} characters > prepare.max_caption_chars={max_chars}"
        )


def fetch_record_bytes(r: SourceRecord, cfg: PrepareConfig) -> bytes:
    try:
        if is_tar_member_url(r.url):
            return read_tar_member(r.url, cfg.fetch)
        return fetch_bytes(r.url, cfg.fetch)
    except FetchError as e:  # its reason: blocked, missing, timeout, too_large, fetch_error
        raise SkipSample(e.reason, str(e)) from e
    except FileNotFoundError as e:  # a tar member that is not in its tar
        raise SkipSample(SKIP_MISSING, f"{r.url} not found") from e
    except Exception as e:  # a truncated or corrupt tar
        raise SkipSample(SKIP_FETCH_ERROR, f"{r.url}: {type(e).__name__}: {e}") from e


def cut_clips(frames: np.ndarray, cfg: PrepareConfig) -> np.ndarray:
    """(T, H, W, 3) decoded from a clip start -> (num_frames, H, W, 3). A clip of at least `required_frames`
    is padded by holding its last frame; shorter is a skip."""
    n = cfg.num_frames
    if frames.shape[0] < cfg.required_frames:
        raise SkipSample(
            SKIP_TOO_FEW_FRAMES, f"{frames.shape[0]} frames at {cfg.fps} fps, need {cfg.required_frames}"
        )
    if frames.shape[0] < n:
        frames = np.concatenate([frames, np.repeat(frames[-1:], n - frames.shape[0], axis=0)])
    return frames[:n]


def sample_json(
    r: SourceRecord, cfg: PrepareConfig, num_frames: int, fps: float, clip: int, start_s: float
) -> dict:
    return {
        "kind": r.kind,
        "source": r.source,
        "source_key": r.source_key,
        "source_name": r.source_name,
        "source_weight": r.source_weight,
        "fps": fps,
        "num_frames": num_frames,
        "height": cfg.size,
        "width": cfg.size,
        "clip_index": clip,
        "start_sec": start_s,
        "meta": r.meta,
    }


def clip_plan(r: SourceRecord, cfg: PrepareConfig) -> Callable[[VideoInfo], list[float]]:
    """A video's header -> its clip starts (seconds), or a SkipSample when a filter refuses it."""

    def plan(info: VideoInfo) -> list[float]:
        if reason := check_video_filters(
            info,
            min_duration_s=cfg.min_duration_s,
            max_duration_s=cfg.max_duration_s,
            min_side=cfg.min_side,
            max_aspect=cfg.max_aspect,
        ):
            raise SkipSample(reason, f"{r.url}: {info.width}x{info.height}, {info.duration_s} s")
        return clip_starts(
            info.duration_s or 0.0, cfg.num_frames / cfg.fps, cfg.clips_per_video, mode=cfg.clip_mode
        )

    return plan


def video_samples(r: SourceRecord, data: bytes, cfg: PrepareConfig) -> list[dict]:
    try:
        # one open for the header and the first clip; frames come out size x size from the decoder's scaler
        _, decoded = decode_video_clips(
            data, clip_plan(r, cfg), fps=cfg.fps, max_frames=cfg.num_frames, size=cfg.size, limits=cfg.limits
        )
        clips = [(start, cut_clips(d.frames, cfg)) for start, d in decoded]
        if cfg.video_format == "npy":  # stored as decoded: no re-encode (shards.write_shard makes the .npy)
            encoded = [(start, (RAW_CLIP_KEY, frames)) for start, frames in clips]
        else:
            encoded = [
                (start, ("mp4", encode_mp4(frames, cfg.fps, cfg.crf, cfg.x264_preset)))
                for start, frames in clips
            ]
    except MediaError as e:  # its reason: undecodable, or which decode limit was hit
        raise SkipSample(e.reason, f"{r.url}: {e}") from e
    multi = cfg.clips_per_video > 1
    return [
        {
            "__key__": f"{r.key}-c{j:03d}" if multi else r.key,
            media[0]: media[1],
            "txt": r.caption,
            "json": sample_json(r, cfg, cfg.num_frames, cfg.fps, j, round(start, 6)),
        }
        for j, (start, media) in enumerate(encoded)
    ]


def image_sample(r: SourceRecord, data: bytes, cfg: PrepareConfig) -> dict:
    try:
        info = probe_image(data, cfg.limits)
        if reason := check_image_filters(
            info.width, info.height, min_side=cfg.min_side, max_aspect=cfg.max_aspect
        ):
            raise SkipSample(reason, f"{r.url}: {info.width}x{info.height}")
        jpg = encode_jpeg(resize_center_crop(decode_image(data, cfg.limits), cfg.size), cfg.jpeg_quality)
    except MediaError as e:
        raise SkipSample(e.reason, f"{r.url}: {e}") from e
    return {"__key__": r.key, "jpg": jpg, "txt": r.caption, "json": sample_json(r, cfg, 1, 0.0, 0, 0.0)}


def record_samples(r: SourceRecord, cfg: PrepareConfig) -> list[dict]:
    """One source record -> its clip samples; raises SkipSample with a reason for bad inputs."""
    check_caption(r.caption, cfg.max_caption_chars)
    data = fetch_record_bytes(r, cfg)
    return video_samples(r, data, cfg) if r.kind == "video" else [image_sample(r, data, cfg)]


def skip_record(r: SourceRecord, s: SkipSample) -> dict[str, Any]:
    return {"key": r.key, "url": r.url, "source": r.source_name, "reason": s.reason, "detail": s.detail[:300]}
