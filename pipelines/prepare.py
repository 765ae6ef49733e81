"""Prepare clip shards: sources -> fetched, decoded, resampled, cropped, re-encoded clips.

Stages (the driver logs each):
  1. read the sources (`pipelines.sources`: WebVid CSV, LAION parquet, img2dataset / video2dataset
     WebDataset output, media folders; local, gs://, http(s)://; globs, brace lists, a weight each) and sort
     records by (key, url) — a fixed order;
  2. plan: shard i gets records [i*S, (i+1)*S), so a shard's content depends only on the sources
     and the config, and every rerun plans the same shards;
  3. skip shards already complete (their tar and progress record exist with the same plan digest);
  4. a Ray Data map stage (tasks, one block per shard, as many at once as the cluster has CPUs unless
     `num_workers` says otherwise) runs `pipelines.clip_samples` per record — guarded fetch, probe,
     filters, decode with seek and fps resampling, resize + centre-crop, re-encode (H.264 mp4 / JPEG) —
     and writes the shard tar atomically;
  5. `manifest.json`, written last, accounting for every input row (samples, skips by reason).

Output layout (`out_dir`):
  shard-000000.tar ...         WebDataset tars, samples as in DESIGN.md (`mp4`|`jpg`, `txt`, `json`; with
                               video_format="npy", videos as `frames.npy` instead of `mp4`)
  _progress/shard-000000.json  per-shard counts, skips and plan digest (what lets a rerun resume)
  manifest.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from modeling.typed_config import build_dataclass
from pipelines.clip_samples import SkipSample, record_samples, skip_record
from pipelines.fetch import FetchPolicy, check_scheme
from pipelines.media import DecodeLimits
from pipelines.sharded_job import ShardPlan, map_shards, run_sharded_job, shard_totals
from pipelines.shards import (
    absolute_uri,
    join_uri,
    progress_uri,
    sanitize_key,
    shard_name,
    write_json,
    write_shard_sha256,
)
from pipelines.sources import (
    SourceRecord,
    SourceSpec,
    listing_policy,
    parse_source_spec,
    read_sources_with_stats,
)

log = logging.getLogger(__name__)

# 2: samples carry source_name/source_weight; clips start where clip_starts() says
# 3: videos resized in the decoder's scaler (swscale area filter), not Pillow's bicubic: other pixels
SCHEMA_VERSION = 3
VIDEO_FORMATS = ("mp4", "npy")  # PrepareConfig.video_format: H.264 mp4, or raw frames (shards.RAW_CLIP_KEY)
SKIP_DUPLICATE = "duplicate"
SKIP_NO_MEDIA = "no_media"  # a WebDataset sample without a media member (counted when listing)


@dataclass
class PrepareConfig:
    size: int = 64  # output height = width (resize short side, centre crop)
    num_frames: int = 9  # frames per clip; 1 + k * t_p for the tokenizer
    fps: float = 8.0  # clips are resampled to this rate by timestamp
    samples_per_shard: int = 64  # source records per shard (a shard holds up to this * clips_per_video)
    clips_per_video: int = 1  # clips cut from each video
    clip_mode: str = "consecutive"  # "consecutive" from the start, or "spread" evenly over the video
    num_workers: int | None = None  # concurrent Ray Data tasks; None = the cluster's CPUs
    strict: bool = False  # raise on the first bad input instead of skipping and counting it
    # accept videos with at least this many frames, padded by holding the last; None = num_frames
    min_frames: int | None = None
    crf: int = 18  # H.264 quality of the re-encoded clips
    # x264 speed vs size at that crf: "superfast" measured ~30% faster than "veryfast" with clips as large
    # (-10% at 128 px, +3% at 32 px) and PSNR within 0.25 dB; "ultrafast" (no CABAC) was ~10% faster at 128 px,
    # slower at 32 px, and made clips 50-75% larger; "medium" makes ~15% smaller, ~4x slower (docs/data.md).
    x264_preset: str = "superfast"
    # how a video clip is stored: "mp4" (H.264, crf and x264_preset below; ~26 KB per 11 x 128^2 clip) or "npy"
    # (the frames unencoded under `frames.npy`: no re-encode and lossless, ~20x larger shards; docs/data.md)
    video_format: str = "mp4"
    jpeg_quality: int = 95
    source_format: str | None = None  # force one format for every source
    # filters (None = off): source duration, shorter side in pixels, long/short side ratio
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    min_side: int | None = None
    max_aspect: float | None = None
    max_caption_chars: int = 2000  # longer captions are skipped (a 1 MB "caption" is not a caption)
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # timeouts, retries, size cap, address blocking
    limits: DecodeLimits = field(
        default_factory=DecodeLimits
    )  # pixels, frames, streams, decode time, demuxers

    def __post_init__(self) -> None:
        if isinstance(self.fetch, dict):  # PrepareConfig(fetch={...}) from code, as YAML would give it
            self.fetch = build_dataclass(FetchPolicy, self.fetch)
        if isinstance(self.limits, dict):
            self.limits = build_dataclass(DecodeLimits, self.limits)
        if self.size <= 0 or self.size % 2:
            raise ValueError(f"size must be positive and even (H.264 yuv420p), got {self.size}")
        if self.num_frames < 1 or self.fps <= 0 or self.samples_per_shard < 1 or self.clips_per_video < 1:
            raise ValueError(f"invalid PrepareConfig: {self}")
        if self.min_frames is not None and not 1 <= self.min_frames <= self.num_frames:
            raise ValueError(
                f"min_frames must be in [1, num_frames={self.num_frames}], got {self.min_frames}"
            )
        if self.video_format not in VIDEO_FORMATS:
            raise ValueError(f"video_format must be one of {VIDEO_FORMATS}, got {self.video_format!r}")
        if self.clip_mode not in ("consecutive", "spread"):
            raise ValueError(f"clip_mode must be 'consecutive' or 'spread', got {self.clip_mode!r}")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1 or None (the cluster's CPUs), got {self.num_workers}")

    @property
    def required_frames(self) -> int:
        return self.num_frames if self.min_frames is None else self.min_frames

    def output_fields(self) -> dict[str, Any]:
        """The fields that change shard bytes (worker count, strictness and fetch policy do not)."""
        d = asdict(self)
        for k in ("num_workers", "strict", "source_format", "fetch"):
            d.pop(k)
        return d


class PrepareError(RuntimeError):
    """A bad input under `strict=True`."""


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
            skipped.append(skip_record(r, s))
            continue
        samples.extend(new)
        counts[r.kind] += len(new)
    sha256 = write_shard_sha256(join_uri(out_dir, shard_name(index)), samples)[1] if samples else None
    state = {
        "index": index,
        "name": shard_name(index),
        "digest": digest,
        "sha256": sha256,
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
    state = process_shard(
        int(row["index"]), records, row["digest"], out_dir, build_dataclass(PrepareConfig, cfg)
    )
    return {"index": state["index"], "state": json.dumps(state)}


# --------------------------------------------------------------------------------------------- driver
# Storage settings of the driver that the tasks need to read and write the same buckets the same way (an
# emulator endpoint, anonymous access, credentials file); workers started before they were set lack them.
STORAGE_ENV_PREFIXES = ("STORAGE_EMULATOR_HOST", "GCSFS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS")


def storage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


def _shard_options(out_dir: str, cfg: PrepareConfig, num_shards: int) -> Callable[[dict], dict[str, Any]]:
    """`Dataset.map` options for `make_shard`: a task pool of up to `num_workers` (default: every CPU)."""

    def options(resources: dict) -> dict[str, Any]:
        import ray.data

        workers = cfg.num_workers or max(1, int(resources.get("CPU", 1)))
        return {
            "fn_kwargs": {"out_dir": out_dir, "cfg": asdict(cfg)},
            "compute": ray.data.TaskPoolStrategy(size=max(1, min(workers, num_shards))),
            "num_cpus": 1,
            "runtime_env": {"env_vars": storage_env()},
        }

    return options


def build_manifest(
    sources: list[dict],
    cfg: PrepareConfig,
    plan_digest: str,
    states: list[dict],
    num_records: int,
    duplicates: int,
) -> dict:
    """`sources` are the per-source listing stats; the manifest accounts for every input row:
    num_records + duplicates + no_media == rows listed, and num_records == samples' records + skips."""
    skips: Counter[str] = Counter({SKIP_DUPLICATE: duplicates} if duplicates else {})
    no_media = sum(int(s.get("dropped_no_media", 0)) for s in sources)
    if no_media:
        skips[SKIP_NO_MEDIA] += no_media
    totals = shard_totals(states, skips)
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "clips",
        "producer": "pipelines.prepare",
        "config": json.loads(json.dumps(asdict(cfg))),  # as it reads back (tuples become lists)
        "sources": list(sources),
        "plan_digest": plan_digest,
        "num_records": num_records,
        "num_samples": totals["num_samples"],
        "counts": totals["counts"],
        "skips": totals["skips"],
        "skipped_examples": totals["skipped_examples"],
        "shards": totals["shards"],
        "shard_counts": totals["shard_counts"],
        "shard_sha256": totals["shard_sha256"],
    }


def _absolute_source(spec: str | SourceSpec) -> SourceSpec:
    """Absolute listing path (format, weight and name kept), so relative media URLs resolve the same in workers."""
    spec = parse_source_spec(spec) if isinstance(spec, str) else spec
    return dataclasses.replace(spec, uri=absolute_uri(spec.uri))


def prepare(sources: list[str | SourceSpec], out_dir: str, cfg: PrepareConfig | None = None) -> dict:
    """Build (or resume) a clip-shard dataset in `out_dir` from sources ("[fmt:]URI[::weight=W][::name=N]"
    strings or SourceSpecs: listings, WebDataset folders, media folders; globs and brace lists allowed).
    Returns the manifest."""
    cfg = cfg or PrepareConfig()
    sources = [_absolute_source(s) for s in sources]
    for spec in sources:  # before any listing or glob: a source URI's scheme must be allowed too
        check_scheme(spec.uri, cfg.fetch)
    # One policy for the driver's listing reads and the workers' fetches; local media may come from the
    # sources' own folders and the folders the user named (the manifest's config records them all).
    cfg = dataclasses.replace(cfg, fetch=listing_policy(cfg.fetch, list(sources)))
    out_dir = absolute_uri(out_dir)
    raw, source_stats = read_sources_with_stats(sources, cfg.source_format, cfg.fetch)
    records, duplicates = dedupe_records(raw)
    log.info(
        "prepare: read %d records from %d source(s) (%d duplicates dropped)",
        len(raw),
        len(sources),
        duplicates,
    )

    shards = plan_shards(records, cfg.samples_per_shard)
    digests = {i: shard_digest(recs, cfg) for i, recs in enumerate(shards)}
    plan = ShardPlan(
        "prepare", out_dir, digests, hashlib.sha256("".join(digests.values()).encode()).hexdigest()
    )
    return run_sharded_job(
        plan,
        lambda i, digest: {
            "index": i,
            "digest": digest,
            "records": json.dumps([asdict(r) for r in shards[i]]),
        },
        lambda rows: map_shards(rows, make_shard, _shard_options(out_dir, cfg, len(rows))),
        lambda states: build_manifest(source_stats, cfg, plan.plan_digest, states, len(records), duplicates),
    )
