"""Prepare clip shards: source listings -> fetched, decoded, resampled, cropped, re-encoded clips.

Stages (the driver logs each):
  1. read listings (`pipelines.sources`) and sort records by (key, url) — a fixed order;
  2. plan: shard i gets records [i*S, (i+1)*S), so a shard's content depends only on the listings
     and the config, and every rerun plans the same shards;
  3. skip shards already complete (their tar and progress record exist with the same plan digest);
  4. a Ray Data map stage (actor pool, one block per shard) fetches via fsspec, decodes with PyAV /
     Pillow, resamples to `fps`, keeps `num_frames` frames from the start, resizes + centre-crops to
     `size`, re-encodes (H.264 mp4 / JPEG) and writes the shard tar atomically;
  5. `manifest.json`, written last.

Output layout (`out_dir`):
  shard-000000.tar ...         WebDataset tars, samples as in DESIGN.md (`mp4`|`jpg`, `txt`, `json`)
  _progress/shard-000000.json  per-shard counts, skips and plan digest (what lets a rerun resume)
  manifest.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np

from pipelines.media import decode_image, decode_video, encode_jpeg, encode_mp4, resize_center_crop
from pipelines.ray_utils import iter_rows_released
from pipelines.shards import (
    absolute_uri,
    check_no_foreign_shards,
    completed_shard,
    exists,
    join_uri,
    progress_uri,
    read_manifest,
    remove_temp_files,
    sanitize_key,
    shard_name,
    write_json,
    write_manifest,
    write_shard,
)
from pipelines.sources import SourceRecord, read_sources, split_format_prefix

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Skip reasons (manifest `skips` keys).
SKIP_EMPTY_CAPTION = "empty_caption"
SKIP_MISSING = "missing"
SKIP_FETCH_ERROR = "fetch_error"
SKIP_UNDECODABLE = "undecodable"
SKIP_TOO_FEW_FRAMES = "too_few_frames"
SKIP_DUPLICATE = "duplicate"
_MAX_SKIP_EXAMPLES = 20


@dataclass
class PrepareConfig:
    size: int = 64  # output height = width (resize short side, centre crop)
    num_frames: int = 9  # frames per clip; 1 + k * t_p for the tokenizer
    fps: float = 8.0  # clips are resampled to this rate by timestamp
    samples_per_shard: int = 64  # source records per shard (a shard holds up to this * clips_per_video)
    clips_per_video: int = 1  # consecutive clips cut from each video, from its start
    num_workers: int = 2  # concurrent Ray Data tasks in the map stage
    strict: bool = False  # raise on the first bad input instead of skipping and counting it
    # accept videos with at least this many frames, padded by holding the last; None = num_frames
    min_frames: int | None = None
    crf: int = 18  # H.264 quality of the re-encoded clips
    jpeg_quality: int = 95
    source_format: str | None = None  # force "webvid" | "laion" for every listing

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 2:
            raise ValueError(f"size must be positive and even (H.264 yuv420p), got {self.size}")
        if self.num_frames < 1 or self.fps <= 0 or self.samples_per_shard < 1 or self.clips_per_video < 1:
            raise ValueError(f"invalid PrepareConfig: {self}")
        if self.min_frames is not None and not 1 <= self.min_frames <= self.num_frames:
            raise ValueError(
                f"min_frames must be in [1, num_frames={self.num_frames}], got {self.min_frames}"
            )

    @property
    def required_frames(self) -> int:
        return self.num_frames if self.min_frames is None else self.min_frames

    def output_fields(self) -> dict[str, Any]:
        """The fields that change shard bytes (worker count and strictness do not)."""
        d = asdict(self)
        for k in ("num_workers", "strict", "source_format"):
            d.pop(k)
        return d


class PrepareError(RuntimeError):
    """A bad input under `strict=True`."""


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------- planning
def dedupe_records(records: list[SourceRecord]) -> tuple[list[SourceRecord], int]:
    """Sort by (key, url, caption); drop exact (key, url) repeats; give colliding keys a URL-hash suffix.

    Returns (records, number of duplicates dropped).
    """
    out: list[SourceRecord] = []
    seen_urls: dict[str, set[str]] = {}
    used: set[str] = set()
    dropped = 0
    for r in sorted(records, key=lambda r: (r.key, r.url, r.caption)):
        urls = seen_urls.setdefault(r.key, set())
        if r.url in urls:
            dropped += 1
            continue
        urls.add(r.url)
        if r.key in used:
            r = dataclasses.replace(
                r, key=sanitize_key(f"{r.key}-{hashlib.sha1(r.url.encode()).hexdigest()[:8]}")
            )
        used.add(r.key)
        out.append(r)
    return out, dropped


def plan_shards(records: list[SourceRecord], per_shard: int) -> list[list[SourceRecord]]:
    """Shard i gets records [i*S, (i+1)*S)."""
    return [records[i : i + per_shard] for i in range(0, len(records), per_shard)]


def shard_digest(records: list[SourceRecord], cfg: PrepareConfig) -> str:
    payload = {"cfg": cfg.output_fields(), "records": [asdict(r) for r in records], "v": SCHEMA_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------- samples
def fetch_bytes(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise SkipSample(SKIP_MISSING, f"{url} not found") from e
    except Exception as e:  # network, permissions, bad scheme: all "could not fetch"
        raise SkipSample(SKIP_FETCH_ERROR, f"{url}: {type(e).__name__}: {e}") from e


def cut_clips(frames: np.ndarray, cfg: PrepareConfig) -> list[np.ndarray]:
    """(T, H, W, 3) -> clips of (num_frames, H, W, 3). The first clip may be short (>= required_frames)
    and is padded by holding its last frame; later clips must be full."""
    n = cfg.num_frames
    if frames.shape[0] < cfg.required_frames:
        raise SkipSample(
            SKIP_TOO_FEW_FRAMES, f"{frames.shape[0]} frames at {cfg.fps} fps, need {cfg.required_frames}"
        )
    if frames.shape[0] < n:
        pad = np.repeat(frames[-1:], n - frames.shape[0], axis=0)
        return [np.concatenate([frames, pad])]
    return [frames[i : i + n] for i in range(0, frames.shape[0] - n + 1, n)][: cfg.clips_per_video]


def sample_json(r: SourceRecord, cfg: PrepareConfig, num_frames: int, fps: float, clip: int) -> dict:
    return {
        "kind": r.kind,
        "source": r.source,
        "source_key": r.source_key,
        "fps": fps,
        "num_frames": num_frames,
        "height": cfg.size,
        "width": cfg.size,
        "clip_index": clip,
        "start_sec": clip * cfg.num_frames / cfg.fps if r.kind == "video" else 0.0,
        "meta": r.meta,
    }


def video_samples(r: SourceRecord, data: bytes, cfg: PrepareConfig) -> list[dict]:
    try:
        decoded = decode_video(data, fps=cfg.fps, max_frames=cfg.num_frames * cfg.clips_per_video)
        clips = [resize_center_crop(c, cfg.size) for c in cut_clips(decoded.frames, cfg)]
        encoded = [encode_mp4(c, cfg.fps, cfg.crf) for c in clips]
    except SkipSample:
        raise
    except Exception as e:  # MediaError and whatever a corrupt stream makes FFmpeg raise
        raise SkipSample(SKIP_UNDECODABLE, f"{r.url}: {type(e).__name__}: {e}") from e
    out = []
    for j, mp4 in enumerate(encoded):
        key = r.key if cfg.clips_per_video == 1 else f"{r.key}-c{j:03d}"
        out.append(
            {
                "__key__": key,
                "mp4": mp4,
                "txt": r.caption,
                "json": sample_json(r, cfg, cfg.num_frames, cfg.fps, j),
            }
        )
    return out


def image_sample(r: SourceRecord, data: bytes, cfg: PrepareConfig) -> dict:
    try:
        jpg = encode_jpeg(resize_center_crop(decode_image(data), cfg.size), cfg.jpeg_quality)
    except Exception as e:
        raise SkipSample(SKIP_UNDECODABLE, f"{r.url}: {type(e).__name__}: {e}") from e
    return {"__key__": r.key, "jpg": jpg, "txt": r.caption, "json": sample_json(r, cfg, 1, 0.0, 0)}


def record_samples(r: SourceRecord, cfg: PrepareConfig) -> list[dict]:
    """One source record -> its clip samples; raises SkipSample with a reason for bad inputs."""
    if not r.caption:
        raise SkipSample(SKIP_EMPTY_CAPTION, f"{r.url} has an empty caption")
    data = fetch_bytes(r.url)
    return video_samples(r, data, cfg) if r.kind == "video" else [image_sample(r, data, cfg)]


def process_shard(
    index: int, records: list[SourceRecord], digest: str, out_dir: str, cfg: PrepareConfig
) -> dict:
    """Make one shard (tar first, then its progress record) and return that progress record."""
    samples: list[dict] = []
    counts: Counter[str] = Counter()
    skips: Counter[str] = Counter()
    skipped: list[dict] = []
    for r in records:
        try:
            new = record_samples(r, cfg)
        except SkipSample as s:
            if cfg.strict:
                raise PrepareError(
                    f"bad input {r.url!r} (key {r.key}, {r.source} {r.source_key}) -> {s.reason}: {s.detail}. "
                    "Fix or remove this row in the source listing, or rerun without strict to skip and count it."
                ) from s
            skips[s.reason] += 1
            skipped.append({"key": r.key, "url": r.url, "reason": s.reason, "detail": s.detail[:300]})
            continue
        samples.extend(new)
        counts[r.kind] += len(new)
    if samples:
        write_shard(join_uri(out_dir, shard_name(index)), samples)
    state = {
        "index": index,
        "name": shard_name(index),
        "digest": digest,
        "num_samples": len(samples),
        "counts": dict(counts),
        "skips": dict(skips),
        "skipped": skipped,
    }
    write_json(progress_uri(out_dir, index), state)
    return state


def make_shard(row: dict[str, Any], *, out_dir: str, cfg: dict) -> dict[str, Any]:
    """Ray Data task: one input row = one shard plan (records as JSON) -> one row of stats.

    A task, not an actor: the work holds no state worth keeping (no model), and a task returns its CPU the
    moment it ends, whereas a pool actor can outlive an aborted stream and starve the next Ray Train job.
    """
    records = [SourceRecord(**r) for r in json.loads(row["records"])]
    state = process_shard(int(row["index"]), records, row["digest"], out_dir, PrepareConfig(**cfg))
    return {"index": state["index"], "state": json.dumps(state)}


# --------------------------------------------------------------------------------------------- driver
def _run_shards(pending: list[dict], out_dir: str, cfg: PrepareConfig) -> Iterator[dict]:
    if not pending:
        return
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)  # joins RAY_ADDRESS when set, else starts a local instance
    # One block per shard, so shards spread over up to `num_workers` concurrent tasks.
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    ds = ds.map(
        make_shard,
        fn_kwargs={"out_dir": out_dir, "cfg": asdict(cfg)},
        compute=ray.data.TaskPoolStrategy(size=max(1, min(cfg.num_workers, len(pending)))),
        num_cpus=1,
    )
    for row in iter_rows_released(ds):
        yield json.loads(row["state"])


def build_manifest(
    sources: list[str],
    cfg: PrepareConfig,
    plan_digest: str,
    states: list[dict],
    num_records: int,
    duplicates: int,
) -> dict:
    counts: Counter[str] = Counter()
    skips: Counter[str] = Counter({SKIP_DUPLICATE: duplicates} if duplicates else {})
    examples: list[dict] = []
    for s in states:
        counts.update(s["counts"])
        skips.update(s["skips"])
        examples.extend(s["skipped"][: _MAX_SKIP_EXAMPLES - len(examples)])
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "clips",
        "producer": "pipelines.prepare",
        "config": asdict(cfg),
        "sources": list(sources),
        "plan_digest": plan_digest,
        "num_records": num_records,
        "num_samples": sum(counts.values()),
        "counts": {"video": counts.get("video", 0), "image": counts.get("image", 0)},
        "skips": dict(sorted(skips.items())),
        "skipped_examples": examples,
        "shards": [s["name"] for s in states if s["num_samples"] > 0],
        "shard_counts": {
            s["name"]: {"num_samples": s["num_samples"], **s["counts"]}
            for s in states
            if s["num_samples"] > 0
        },
    }


def _absolute_source(uri: str) -> str:
    """Absolute listing path (keeping a "<fmt>:" prefix), so relative media URLs resolve the same in workers."""
    fmt, rest = split_format_prefix(uri)
    return f"{fmt}:{absolute_uri(rest)}" if fmt else absolute_uri(rest)


def prepare(sources: list[str], out_dir: str, cfg: PrepareConfig | None = None) -> dict:
    """Build (or resume) a clip-shard dataset in `out_dir` from source listings. Returns the manifest."""
    cfg = cfg or PrepareConfig()
    sources = [_absolute_source(s) for s in sources]
    out_dir = absolute_uri(out_dir)
    raw = read_sources(sources, cfg.source_format)
    records, duplicates = dedupe_records(raw)
    log.info(
        "prepare: read %d records from %d source(s) (%d duplicates dropped)",
        len(raw),
        len(sources),
        duplicates,
    )

    shards = plan_shards(records, cfg.samples_per_shard)
    digests = [shard_digest(recs, cfg) for recs in shards]
    plan_digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    check_no_foreign_shards(out_dir, set(range(len(shards))))
    states: dict[int, dict] = {}
    for i, d in enumerate(digests):
        st = completed_shard(out_dir, i, d)
        if st is not None:
            states[i] = st
    pending = [
        {"index": i, "digest": digests[i], "records": json.dumps([asdict(r) for r in shards[i]])}
        for i in range(len(shards))
        if i not in states
    ]
    log.info("prepare: %d shard(s) planned, %d complete, %d to make", len(shards), len(states), len(pending))

    manifest_uri = join_uri(out_dir, "manifest.json")
    if not pending and exists(manifest_uri):
        old = read_manifest(out_dir)
        if old.get("plan_digest") == plan_digest:
            log.info("prepare: %s is complete; nothing to do", out_dir)
            return old

    if pending:
        log.info("prepare: removed %d temp file(s) left by an interrupted run", remove_temp_files(out_dir))
    with contextlib.closing(_run_shards(pending, out_dir, cfg)) as finished:
        for n, st in enumerate(finished, start=1):
            states[st["index"]] = st
            log.info(
                "prepare: shard %s done (%d samples, skips %s) [%d/%d]",
                st["name"],
                st["num_samples"],
                st["skips"],
                n,
                len(pending),
            )

    manifest = build_manifest(
        sources, cfg, plan_digest, [states[i] for i in sorted(states)], len(records), duplicates
    )
    write_manifest(out_dir, manifest)
    log.info(
        "prepare: wrote %s: %s samples %s, skips %s",
        manifest_uri,
        manifest["num_samples"],
        manifest["counts"],
        manifest["skips"],
    )
    return manifest
