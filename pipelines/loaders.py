"""Training data readers: clip shards for the tokenizer, token caches for the transformer.

Both datasets are small enough per worker to hold in memory (the demo has 1-2k short clips), so these
readers load once and index into arrays instead of streaming through Ray Data. Everything is a pure
function of (seed, rank, step):

- the split between ranks is `shuffled(seed)[rank::world]`, separately per kind, so every rank sees
  both videos and images and no sample is seen by two ranks;
- each kind is an endless stream made of per-epoch permutations seeded by (seed, rank, kind, epoch);
- a batch at step s takes the next items of the streams, so a resumed run that starts at its saved
  `position` gets exactly the batches the uninterrupted run would have got.

The token-cache reader (`TokenBatches`, `TokenLoaderConfig`, `token_cache_info`, ...) is in
`pipelines.token_batches` and re-exported here.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from modeling.pixels import frames_to_video
from pipelines.shard_scan import ShardScan, scan_dataset
from pipelines.shards import RAW_CLIP_KEY

log = logging.getLogger(__name__)

VIDEO_EXTS = (
    "mp4",
    "webm",
    "mkv",
    "avi",
    "mov",
    RAW_CLIP_KEY,
)  # RAW_CLIP_KEY: unencoded frames (prepare's npy)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SAMPLE_KINDS = ("video", "image")
KIND_ID = {"video": 0, "image": 1}


# --------------------------------------------------------------------------------------------- indexing
def rank_split(n: int, *, seed: int, rank: int, world_size: int) -> np.ndarray:
    """Indices of `range(n)` owned by `rank`: a seeded shuffle, then every world_size-th item."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return order[rank::world_size]


@dataclass
class EpochStream:
    """An endless stream over `n` items: a fresh seeded permutation each epoch, indexable by position."""

    n: int
    seed_parts: tuple[int, ...]
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:  # only the current epoch or two are ever needed
                self._cache.clear()
            self._cache[epoch] = np.random.default_rng([*self.seed_parts, epoch]).permutation(self.n)
        return self._cache[epoch]

    def take(self, start: int, count: int) -> np.ndarray:
        """Items at stream positions [start, start + count); wraps into following epochs."""
        if self.n == 0:
            raise ValueError("cannot draw from an empty stream")
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, offset = divmod(start + i, self.n)
            out[i] = self.permutation(epoch)[offset]
        return out


def read_samples(data_dir: str, *, strict: bool = False) -> ShardScan:
    """Every sample of a shard directory, sorted by key, each shard verified against the manifest's sha256;
    damaged shards are counted skips (`pipelines.shard_scan`), or with `strict` an error naming the shard."""
    scan = scan_dataset(data_dir, strict=strict)
    # sorted by key so the split does not depend on how samples fell into shards
    scan.samples.sort(key=lambda s: s["__key__"])
    if scan.skipped:
        log.warning(
            "%s: skips %s, repaired %s (e.g. %s)",
            data_dir,
            dict(scan.skips),
            dict(scan.repaired),
            scan.skipped[0],
        )
    return scan


def _sample_kind(sample: dict) -> str | None:
    if any(ext in sample for ext in VIDEO_EXTS):
        return "video"
    if any(ext in sample for ext in IMAGE_EXTS):
        return "image"
    return None


# --------------------------------------------------------------------------------------------- clips
@dataclass(frozen=True)
class ClipLoaderConfig:
    video_batch_size: int = 8
    image_batch_size: int = 0
    num_frames: int | None = None  # crop clips to this many frames; None: the clips' own (equal) length
    seed: int = 0
    holdout: int = 0  # videos kept out of training for evaluation (the same on every rank)
    hue_rotation: float = 0.0  # share of clips (and stills) whose hues are rotated (`pipelines.augment`)
    strict: bool = False  # a damaged shard or undecodable clip raises instead of being a counted skip

    def __post_init__(self) -> None:
        if not 0.0 <= self.hue_rotation <= 1.0:
            raise ValueError(f"hue_rotation is a share of clips, in [0, 1]; got {self.hue_rotation}")


def _decode_clip(sample: dict, kind: str, num_frames: int | None) -> np.ndarray | None:
    """(T, H, W, 3) uint8, or None when a video is shorter than `num_frames`."""
    from pipelines.media import (
        decode_image,
        decode_raw_clip,
        decode_video,
    )  # PyAV only where clips are decoded

    if kind == "image":
        ext = next(e for e in IMAGE_EXTS if e in sample)
        return decode_image(sample[ext])[None]
    ext = next(e for e in VIDEO_EXTS if e in sample)
    if ext == RAW_CLIP_KEY:
        frames = decode_raw_clip(sample[ext], num_frames)
    else:
        frames = decode_video(sample[ext], max_frames=num_frames).frames
    if num_frames is not None:
        if frames.shape[0] < num_frames:
            return None
        frames = frames[:num_frames]
    return frames


def _common_fps(videos: list[dict]) -> float | None:
    """The clips' frame rate from their json (prepare resamples all to one); the most common if mixed."""
    rates = Counter(float(json.loads(v["json"]).get("fps") or 0) for v in videos if "json" in v)
    rates.pop(0.0, None)
    return rates.most_common(1)[0][0] if rates else None


def _stack(arrays: list[np.ndarray], what: str, data_dir: str) -> np.ndarray:
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        raise ValueError(
            f"{what} in {data_dir} have different shapes {dict(shapes)}; training needs one size: "
            "re-run `phenaki prepare` with a single resolution, or set tokenizer_train.num_frames"
        )
    return np.stack(arrays)


class ClipBatches:
    """Video and image batches from a clip-shard directory, decoded into memory once per worker.

    `step_batches(step)` returns `[{"video": (Bv,3,T,H,W)}, {"video": (Bi,3,1,H,W)}]` (the image batch
    only when `has_images`); iterating yields these lists from `start` on. `skipped` counts what was left out
    by reason (damaged shards, undecodable or short clips), `repaired` what was kept after a fix, and
    `skip_records` holds the shard faults' records (`pipelines.shard_scan`).
    """

    def __init__(self, data_dir: str, cfg: ClipLoaderConfig, *, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        scan = read_samples(data_dir, strict=cfg.strict)
        samples, self.repaired, self.skip_records = scan.samples, scan.repaired, scan.skipped
        by_kind: dict[str, list[dict]] = {k: [] for k in SAMPLE_KINDS}
        for s in samples:
            kind = _sample_kind(s)
            if kind is not None:
                by_kind[kind].append(s)
        self.skipped: Counter[str] = Counter(scan.skips)

        videos = by_kind["video"]
        self._holdout_samples: list[dict] = []
        if cfg.holdout:
            order = np.random.default_rng([cfg.seed, 0x401D]).permutation(len(videos))
            held = set(order[: cfg.holdout].tolist())
            self._holdout_samples = [videos[i] for i in sorted(held)]
            videos = [v for i, v in enumerate(videos) if i not in held]
        if len(videos) < world_size:
            raise ValueError(
                f"{data_dir} has {len(videos)} training videos (after {cfg.holdout} held out) "
                f"for {world_size} workers: every worker needs at least one"
            )
        # images are used only if every rank gets some: all ranks must run the same forward passes
        images = by_kind["image"] if cfg.image_batch_size > 0 and len(by_kind["image"]) >= world_size else []

        self.fps = _common_fps(videos)
        self.videos = self._decode_split(videos, "video", data_dir)
        self.images = self._decode_split(images, "image", data_dir) if images else None
        if self.images is not None and self.images.shape[2:4] != self.videos.shape[2:4]:
            raise ValueError(
                f"images are {self.images.shape[2:4]} but videos {self.videos.shape[2:4]} in {data_dir}"
            )
        self._data_dir = data_dir
        self._streams = {
            kind: EpochStream(len(arr), (cfg.seed, rank, KIND_ID[kind]))
            for kind, arr in (("video", self.videos), ("image", self.images))
            if arr is not None
        }

    def _decode_split(self, samples: list[dict], kind: str, data_dir: str) -> np.ndarray:
        from pipelines.media_probe import MediaError  # PyAV only where clips are decoded

        mine = rank_split(len(samples), seed=self.cfg.seed, rank=self.rank, world_size=self.world_size)
        frames = []
        for i in mine:
            try:
                clip = _decode_clip(samples[i], kind, self.cfg.num_frames if kind == "video" else None)
            except MediaError as e:
                if self.cfg.strict:
                    raise MediaError(
                        f"sample {samples[i]['__key__']} in {data_dir} is undecodable ({e}); re-make its shard "
                        "or train without strict to skip it"
                    ) from e
                self.skipped["undecodable"] += 1
                continue
            if clip is None:
                self.skipped[f"{kind}_too_short"] += 1
                continue
            frames.append(clip)
        if not frames:
            raise ValueError(
                f"worker {self.rank}: no usable {kind}s in {data_dir} "
                f"(skipped {dict(self.skipped)}; num_frames={self.cfg.num_frames})"
            )
        return _stack(frames, f"{kind}s", data_dir)

    @property
    def has_images(self) -> bool:
        return self.images is not None

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the training videos."""
        t, h, w = self.videos.shape[1:4]
        return int(t), int(h), int(w)

    def step_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        cfg = self.cfg
        idx = self._streams["video"].take(step * cfg.video_batch_size, cfg.video_batch_size)
        out = [{"video": self._augment(frames_to_video(self.videos[idx]), "video", step)}]
        if self.images is not None:
            idx = self._streams["image"].take(step * cfg.image_batch_size, cfg.image_batch_size)
            out.append({"video": self._augment(frames_to_video(self.images[idx]), "image", step)})
        return out

    def _augment(self, clips: torch.Tensor, kind: str, step: int) -> torch.Tensor:
        """Hue rotation drawn from (seed, rank, kind, step): a resumed run sees the same batches."""
        if not self.cfg.hue_rotation:
            return clips
        from pipelines.augment import random_hue_rotation

        draw = np.random.default_rng([self.cfg.seed, self.rank, KIND_ID[kind], step, 0xC010])
        seed = int(draw.integers(2**62))
        return random_hue_rotation(clips, self.cfg.hue_rotation, torch.Generator().manual_seed(seed))

    def iterate(self, start: int = 0) -> Iterator[list[dict[str, torch.Tensor]]]:
        step = start
        while True:
            yield self.step_batches(step)
            step += 1

    def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        return self.iterate(0)

    def holdout_videos(self) -> torch.Tensor | None:
        """The held-out videos (B,3,T,H,W), identical on every rank; None without a holdout."""
        clips = [_decode_clip(s, "video", self.cfg.num_frames) for s in self._holdout_samples]
        clips = [c for c in clips if c is not None]
        if not clips:
            return None
        return frames_to_video(_stack(clips, "held-out videos", self._data_dir))


# --------------------------------------------------------------------------------------------- tokens
# The token-cache reader lives in pipelines.token_batches (which imports the indexing helpers above); its
# names stay importable from here, resolved on first use so that either module may be imported first.
_TOKEN_NAMES = frozenset(
    {
        "MIX_MODES",
        "TokenBatches",
        "TokenCacheInfo",
        "TokenLoaderConfig",
        "check_tokenizer_digest",
        "checkpoint_digest",
        "split_cache_dirs",
        "token_cache_info",
        "tokenizer_digest_of_cache",
    }
)


def __getattr__(name: str):
    if name in _TOKEN_NAMES:
        from pipelines import token_batches

        return getattr(token_batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _TOKEN_NAMES)
