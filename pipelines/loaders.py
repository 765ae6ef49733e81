"""Training data readers: clip shards for the tokenizer, a token cache for the transformer.

Both datasets are small enough per worker to hold in memory (the demo has 1-2k short clips), so these
readers load once and index into arrays instead of streaming through Ray Data. Everything is a pure
function of (seed, rank, step):

- the split between ranks is `shuffled(seed)[rank::world]`, separately per kind, so every rank sees
  both videos and images and no sample is seen by two ranks;
- each kind is an endless stream made of per-epoch permutations seeded by (seed, rank, kind, epoch);
- a batch at step s takes the next items of the streams, so a resumed run that starts at its saved
  `position` gets exactly the batches the uninterrupted run would have got.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pipelines.shards import join_uri, list_shards, load_npy, read_bytes, read_manifest, read_shard

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_KINDS = ("video", "image")
_KIND_ID = {"video": 0, "image": 1}


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


def _to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3)
    return x.float().div_(127.5).sub_(1.0)


def _read_samples(data_dir: str) -> list[dict]:
    shards = list_shards(data_dir)
    if not shards:
        raise FileNotFoundError(f"no shard-*.tar files in {data_dir}")
    samples = [s for uri in shards for s in read_shard(uri)]
    # sorted by key so the split does not depend on how samples fell into shards
    return sorted(samples, key=lambda s: s["__key__"])


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


def _decode_clip(sample: dict, kind: str, num_frames: int | None) -> np.ndarray | None:
    """(T, H, W, 3) uint8, or None when a video is shorter than `num_frames`."""
    from pipelines.media import decode_image, decode_video  # PyAV only where clips are decoded

    if kind == "image":
        ext = next(e for e in IMAGE_EXTS if e in sample)
        return decode_image(sample[ext])[None]
    ext = next(e for e in VIDEO_EXTS if e in sample)
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
    only when `has_images`); iterating yields these lists from `start` on.
    """

    def __init__(self, data_dir: str, cfg: ClipLoaderConfig, *, rank: int = 0, world_size: int = 1):
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        samples = _read_samples(data_dir)
        by_kind: dict[str, list[dict]] = {k: [] for k in _KINDS}
        for s in samples:
            kind = _sample_kind(s)
            if kind is not None:
                by_kind[kind].append(s)
        self.skipped: Counter[str] = Counter()

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
            kind: EpochStream(len(arr), (cfg.seed, rank, _KIND_ID[kind]))
            for kind, arr in (("video", self.videos), ("image", self.images))
            if arr is not None
        }

    def _decode_split(self, samples: list[dict], kind: str, data_dir: str) -> np.ndarray:
        mine = rank_split(len(samples), seed=self.cfg.seed, rank=self.rank, world_size=self.world_size)
        frames = []
        for i in mine:
            clip = _decode_clip(samples[i], kind, self.cfg.num_frames if kind == "video" else None)
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
        out = [{"video": _to_video_tensor(self.videos[idx])}]
        if self.images is not None:
            idx = self._streams["image"].take(step * cfg.image_batch_size, cfg.image_batch_size)
            out.append({"video": _to_video_tensor(self.images[idx])})
        return out

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
        return _to_video_tensor(_stack(clips, "held-out videos", self._data_dir))


# --------------------------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenLoaderConfig:
    batch_size: int = 8
    video_fraction: float = 0.8  # paper: 80% videos, 20% images
    seed: int = 0


def tokenizer_digest_of_cache(manifest: dict, first_json: dict | None) -> str | None:
    """The tokenizer digest a token cache was made with (manifest first, else its first sample)."""
    nested = manifest.get("tokenizer")
    for value in (
        manifest.get("tokenizer_digest"),
        nested.get("digest") if isinstance(nested, dict) else None,
        (first_json or {}).get("tokenizer_digest"),
    ):
        if value:
            return str(value)
    return None


def checkpoint_digest(checkpoint_dir: str) -> str:
    """`<ckpt>/digest.txt` (modeling.checkpoint writes it), read without loading the model."""
    return read_bytes(join_uri(checkpoint_dir, "digest.txt")).decode("utf-8").strip()


def check_tokenizer_digest(cache_dir: str, cache_digest: str | None, tokenizer_dir: str) -> None:
    want = checkpoint_digest(tokenizer_dir)
    if cache_digest is None:
        raise ValueError(
            f"token cache {cache_dir} does not record its tokenizer digest, so it cannot be checked "
            f"against tokenizer {tokenizer_dir} ({want}); re-run `phenaki tokenize` with that tokenizer"
        )
    if cache_digest != want:
        raise ValueError(
            f"token cache {cache_dir} was made with tokenizer digest {cache_digest}, but the tokenizer "
            f"checkpoint {tokenizer_dir} has digest {want}: the codes would mean nothing to it. "
            f"Re-run `phenaki tokenize` with --tokenizer {tokenizer_dir} (or pass the tokenizer it was made with)"
        )


@dataclass(frozen=True)
class TokenCacheInfo:
    """What a trainer needs to size its model, read without loading the whole cache."""

    seq_len: int  # tokens of one video: (t_z + 1) * h_z * w_z
    frame_tokens: int  # h_z * w_z
    token_grid: tuple[int, int, int]
    text_dim: int
    tokenizer_digest: str | None
    text_encoder: str | None
    max_text_length: int | None  # the text encoder's truncation when the cache was built


def _text_encoder_name(manifest: dict, sample_json: dict) -> str | None:
    for value in (manifest.get("text_encoder"), sample_json.get("text_encoder")):
        if isinstance(value, dict):
            value = value.get("name")
        if value:
            return str(value)
    return None


def token_cache_info(cache_dir: str) -> TokenCacheInfo:
    """Scan shards only until a video sample is found (the first shard, in practice)."""
    manifest = read_manifest(cache_dir)
    first_json: dict | None = None
    image: TokenCacheInfo | None = None
    for uri in list_shards(cache_dir):
        for s in read_shard(uri):
            meta = json.loads(s["json"]) if "json" in s else {}
            first_json = first_json if first_json is not None else meta
            if "text.npy" not in s:
                raise ValueError(
                    f"sample {s['__key__']} in {cache_dir} has no text.npy: re-run `phenaki tokenize`"
                )
            tokens = load_npy(s["tokens.npy"])
            info = TokenCacheInfo(
                seq_len=int(tokens.size),
                frame_tokens=int(np.prod(tokens.shape[1:])),
                token_grid=(int(tokens.shape[0]), int(tokens.shape[1]), int(tokens.shape[2])),
                text_dim=int(load_npy(s["text.npy"]).shape[-1]),
                tokenizer_digest=tokenizer_digest_of_cache(manifest, first_json),
                text_encoder=_text_encoder_name(manifest, first_json),
                max_text_length=(manifest.get("config") or {}).get("max_text_length"),
            )
            if tokens.shape[0] > 1:
                return info
            image = image or info
    if image is None:
        raise FileNotFoundError(f"no samples in token cache {cache_dir}")
    return image  # an image-only cache: one latent frame


class TokenBatches:
    """Mixed image/video batches from a token cache.

    A batch of B holds `floor(B*f)` videos plus one more with probability `frac(B*f)` (stochastic
    rounding keeps the mix exact in expectation), the rest images. Batches are dicts:
    `tokens (B,N) long` (images padded with -1 past their h_z*w_z tokens), `num_scored (B,) long`,
    `text (B,L,D) float32` (zero padded), `text_mask (B,L) bool`, `is_image (B,) bool`.
    `position` counts batches drawn; `skip(n)` / `state()` / `load_state()` resume a run.
    """

    def __init__(
        self,
        cache_dir: str,
        cfg: TokenLoaderConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        tokenizer_dir: str | None = None,
        seq_len: int | None = None,
    ):
        if not 0.0 <= cfg.video_fraction <= 1.0:
            raise ValueError(f"video_fraction must be in [0, 1], got {cfg.video_fraction}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.manifest = read_manifest(cache_dir)
        samples = _read_samples(cache_dir)
        first_json = json.loads(samples[0]["json"]) if samples and "json" in samples[0] else None
        self.tokenizer_digest = tokenizer_digest_of_cache(self.manifest, first_json)
        if tokenizer_dir is not None:
            check_tokenizer_digest(cache_dir, self.tokenizer_digest, tokenizer_dir)

        missing = [s["__key__"] for s in samples if "text.npy" not in s]
        if missing:
            raise ValueError(
                f"{len(missing)} samples in {cache_dir} (e.g. {missing[0]}) have no text.npy embeddings; "
                "re-run `phenaki tokenize` with text embeddings enabled"
            )
        tokens = [load_npy(s["tokens.npy"]) for s in samples]
        is_image = np.array([t.shape[0] == 1 for t in tokens])
        grids = Counter(t.shape[1:] for t in tokens)
        if len(grids) != 1:
            raise ValueError(f"token grids differ in {cache_dir}: {dict(grids)}")
        self.frame_tokens = int(np.prod(next(iter(grids))))  # h_z * w_z
        video_lens = {t.size for t, img in zip(tokens, is_image, strict=True) if not img}
        if len(video_lens) > 1:
            raise ValueError(f"videos in {cache_dir} have different token counts {sorted(video_lens)}")
        self.seq_len = int(seq_len or (video_lens.pop() if video_lens else self.frame_tokens))
        if video_lens and max(video_lens) > self.seq_len:
            raise ValueError(f"videos have {max(video_lens)} tokens, more than seq_len={self.seq_len}")

        texts = [load_npy(s["text.npy"]) for s in samples]
        self.text_dim = int(texts[0].shape[-1])
        self.text_len = max(t.shape[0] for t in texts)  # over the whole cache: equal shapes on all ranks
        masks = [
            load_npy(s["text_mask.npy"]).astype(bool) if "text_mask.npy" in s else np.ones(len(t), bool)
            for s, t in zip(samples, texts, strict=True)
        ]

        self.kinds: dict[str, dict[str, np.ndarray]] = {}
        for kind, want_image in (("video", False), ("image", True)):
            members = np.flatnonzero(is_image == want_image)
            mine = members[rank_split(len(members), seed=cfg.seed, rank=rank, world_size=world_size)]
            if len(mine) == 0:
                continue
            self.kinds[kind] = self._pack(
                [tokens[i] for i in mine],
                [texts[i] for i in mine],
                [masks[i] for i in mine],
                image=want_image,
            )
        if not self.kinds:
            raise ValueError(f"worker {rank}: no samples in {cache_dir} for {world_size} workers")
        self._streams = {
            k: EpochStream(len(v["tokens"]), (cfg.seed, rank, _KIND_ID[k])) for k, v in self.kinds.items()
        }
        self.position = 0
        self._consumed = {k: 0 for k in self.kinds}

    def _pack(self, tokens, texts, masks, *, image: bool) -> dict[str, np.ndarray]:
        n, L = len(tokens), self.text_len
        tok = np.full((n, self.seq_len), -1, dtype=np.int64)
        text = np.zeros((n, L, self.text_dim), dtype=np.float16)
        mask = np.zeros((n, L), dtype=bool)
        for i, (t, e, m) in enumerate(zip(tokens, texts, masks, strict=True)):
            flat = t.reshape(-1)
            tok[i, : flat.size] = flat
            text[i, : e.shape[0]] = e
            mask[i, : m.shape[0]] = m
        scored = np.full(n, self.frame_tokens if image else self.seq_len, dtype=np.int64)
        return {"tokens": tok, "text": text, "text_mask": mask, "num_scored": scored}

    @property
    def num_samples(self) -> dict[str, int]:
        return {k: len(v["tokens"]) for k, v in self.kinds.items()}

    def _video_count(self, step: int) -> int:
        if "image" not in self.kinds:
            return self.cfg.batch_size
        if "video" not in self.kinds:
            return 0
        exact = self.cfg.batch_size * self.cfg.video_fraction
        base = int(np.floor(exact))
        u = np.random.default_rng([self.cfg.seed, self.rank, 0x313, step]).random()
        return base + int(u < exact - base)

    def skip(self, n: int) -> None:
        """Advance `n` batches without building them (cheap: index arithmetic only)."""
        for _ in range(n):
            nv = self._video_count(self.position)
            self._advance({"video": nv, "image": self.cfg.batch_size - nv})

    def _advance(self, counts: dict[str, int]) -> dict[str, np.ndarray]:
        picked = {}
        for kind, count in counts.items():
            if count and kind in self.kinds:
                picked[kind] = self._streams[kind].take(self._consumed[kind], count)
                self._consumed[kind] += count
        self.position += 1
        return picked

    def next_batch(self) -> dict[str, torch.Tensor]:
        nv = self._video_count(self.position)
        picked = self._advance({"video": nv, "image": self.cfg.batch_size - nv})
        parts = {
            key: np.concatenate([self.kinds[k][key][picked[k]] for k in picked])
            for key in ("tokens", "text", "text_mask", "num_scored")
        }
        is_image = np.concatenate([np.full(len(picked[k]), k == "image") for k in picked])
        return {
            "tokens": torch.from_numpy(parts["tokens"]),
            "num_scored": torch.from_numpy(parts["num_scored"]),
            "text": torch.from_numpy(parts["text"].astype(np.float32)),
            "text_mask": torch.from_numpy(parts["text_mask"]),
            "is_image": torch.from_numpy(is_image),
        }

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state(self, state: dict) -> None:
        """Continue from a saved `state()`: replays the draws of the first `position` batches."""
        target = int(state["position"])
        if target < self.position:
            raise ValueError(f"cannot rewind from position {self.position} to {target}")
        self.skip(target - self.position)
