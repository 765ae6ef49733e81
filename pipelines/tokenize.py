"""Build a token cache: clip shards -> tokenizer codes + text embeddings, one token shard per clip shard.

A Ray Data actor pool (one GPU per actor when the cluster has GPUs) loads the tokenizer checkpoint and
the text encoder once per actor; each input row is one clip shard, which the actor decodes, encodes in
batches and writes atomically as the token shard of the same name. Samples (DESIGN.md):
  `__key__`, `tokens.npy` (int16 when the codebook fits, else int32; (t_z+1, h_z, w_z), images (1, h_z, w_z)),
  `txt`, `text.npy` (float16 (L, D), trimmed to the caption's real length), `text_mask.npy` ((L,) bool),
  `json` {kind, num_frames, tokenizer_digest, text_encoder, text_encoder_digest, source, source_key,
  source_name, source_weight} (the last two from the clip's json, "" / 1.0 for older clip shards).

Resuming works as in `pipelines.prepare`: a `_progress/shard-NNNNNN.json` record (with a digest of the
clip dataset, tokenizer, text encoder and config) marks a finished shard; `manifest.json` comes last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.ray_utils import iter_rows_released
from pipelines.shards import (
    PlanMismatchError,
    absolute_uri,
    check_no_foreign_shards,
    completed_shard,
    exists,
    join_uri,
    list_shards,
    local_path,
    progress_uri,
    read_manifest,
    read_shard,
    remove_temp_files,
    shard_index,
    shard_name,
    write_json,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SKIP_UNDECODABLE = "undecodable"
SKIP_TOO_FEW_FRAMES = "too_few_frames"
SKIP_NO_MEDIA = "no_media"


@dataclass
class TokenizeConfig:
    text_encoder: str = "minilm"  # load_text_encoder name or local path
    max_text_length: int = 32  # caption tokens kept
    batch_size: int = 8  # clips per tokenizer forward pass
    num_frames: int | None = None  # crop videos to this many frames; None = all, cut to 1 + k*t_p
    num_workers: int | None = None  # actors; None = one per GPU, or 1 on a CPU-only cluster
    device: str = "auto"  # "auto" = cuda when the actor got a GPU, else cpu

    def output_fields(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("num_workers", "device", "batch_size"):
            d.pop(k)
        return d


def token_dtype(codebook_size: int) -> np.dtype:
    """The smallest of int16/int32 holding every code (halves the cache for codebooks <= 32767)."""
    return np.dtype(np.int16) if codebook_size <= np.iinfo(np.int16).max else np.dtype(np.int32)


def usable_frames(num_frames: int, temporal_patch: int) -> int:
    """Largest 1 + k*t_p <= num_frames: C-ViViT takes the first frame alone, then tubelets of t_p."""
    return 1 + (num_frames - 1) // temporal_patch * temporal_patch


# --------------------------------------------------------------------------------------------- samples
@dataclass
class Clip:
    key: str
    kind: str  # "video" | "image"
    frames: np.ndarray  # (T, S, S, 3) uint8; images T = 1
    caption: str
    meta: dict


class ClipSkip(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_clip(sample: dict, image_size: int, temporal_patch: int, want_frames: int | None) -> Clip:
    """A clip-shard sample -> Clip, resized to the tokenizer's input size if needed.

    Raises ClipSkip for clips that cannot be used, MediaError for undecodable bytes.
    """
    from pipelines.media import decode_image, decode_video, resize_center_crop

    meta = json.loads(sample["json"]) if "json" in sample else {}
    caption = sample.get("txt", b"").decode("utf-8")
    if "mp4" in sample:
        frames = decode_video(sample["mp4"], max_frames=want_frames).frames
        if want_frames is not None and frames.shape[0] < want_frames:
            raise ClipSkip(SKIP_TOO_FEW_FRAMES, f"{frames.shape[0]} frames < {want_frames}")
        frames, kind = frames[: usable_frames(frames.shape[0], temporal_patch)], "video"
    elif "jpg" in sample or "png" in sample:
        frames, kind = decode_image(sample.get("jpg") or sample["png"])[None], "image"
    else:
        raise ClipSkip(SKIP_NO_MEDIA, f"fields {sorted(sample)}")
    if frames.shape[1:3] != (image_size, image_size):
        frames = resize_center_crop(frames, image_size)
    return Clip(sample["__key__"], kind, frames, caption, meta)


def to_video_tensor(frames: np.ndarray):
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3)
    return x.float().div_(127.5).sub_(1.0)


class TokenizeWorker:
    """Ray Data actor: loads the models once; one input row = one clip shard -> one token shard."""

    def __init__(self, tokenizer_ckpt: str, out_dir: str, cfg: dict, identity: dict) -> None:
        import torch

        from modeling.checkpoint import load_checkpoint
        from modeling.text_encoder import load_text_encoder

        self.cfg = TokenizeConfig(**cfg)
        self.out_dir, self.identity = out_dir, identity
        device = self.cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        loaded = load_checkpoint(local_path(tokenizer_ckpt), device=self.device)
        self.model, self.model_cfg = loaded.model.eval(), loaded.config
        if loaded.digest != identity["tokenizer_digest"]:
            raise PlanMismatchError(
                f"tokenizer {tokenizer_ckpt} changed while tokenizing (digest {loaded.digest})"
            )
        self.text = load_text_encoder(self.cfg.text_encoder, self.cfg.max_text_length).to(self.device)
        if self.text.digest != identity["text_encoder_digest"]:
            raise PlanMismatchError(
                f"text encoder {self.text.name} changed while tokenizing ({self.text.digest})"
            )
        self.dtype = token_dtype(self.model_cfg.codebook_size)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        state = self.process(row["clip_shard"], int(row["index"]), row["digest"])
        return {"index": state["index"], "state": json.dumps(state)}

    def encode_tokens(self, clips: list[Clip]) -> list[np.ndarray]:
        """Batches of equal (kind, T) clips through the tokenizer -> per clip (t_z+1, h_z, w_z)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(clips)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, c in enumerate(clips):
            groups[(c.kind, c.frames.shape[0])].append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[s : s + self.cfg.batch_size]
                video = to_video_tensor(np.stack([clips[i].frames for i in chunk])).to(self.device)
                with torch.no_grad():
                    codes = self.model.encode(video).cpu().numpy()  # (B, t_z+1, h_z, w_z)
                for i, c in zip(chunk, codes, strict=True):
                    out[i] = c.astype(self.dtype)
        return out  # type: ignore[return-value]

    def encode_text(self, captions: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """-> per caption (emb (L_i, D) float16, mask (L_i,) bool), trimmed to its real length L_i."""
        out = []
        for s in range(0, len(captions), self.cfg.batch_size):
            emb, mask = self.text.encode(captions[s : s + self.cfg.batch_size])
            emb, mask = emb.cpu().numpy(), mask.cpu().numpy()
            for e, m in zip(emb, mask, strict=True):
                n = int(m.sum())  # right padding: the real tokens come first
                out.append((e[:n].astype(np.float16), m[:n].astype(bool)))
        return out

    def process(self, clip_shard: str, index: int, digest: str) -> dict:
        clips: list[Clip] = []
        skips: Counter[str] = Counter()
        t_p, size = self.model_cfg.temporal_patch_size, self.model_cfg.image_size
        for sample in read_shard(clip_shard):
            try:
                clips.append(decode_clip(sample, size, t_p, self.cfg.num_frames))
            except ClipSkip as e:
                skips[e.reason] += 1
            except Exception:  # undecodable bytes: one bad clip must not sink the shard
                skips[SKIP_UNDECODABLE] += 1
        tokens = self.encode_tokens(clips)
        texts = self.encode_text([c.caption for c in clips])
        samples, counts = [], Counter()
        for c, tok, (emb, mask) in zip(clips, tokens, texts, strict=True):
            weight = c.meta.get("source_weight")
            info = {
                "kind": c.kind,
                "num_frames": int(c.frames.shape[0]),
                "tokenizer_digest": self.identity["tokenizer_digest"],
                "text_encoder": self.identity["text_encoder"],
                "text_encoder_digest": self.identity["text_encoder_digest"],
                "source": c.meta.get("source"),
                "source_key": c.meta.get("source_key"),
                # the mixer's groups and weights (TokenLoaderConfig.mix="source"); older clip shards lack them
                "source_name": str(c.meta.get("source_name") or ""),
                "source_weight": 1.0 if weight is None else float(weight),
            }
            samples.append(
                {
                    "__key__": c.key,
                    "tokens.npy": tok,
                    "txt": c.caption,
                    "text.npy": emb,
                    "text_mask.npy": mask,
                    "json": info,
                }
            )
            counts[c.kind] += 1
        name = shard_name(index)
        if samples:
            write_shard(join_uri(self.out_dir, name), samples)
        state = {
            "index": index,
            "name": name,
            "digest": digest,
            "num_samples": len(samples),
            "counts": dict(counts),
            "skips": dict(skips),
        }
        write_json(progress_uri(self.out_dir, index), state)
        return state


# --------------------------------------------------------------------------------------------- driver
def model_identity(tokenizer_ckpt: str, text_encoder: str) -> dict[str, Any]:
    """Tokenizer digest + config (from config.yaml) and text-encoder name + digest, without loading models."""
    from modeling.checkpoint import read_checkpoint_meta
    from modeling.text_encoder import text_encoder_identity

    meta = read_checkpoint_meta(local_path(tokenizer_ckpt))
    if meta.get("kind") != "cvivit":
        raise ValueError(
            f"{tokenizer_ckpt} holds a {meta.get('kind')!r} checkpoint, not a tokenizer (cvivit)"
        )
    te_name, te_digest = text_encoder_identity(text_encoder)
    return {
        "tokenizer_digest": meta["digest"],
        "tokenizer_config": meta["config"],
        "text_encoder": te_name,
        "text_encoder_digest": te_digest,
    }


def _run(
    pending: list[dict], tokenizer_ckpt: str, out_dir: str, cfg: TokenizeConfig, identity: dict
) -> Iterator[dict]:
    if not pending:
        return
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    workers = cfg.num_workers or max(1, gpus)
    ds = ray.data.from_items(pending, override_num_blocks=len(pending))
    ds = ds.map(
        TokenizeWorker,
        fn_constructor_kwargs={
            "tokenizer_ckpt": tokenizer_ckpt,
            "out_dir": out_dir,
            "cfg": asdict(cfg),
            "identity": identity,
        },
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(pending)))),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    for row in iter_rows_released(ds):
        yield json.loads(row["state"])


def tokenize(tokenizer_ckpt: str, data_dir: str, out_dir: str, cfg: TokenizeConfig | None = None) -> dict:
    """Tokenize every clip shard of `data_dir` into a token cache at `out_dir` (resumable). Returns the manifest."""
    cfg = cfg or TokenizeConfig()
    tokenizer_ckpt, data_dir, out_dir = (absolute_uri(u) for u in (tokenizer_ckpt, data_dir, out_dir))
    clip_manifest = read_manifest(data_dir)
    clip_shards = list_shards(data_dir)
    if not clip_shards:
        raise FileNotFoundError(f"no shard-*.tar in {data_dir}: run `phenaki prepare` first")
    identity = model_identity(tokenizer_ckpt, cfg.text_encoder)
    base = {
        "clips": clip_manifest.get("plan_digest") or clip_manifest.get("shards"),
        "identity": identity,
        "cfg": cfg.output_fields(),
        "v": SCHEMA_VERSION,
    }
    digests = {
        shard_index(s): hashlib.sha256(
            json.dumps({**base, "shard": shard_name(shard_index(s))}, sort_keys=True).encode()
        ).hexdigest()
        for s in clip_shards
    }
    plan_digest = hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()
    check_no_foreign_shards(out_dir, set(digests))
    states = {i: st for i, d in digests.items() if (st := completed_shard(out_dir, i, d)) is not None}
    pending = [
        {"index": shard_index(s), "clip_shard": s, "digest": digests[shard_index(s)]}
        for s in clip_shards
        if shard_index(s) not in states
    ]
    log.info(
        "tokenize: %d clip shard(s), %d done, %d to tokenize (tokenizer %s, text encoder %s)",
        len(clip_shards),
        len(states),
        len(pending),
        identity["tokenizer_digest"],
        identity["text_encoder"],
    )

    if not pending and exists(join_uri(out_dir, "manifest.json")):
        old = read_manifest(out_dir)
        if old.get("plan_digest") == plan_digest:
            log.info("tokenize: %s is complete; nothing to do", out_dir)
            return old
    if pending:
        log.info("tokenize: removed %d temp file(s) left by an interrupted run", remove_temp_files(out_dir))
    with contextlib.closing(_run(pending, tokenizer_ckpt, out_dir, cfg, identity)) as finished:
        for n, st in enumerate(finished, start=1):
            states[st["index"]] = st
            log.info(
                "tokenize: shard %s done (%d samples, skips %s) [%d/%d]",
                st["name"],
                st["num_samples"],
                st["skips"],
                n,
                len(pending),
            )

    ordered = [states[i] for i in sorted(states)]
    counts: Counter[str] = Counter()
    skips: Counter[str] = Counter()
    for st in ordered:
        counts.update(st["counts"])
        skips.update(st["skips"])
    tok_cfg = identity["tokenizer_config"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "type": "tokens",
        "producer": "pipelines.tokenize",
        "config": asdict(cfg),
        "data_dir": data_dir,
        "plan_digest": plan_digest,
        "tokenizer_digest": identity["tokenizer_digest"],
        "tokenizer": {
            "checkpoint": tokenizer_ckpt,
            "digest": identity["tokenizer_digest"],
            "config": tok_cfg,
        },
        "codebook_size": tok_cfg["codebook_size"],
        "token_dtype": token_dtype(tok_cfg["codebook_size"]).name,
        "text_encoder": {"name": identity["text_encoder"], "digest": identity["text_encoder_digest"]},
        "num_samples": sum(counts.values()),
        "counts": {"video": counts.get("video", 0), "image": counts.get("image", 0)},
        "skips": dict(sorted(skips.items())),
        "shards": [st["name"] for st in ordered if st["num_samples"] > 0],
        "shard_counts": {
            st["name"]: {"num_samples": st["num_samples"], **st["counts"]}
            for st in ordered
            if st["num_samples"] > 0
        },
    }
    write_manifest(out_dir, manifest)
    log.info(
        "tokenize: wrote %s (%d samples %s, skips %s)",
        join_uri(out_dir, "manifest.json"),
        manifest["num_samples"],
        manifest["counts"],
        manifest["skips"],
    )
    return manifest
