"""Transformer training data: batches from one or several token caches, mixed by kind or by source.

The caches' samples are loaded once per worker into padded arrays and grouped; each group is an endless
`EpochStream` and a batch takes the next items of the group streams. How many items each group gives at
step s is a pure function of (seed, rank, step), so `load_state({"position": n})` replays the draws of the
first n batches by index arithmetic and a resumed run gets exactly the batches of an uninterrupted one.

Mixing modes (`TokenLoaderConfig.mix`):
- "kind": the groups are videos and images; a batch of B holds `floor(B*f)` videos plus one more with
  probability `frac(B*f)` (f = `video_fraction`), the rest images (the paper's 80% videos / 20% images);
- "source": the groups are the samples' `source_name`s (set by `phenaki prepare` from
  `"[fmt:]URI[::weight=W][::name=N]"`), weighted by their recorded `source_weight` or by
  `TokenLoaderConfig.weights`; a batch's group counts are `multinomial(B, w / sum(w))`. A source may hold
  videos and images: `num_scored` and `is_image` are per sample.
Samples are split between ranks per group with `rank_split`, so no sample is seen by two ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.loaders import KIND_ID, SAMPLE_KINDS, EpochStream, rank_split, read_samples
from pipelines.shard_scan import ShardScan, scan_shard, shard_checksums
from pipelines.shards import join_uri, list_shards, load_npy, read_bytes, read_manifest

MIX_MODES = ("kind", "source")
_SOURCE_SALT = 0x51C  # seeds the per-step source counts and the per-source streams
_BATCH_KEYS = ("tokens", "text", "text_mask", "num_scored", "is_image")


@dataclass(frozen=True)
class TokenLoaderConfig:
    batch_size: int = 8
    video_fraction: float = 0.8  # mix="kind": paper: 80% videos, 20% images
    seed: int = 0
    mix: str = "kind"  # "kind": videos vs images at video_fraction; "source": by source weight
    weights: dict[str, float] | None = None  # mix="source": source name -> weight, over the recorded ones
    strict: bool = False  # a damaged token shard raises (naming it and the fix) instead of a `bad_shard` skip

    def __post_init__(self) -> None:
        if self.mix not in MIX_MODES:
            raise ValueError(f"mix must be one of {MIX_MODES}, got {self.mix!r}")
        if not 0.0 <= self.video_fraction <= 1.0:
            raise ValueError(f"video_fraction must be in [0, 1], got {self.video_fraction}")
        if self.weights is not None and self.mix != "source":
            raise ValueError(
                f"source weights {self.weights} are used only with mix='source' (mix={self.mix!r})"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def split_cache_dirs(cache_dir: str | Sequence[str]) -> list[str]:
    """One cache, a list of caches, or comma-separated caches (as given on the command line) -> a list, local
    paths made absolute here (Ray workers run in another directory than the driver that read the command)."""
    from pipelines.shards import absolute_uri

    items = [cache_dir] if isinstance(cache_dir, str) else list(cache_dir)
    dirs = [absolute_uri(part.strip()) for item in items for part in str(item).split(",") if part.strip()]
    if not dirs:
        raise ValueError("no token cache directory given")
    repeated = sorted(d for d, n in Counter(dirs).items() if n > 1)
    if repeated:
        raise ValueError(f"token cache(s) {repeated} given more than once")
    return dirs


def _describe(cache_dir: str | Sequence[str]) -> str:
    return cache_dir if isinstance(cache_dir, str) else ", ".join(cache_dir)


def _agree(values: dict[str, object], what: str) -> None:
    """Raise when the caches (keys) record different `what` (values)."""
    if len(set(values.values())) > 1:
        listing = "; ".join(f"{cache}: {value}" for cache, value in values.items())
        raise ValueError(f"token caches differ in {what} ({listing}); they cannot be trained on together")


# --------------------------------------------------------------------------------------------- cache info
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


def check_tokenizer_digest(
    cache_dir: str | Sequence[str], cache_digest: str | None, tokenizer_dir: str
) -> None:
    cache_dir = _describe(cache_dir)
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


def _one_cache_info(cache_dir: str, strict: bool) -> TokenCacheInfo:
    manifest = read_manifest(cache_dir)
    sums = shard_checksums(cache_dir)
    first_json: dict | None = None
    image: TokenCacheInfo | None = None
    for uri in list_shards(cache_dir):
        # a damaged shard is passed over here (the loader counts it): the info comes from the sound ones
        for s in scan_shard(uri, sha256=sums.get(uri.rsplit("/", 1)[-1]), strict=strict).samples:
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


def token_cache_info(cache_dir: str | Sequence[str], *, strict: bool = False) -> TokenCacheInfo:
    """Scan shards only until a video sample is found (the first shard, in practice).

    Several caches (a list or comma-separated) must agree on tokenizer digest, text encoder, token grid,
    video length and text width; the info of the first one holding videos is returned.
    """
    dirs = split_cache_dirs(cache_dir)
    infos = {d: _one_cache_info(d, strict) for d in dirs}
    _agree({d: i.tokenizer_digest for d, i in infos.items()}, "tokenizer digest")
    _agree({d: i.text_encoder for d, i in infos.items() if i.text_encoder}, "text encoder")
    _agree({d: i.token_grid[1:] for d, i in infos.items()}, "token grid (h_z, w_z)")
    _agree({d: i.text_dim for d, i in infos.items()}, "text embedding width")
    videos = {d: i for d, i in infos.items() if i.token_grid[0] > 1}
    _agree({d: i.seq_len for d, i in videos.items()}, "tokens per video")
    return next(iter(videos.values()), infos[dirs[0]])


# --------------------------------------------------------------------------------------------- loading
def load_caches(
    dirs: list[str], *, strict: bool = False
) -> tuple[list[dict], list[str], dict[str, dict], dict[str, dict | None], ShardScan]:
    """The union of the caches' samples sorted by key, each sample's cache, per cache its manifest and first
    sample json, and the shards' faults (`ShardScan` without samples; `strict`: faults raise). Keys must be
    unique across the caches."""
    faults = ShardScan()
    samples: list[dict] = []
    owner: dict[str, str] = {}
    manifests: dict[str, dict] = {}
    first_json: dict[str, dict | None] = {}
    for d in dirs:
        manifests[d] = read_manifest(d)
        scan = read_samples(d, strict=strict)
        mine, scan.samples = scan.samples, []
        faults.extend(scan)
        first_json[d] = json.loads(mine[0]["json"]) if mine and "json" in mine[0] else None
        clashes = [s["__key__"] for s in mine if s["__key__"] in owner]
        if clashes:
            other = owner[clashes[0]]
            raise ValueError(
                f"{len(clashes)} sample key(s) of token cache {d} are also in token cache {other} "
                f"(e.g. {clashes[0]!r}): keys must be unique across the caches of one job. Were both made "
                "from the same clips, or prepared with the same source names (key prefixes)?"
            )
        owner.update((s["__key__"], d) for s in mine)
        samples.extend(mine)
    if not samples:
        raise FileNotFoundError(f"no samples in token cache(s) {_describe(dirs)}")
    order = sorted(range(len(samples)), key=lambda i: samples[i]["__key__"])  # independent of cache order
    ordered = [samples[i] for i in order]
    return ordered, [owner[s["__key__"]] for s in ordered], manifests, first_json, faults


def _source_id(name: str) -> int:
    """A stable integer for a source name (seeds its stream; independent of which other sources exist)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little")


class TokenBatches:
    """Mixed batches from one or several token caches (see the module docstring for the mixing modes).

    Batches are dicts: `tokens (B,N) long` (images padded with -1 past their h_z*w_z tokens),
    `num_scored (B,) long`, `text (B,L,D) float32` (zero padded), `text_mask (B,L) bool`, `is_image (B,) bool`.
    `position` counts batches drawn; `skip(n)` / `state()` / `load_state()` resume a run. `last_keys` holds
    the sample keys (`__key__`) of the last `next_batch()`, row by row (for sample accounting). `skipped`,
    `repaired` and `skip_records`: the caches' damaged shards and repaired samples (`pipelines.shard_scan`).
    """

    def __init__(
        self,
        cache_dir: str | Sequence[str],
        cfg: TokenLoaderConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        tokenizer_dir: str | None = None,
        seq_len: int | None = None,
    ):
        self.cfg = cfg  # checked when it was made (TokenLoaderConfig.__post_init__)
        self.rank, self.world_size = rank, world_size
        self.cache_dirs = split_cache_dirs(cache_dir)
        where = _describe(self.cache_dirs)
        samples, origin, self.manifests, first_json, faults = load_caches(self.cache_dirs, strict=cfg.strict)
        self.skipped, self.repaired, self.skip_records = faults.skips, faults.repaired, faults.skipped
        self.manifest = self.manifests[self.cache_dirs[0]]
        digests = {d: tokenizer_digest_of_cache(self.manifests[d], first_json[d]) for d in self.cache_dirs}
        _agree(digests, "tokenizer digest")
        self.tokenizer_digest = digests[self.cache_dirs[0]]
        if tokenizer_dir is not None:
            check_tokenizer_digest(where, self.tokenizer_digest, tokenizer_dir)
        encoders = {d: _text_encoder_name(self.manifests[d], first_json[d] or {}) for d in self.cache_dirs}
        _agree({d: n for d, n in encoders.items() if n}, "text encoder")

        missing = [s["__key__"] for s in samples if "text.npy" not in s]
        if missing:
            raise ValueError(
                f"{len(missing)} samples in {where} (e.g. {missing[0]}) have no text.npy embeddings; "
                "re-run `phenaki tokenize` with text embeddings enabled"
            )
        tokens = [load_npy(s["tokens.npy"]) for s in samples]
        texts = [load_npy(s["text.npy"]) for s in samples]
        is_image = np.array([t.shape[0] == 1 for t in tokens], dtype=bool)
        self._check_shapes(tokens, texts, is_image, origin)
        grid = tokens[0].shape[1:]
        self.frame_tokens = int(np.prod(grid))  # h_z * w_z
        video_lens = {t.size for t, img in zip(tokens, is_image, strict=True) if not img}
        self.seq_len = int(seq_len or (max(video_lens) if video_lens else self.frame_tokens))
        if video_lens and max(video_lens) > self.seq_len:
            raise ValueError(f"videos have {max(video_lens)} tokens, more than seq_len={self.seq_len}")
        self.text_dim = int(texts[0].shape[-1])
        self.text_len = max(t.shape[0] for t in texts)  # over all caches: equal shapes on all ranks
        masks = [
            load_npy(s["text_mask.npy"]).astype(bool) if "text_mask.npy" in s else np.ones(len(t), bool)
            for s, t in zip(samples, texts, strict=True)
        ]

        self.source_weights: dict[str, float] | None = None
        if cfg.mix == "kind":
            members = {k: np.flatnonzero(is_image == (k == "image")) for k in SAMPLE_KINDS}
            seeds = {k: (cfg.seed, rank, KIND_ID[k]) for k in SAMPLE_KINDS}
        else:
            metas = [json.loads(s["json"]) if "json" in s else {} for s in samples]
            names = np.array([str(m.get("source_name") or "") for m in metas], dtype=object)
            self.source_weights = self._resolve_weights(metas, origin)
            active = [n for n, w in self.source_weights.items() if w > 0]
            members = {n: np.flatnonzero(names == n) for n in active}
            seeds = {n: (cfg.seed, rank, _SOURCE_SALT, _source_id(n)) for n in active}
            few = {n: len(m) for n, m in members.items() if len(m) < world_size}
            if few:
                raise ValueError(
                    f"source(s) {few} in {where} have fewer samples than the {world_size} workers: every "
                    "worker needs some of every source with a weight above 0 (set its weight to 0 to drop it)"
                )

        self.groups: dict[str, dict[str, np.ndarray]] = {}
        self._keys: dict[str, np.ndarray] = {}  # group -> the sample keys of its packed rows
        for name, idx in members.items():
            mine = idx[rank_split(len(idx), seed=cfg.seed, rank=rank, world_size=world_size)]
            if len(mine):
                self.groups[name] = self._pack(mine, tokens, texts, masks, is_image)
                self._keys[name] = np.array([samples[i]["__key__"] for i in mine], dtype=object)
        if not self.groups:
            raise ValueError(f"worker {rank}: no samples in {where} for {world_size} workers")
        self._streams = {g: EpochStream(len(v["tokens"]), seeds[g]) for g, v in self.groups.items()}
        if self.source_weights is not None:
            total = sum(self.source_weights[g] for g in self.groups)
            self._probs = np.array([self.source_weights[g] / total for g in self.groups])
        self.position = 0
        self._consumed = {g: 0 for g in self.groups}
        self.last_keys: list[str] = []

    # ---------------------------------------------------------------------------------------- checks
    @staticmethod
    def _check_shapes(tokens: list, texts: list, is_image: np.ndarray, origin: list[str]) -> None:
        """Within each cache one token grid, one video length and one text width; then across caches."""
        per_cache: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        for t, e, img, cache in zip(tokens, texts, is_image, origin, strict=True):
            per_cache[cache]["grid"][t.shape[1:]] += 1
            per_cache[cache]["text"][e.shape[-1]] += 1
            if not img:
                per_cache[cache]["video"][t.size] += 1
        for cache, c in per_cache.items():
            if len(c["grid"]) > 1:
                raise ValueError(f"token grids differ in {cache}: {dict(c['grid'])}")
            if len(c["video"]) > 1:
                raise ValueError(f"videos in {cache} have different token counts {sorted(c['video'])}")
            if len(c["text"]) > 1:
                raise ValueError(f"text embeddings in {cache} have different widths {sorted(c['text'])}")
        _agree(
            {cache: tuple(next(iter(c["grid"]))) for cache, c in per_cache.items()}, "token grid (h_z, w_z)"
        )
        _agree({cache: next(iter(c["text"])) for cache, c in per_cache.items()}, "text embedding width")
        _agree(
            {cache: next(iter(c["video"])) for cache, c in per_cache.items() if c["video"]},
            "tokens per video",
        )

    def _resolve_weights(self, metas: list[dict], origin: list[str]) -> dict[str, float]:
        """Source name -> weight (sorted by name): the override where given, else the samples' own."""
        recorded: dict[str, set[float]] = defaultdict(set)
        caches: dict[str, set[str]] = defaultdict(set)
        for m, cache in zip(metas, origin, strict=True):
            name = str(m.get("source_name") or "")
            weight = m.get("source_weight")
            recorded[name].add(1.0 if weight is None else float(weight))
            caches[name].add(cache)
        override = dict(self.cfg.weights or {})
        unknown = sorted(set(override) - set(recorded))
        if unknown:
            raise ValueError(
                f"source weights name unknown source(s) {unknown}; the sources in "
                f"{_describe(self.cache_dirs)} are {sorted(recorded)}"
            )
        weights: dict[str, float] = {}
        for name in sorted(recorded):
            if name in override:
                weight = float(override[name])
            elif len(recorded[name]) > 1:
                raise ValueError(
                    f"the samples of source {name!r} (in {sorted(caches[name])}) record different weights "
                    f"{sorted(recorded[name])}; give it one with transformer_train.source_weights"
                )
            else:
                weight = next(iter(recorded[name]))
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"source {name!r} has weight {weight}: weights must be finite and >= 0")
            weights[name] = weight
        if sum(weights.values()) <= 0:
            raise ValueError(f"every source weight is 0 ({weights}): nothing to train on")
        return weights

    # ---------------------------------------------------------------------------------------- packing
    def _pack(self, idx: np.ndarray, tokens, texts, masks, is_image: np.ndarray) -> dict[str, np.ndarray]:
        n, L = len(idx), self.text_len
        tok = np.full((n, self.seq_len), -1, dtype=np.int64)
        text = np.zeros((n, L, self.text_dim), dtype=np.float16)
        mask = np.zeros((n, L), dtype=bool)
        for row, i in enumerate(idx):
            flat = tokens[i].reshape(-1)
            tok[row, : flat.size] = flat
            text[row, : texts[i].shape[0]] = texts[i]
            mask[row, : masks[i].shape[0]] = masks[i]
        img = is_image[idx].copy()
        scored = np.where(img, self.frame_tokens, self.seq_len).astype(np.int64)
        return {"tokens": tok, "text": text, "text_mask": mask, "num_scored": scored, "is_image": img}

    @property
    def kinds(self) -> dict[str, dict[str, np.ndarray]]:
        """The packed groups (with mix="kind": "video" and "image")."""
        return self.groups

    @property
    def num_samples(self) -> dict[str, int]:
        return {g: len(v["tokens"]) for g, v in self.groups.items()}

    # ---------------------------------------------------------------------------------------- drawing
    def _video_count(self, step: int) -> int:
        if "image" not in self.groups:
            return self.cfg.batch_size
        if "video" not in self.groups:
            return 0
        exact = self.cfg.batch_size * self.cfg.video_fraction
        base = int(np.floor(exact))
        u = np.random.default_rng([self.cfg.seed, self.rank, 0x313, step]).random()
        return base + int(u < exact - base)

    def step_counts(self, step: int) -> dict[str, int]:
        """How many samples each group gives to the batch at `step`: a function of (seed, rank, step)."""
        if self.cfg.mix == "kind":
            nv = self._video_count(step)
            return {"video": nv, "image": self.cfg.batch_size - nv}
        rng = np.random.default_rng([self.cfg.seed, self.rank, _SOURCE_SALT, step])
        counts = rng.multinomial(self.cfg.batch_size, self._probs)
        return dict(zip(self.groups, counts.tolist(), strict=True))

    def skip(self, n: int) -> None:
        """Advance `n` batches without building them (cheap: index arithmetic only)."""
        for _ in range(n):
            self._advance(self.step_counts(self.position))

    def _advance(self, counts: dict[str, int]) -> dict[str, np.ndarray]:
        picked = {}
        for group, count in counts.items():
            if count and group in self.groups:
                picked[group] = self._streams[group].take(self._consumed[group], count)
                self._consumed[group] += count
        self.position += 1
        return picked

    def next_batch(self) -> dict[str, torch.Tensor]:
        picked = self._advance(self.step_counts(self.position))
        parts = {
            key: np.concatenate([self.groups[g][key][idx] for g, idx in picked.items()])
            for key in _BATCH_KEYS
        }
        self.last_keys = [str(k) for g, idx in picked.items() for k in self._keys[g][idx]]
        return {
            "tokens": torch.from_numpy(parts["tokens"]),
            "num_scored": torch.from_numpy(parts["num_scored"]),
            "text": torch.from_numpy(parts["text"].astype(np.float32)),
            "text_mask": torch.from_numpy(parts["text_mask"]),
            "is_image": torch.from_numpy(parts["is_image"]),
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
