"""Build a token cache: clip shards -> tokenizer codes + text embeddings, one token shard per clip shard.

A Ray Data actor pool (one GPU per actor when the cluster has GPUs) loads the tokenizer checkpoint and
the text encoder once per actor; each input row is one clip shard, which the actor decodes, encodes in
batches and writes atomically as the token shard of the same name. Samples (DESIGN.md):
  `__key__`, `tokens.npy` (int16 when the codebook fits, else int32; (t_z, h_z, w_z), C-ViViT images
  (1, h_z, w_z)), `txt`, `text.npy` (float16 (L, D), trimmed to the caption's real length), `text_mask.npy`
  ((L,) bool), `json` {kind, num_frames, tokenizer_digest, text_encoder, text_encoder_digest, source,
  source_key, source_name, source_weight} (the last two from the clip's json, "" / 1.0 for older clip shards);
  with `commit: true` also `cond_tokens.npy` (9, t_z, h_z, w_z) (`pipelines.commit_data`).

Tokenizer families (`modeling.tokenizers`, by the checkpoint's kind): videos are cut to the longest length
the family takes (`TokenizerFamily.usable_frames`): C-ViViT 1 + k*t_p (the first frame alone), MAGVIT-VQ a multiple of
its temporal compression (4: a 9-frame clip becomes 8 frames; fewer than 4 frames are skipped as
`too_few_frames`). Stills are skipped for MAGVIT-VQ and counted as `image_unsupported`: the 3D-VQ is trained on
videos only (no image batches, `jobs.train_tokenizer`), MAGVIT has no image frame, and COMMIT trains on
videos; a still copied into a static 4-frame clip would be a kind of clip the tokenizer never saw.

Damaged clip shards (`pipelines.shard_scan`): a shard whose bytes differ from the clip manifest's sha256, or
whose tar is truncated or corrupt, is one `bad_shard` skip (its readable samples are still tokenized when the
manifest records no checksum); `strict` raises instead. Token shards carry their own sha256 in this manifest.

Resuming works as in `pipelines.prepare`: a `_progress/shard-NNNNNN.json` record (with a digest of the
clip dataset, tokenizer, text encoder and config) marks a finished shard; `manifest.json` comes last.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines.shard_scan import SHA256_FIELD, BadShardError, scan_shard
from pipelines.sharded_job import FAILURE_KEY, ShardPlan, map_shards, run_sharded_job, shard_totals
from pipelines.shards import (
    RAW_CLIP_KEY,
    PlanMismatchError,
    absolute_uri,
    join_uri,
    list_shards,
    local_path,
    progress_uri,
    read_manifest,
    shard_index,
    shard_name,
    write_json,
    write_shard_sha256,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SKIP_UNDECODABLE = "undecodable"
SKIP_TOO_FEW_FRAMES = "too_few_frames"
SKIP_NO_MEDIA = "no_media"
SKIP_IMAGE_UNSUPPORTED = "image_unsupported"  # a still, for a tokenizer family without images (MAGVIT-VQ)


@dataclass
class TokenizeConfig:
    text_encoder: str = "minilm"  # load_text_encoder name or local path
    max_text_length: int = 32  # caption tokens kept
    batch_size: int = 8  # clips per tokenizer forward pass
    num_frames: int | None = None  # crop videos to this many frames; None = all, cut to 1 + k*t_p
    num_workers: int | None = None  # actors; None = one per GPU, or 1 on a CPU-only cluster
    device: str = "auto"  # "auto" = cuda when the actor got a GPU, else cpu
    commit: bool = False  # MAGVIT: also store COMMIT's condition tokens z~ per task (cond_tokens.npy)
    commit_fp_cond_frames: int = 1  # fp/cfp leading frames given (1 BAIR, 5 Kinetics-600)
    commit_fi_cond_frames: int = 1  # fi frames given at each end
    strict: bool = False  # a damaged clip shard raises (naming it and the fix) instead of a `bad_shard` skip

    def output_fields(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("num_workers", "device", "batch_size", "strict"):  # not what the cache holds
            d.pop(k)
        return d


def token_dtype(codebook_size: int) -> np.dtype:
    """The smallest of int16/int32 holding every code (halves the cache for codebooks <= 32767)."""
    return np.dtype(np.int16) if codebook_size <= np.iinfo(np.int16).max else np.dtype(np.int32)


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


def decode_clip(
    sample: dict,
    image_size: int,
    temporal_patch: int,
    want_frames: int | None,
    *,
    usable: Callable[[int], int] | None = None,
    images: bool = True,
) -> Clip:
    """A clip-shard sample -> Clip, resized to the tokenizer's input size if needed.

    `usable(n)`: the longest clip length <= n the tokenizer takes (default C-ViViT's, from `temporal_patch`);
    `images=False` skips stills. Raises ClipSkip for clips that cannot be used, MediaError for undecodable bytes.
    """
    from modeling.cvivit import usable_frames
    from pipelines.media import decode_image, decode_raw_clip, decode_video, resize_center_crop

    usable = usable or (lambda n: usable_frames(n, temporal_patch))
    meta = json.loads(sample["json"]) if "json" in sample else {}
    caption = sample.get("txt", b"").decode("utf-8")
    if "mp4" in sample or RAW_CLIP_KEY in sample:
        if "mp4" in sample:
            frames = decode_video(sample["mp4"], max_frames=want_frames).frames
        else:  # prepared with video_format="npy": the frames as decoded, no codec
            frames = decode_raw_clip(sample[RAW_CLIP_KEY], want_frames)
        if want_frames is not None and frames.shape[0] < want_frames:
            raise ClipSkip(SKIP_TOO_FEW_FRAMES, f"{frames.shape[0]} frames < {want_frames}")
        keep = usable(frames.shape[0])
        if keep < 1:
            raise ClipSkip(SKIP_TOO_FEW_FRAMES, f"{frames.shape[0]} frames: no usable clip length")
        frames, kind = frames[:keep], "video"
    elif "jpg" in sample or "png" in sample:
        if not images:
            raise ClipSkip(SKIP_IMAGE_UNSUPPORTED, "stills are not tokenized by this tokenizer family")
        frames, kind = decode_image(sample.get("jpg") or sample["png"])[None], "image"
    else:
        raise ClipSkip(SKIP_NO_MEDIA, f"fields {sorted(sample)}")
    if frames.shape[1:3] != (image_size, image_size):
        frames = resize_center_crop(frames, image_size)
    return Clip(sample["__key__"], kind, frames, caption, meta)


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
        self.model, self.model_cfg, self.kind = loaded.model.eval(), loaded.config, loaded.kind
        self.commit_cfg = None
        if self.cfg.commit:
            from pipelines.commit_data import commit_config_from_record

            self.commit_cfg = commit_config_from_record(identity["commit"])
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
        try:
            state = self.process(row["clip_shard"], int(row["index"]), row["digest"], row["sha256"] or None)
        except BadShardError as error:  # strict: the driver raises it (`run_sharded_job`), see FAILURE_KEY
            state = {"index": int(row["index"]), FAILURE_KEY: str(error)}
        return {"index": state["index"], "state": json.dumps(state)}

    def encode_tokens(self, clips: list[Clip]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Batches of equal (kind, T) clips through the tokenizer -> per clip tokens (t_z, h_z, w_z) and, with
        `commit`, the videos' condition tokens (9, t_z, h_z, w_z) (None for stills)."""
        import torch

        from modeling.pixels import frames_to_video

        out: list[np.ndarray | None] = [None] * len(clips)
        cond: list[np.ndarray | None] = [None] * len(clips)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, c in enumerate(clips):
            groups[(c.kind, c.frames.shape[0])].append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.cfg.batch_size):
                chunk = idx[s : s + self.cfg.batch_size]
                video = frames_to_video(np.stack([clips[i].frames for i in chunk])).to(self.device)
                with torch.no_grad():
                    codes = self.model.encode(video).cpu().numpy()  # (B, t_z, h_z, w_z)
                for i, c in zip(chunk, codes, strict=True):
                    out[i] = c.astype(self.dtype)
                if self.commit_cfg is not None and clips[chunk[0]].kind == "video":
                    from pipelines.commit_data import encode_condition_tokens

                    z_cond = (
                        encode_condition_tokens(
                            self.model.encode, video, self.commit_cfg, self.cfg.batch_size
                        )
                        .cpu()
                        .numpy()
                    )
                    for i, c in zip(chunk, z_cond, strict=True):
                        cond[i] = c.astype(self.dtype)
        return out, cond  # type: ignore[return-value]

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

    def process(self, clip_shard: str, index: int, digest: str, sha256: str | None = None) -> dict:
        """Tokenize one clip shard (verified against `sha256`, the clip manifest's checksum, when given)."""
        clips: list[Clip] = []
        scan = scan_shard(clip_shard, sha256=sha256, strict=self.cfg.strict)
        skips: Counter[str] = Counter(scan.skips)
        tok_cfg, size = self.identity["tokenizer_config"], self.model_cfg.image_size
        t_p = int(tok_cfg.get("temporal_patch_size", 1))
        from modeling.tokenizers import tokenizer_family

        family = tokenizer_family(self.kind)
        usable = lambda n: family.usable_frames(tok_cfg, n)  # noqa: E731
        images = family.takes_stills
        for sample in scan.samples:
            try:
                clips.append(
                    decode_clip(sample, size, t_p, self.cfg.num_frames, usable=usable, images=images)
                )
            except ClipSkip as e:
                skips[e.reason] += 1
            except Exception:  # undecodable bytes: one bad clip must not sink the shard
                skips[SKIP_UNDECODABLE] += 1
        tokens, conds = self.encode_tokens(clips)
        texts = self.encode_text([c.caption for c in clips])
        samples, counts = [], Counter()
        for c, tok, cond, (emb, mask) in zip(clips, tokens, conds, texts, strict=True):
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
            sample = {
                "__key__": c.key,
                "tokens.npy": tok,
                "txt": c.caption,
                "text.npy": emb,
                "text_mask.npy": mask,
                "json": info,
            }
            if cond is not None:
                sample["cond_tokens.npy"] = cond
            samples.append(sample)
            counts[c.kind] += 1
        name = shard_name(index)
        sha = write_shard_sha256(join_uri(self.out_dir, name), samples)[1] if samples else None
        state = {
            "index": index,
            "name": name,
            "digest": digest,
            "sha256": sha,
            "num_samples": len(samples),
            "counts": dict(counts),
            "skips": dict(skips),
            "repaired": dict(scan.repaired),
            "skipped": scan.skipped,
        }
        write_json(progress_uri(self.out_dir, index), state)
        return state


# --------------------------------------------------------------------------------------------- driver
def model_identity(
    tokenizer_ckpt: str, text_encoder: str, cfg: TokenizeConfig | None = None
) -> dict[str, Any]:
    """Tokenizer kind, digest + config (from config.yaml), text-encoder name + digest and, with `cfg.commit`,
    the COMMIT condition record, without loading models."""
    from modeling.checkpoint import read_checkpoint_meta
    from modeling.text_encoder import text_encoder_identity
    from modeling.tokenizers import check_tokenizer_for, check_tokenizer_kind

    meta = read_checkpoint_meta(local_path(tokenizer_ckpt))
    kind = check_tokenizer_kind(meta.get("kind"), tokenizer_ckpt)
    commit = None
    if cfg is not None and cfg.commit:
        from pipelines.commit_data import commit_record

        check_tokenizer_for("commit", kind, f"{tokenizer_ckpt} (tokenize.commit)")
        commit = commit_record(cfg.commit_fp_cond_frames, cfg.commit_fi_cond_frames)
    te_name, te_digest = text_encoder_identity(text_encoder)
    return {
        "tokenizer_kind": kind,
        "tokenizer_digest": meta["digest"],
        "tokenizer_config": meta["config"],
        "text_encoder": te_name,
        "text_encoder_digest": te_digest,
        "commit": commit,
    }


def _worker_options(
    tokenizer_ckpt: str, out_dir: str, cfg: TokenizeConfig, identity: dict, num_shards: int
) -> Callable[[dict], dict[str, Any]]:
    """`Dataset.map` options for `TokenizeWorker`: an actor pool of `num_workers` (default: one per GPU, else
    one), each actor loading the models once."""

    def options(resources: dict) -> dict[str, Any]:
        import ray.data

        gpus = int(resources.get("GPU", 0))
        workers = cfg.num_workers or max(1, gpus)
        return {
            "fn_constructor_kwargs": {
                "tokenizer_ckpt": tokenizer_ckpt,
                "out_dir": out_dir,
                "cfg": asdict(cfg),
                "identity": identity,
            },
            "compute": ray.data.ActorPoolStrategy(size=max(1, min(workers, num_shards))),
            "num_gpus": 1 if gpus else 0,
            "num_cpus": 1,
        }

    return options


def tokenize(tokenizer_ckpt: str, data_dir: str, out_dir: str, cfg: TokenizeConfig | None = None) -> dict:
    """Tokenize every clip shard of `data_dir` into a token cache at `out_dir` (resumable). Returns the manifest."""
    cfg = cfg or TokenizeConfig()
    tokenizer_ckpt, data_dir, out_dir = (absolute_uri(u) for u in (tokenizer_ckpt, data_dir, out_dir))
    clip_manifest = read_manifest(data_dir)
    clip_shards = list_shards(data_dir)
    if not clip_shards:
        raise FileNotFoundError(f"no shard-*.tar in {data_dir}: run `phenaki prepare` first")
    identity = model_identity(tokenizer_ckpt, cfg.text_encoder, cfg)
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
    plan = ShardPlan(
        "tokenize", out_dir, digests, hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()
    )
    log.info(
        "tokenize: %d clip shard(s) (tokenizer %s, text encoder %s)",
        len(clip_shards),
        identity["tokenizer_digest"],
        identity["text_encoder"],
    )
    by_index = {shard_index(s): s for s in clip_shards}
    sums = clip_manifest.get(SHA256_FIELD) or {}  # clip datasets made before checksums have none
    return run_sharded_job(
        plan,
        lambda i, digest: {
            "index": i,
            "clip_shard": by_index[i],
            "digest": digest,
            "sha256": sums.get(shard_name(i), ""),
        },
        lambda rows: map_shards(
            rows, TokenizeWorker, _worker_options(tokenizer_ckpt, out_dir, cfg, identity, len(rows))
        ),
        lambda states: _manifest(cfg, data_dir, tokenizer_ckpt, identity, plan.plan_digest, states),
    )


def _manifest(
    cfg: TokenizeConfig,
    data_dir: str,
    tokenizer_ckpt: str,
    identity: dict,
    plan_digest: str,
    states: list[dict],
) -> dict:
    """The token cache's manifest: the models that made it, the settings, and the shards' totals."""
    tok_cfg = identity["tokenizer_config"]
    totals = shard_totals(states)
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "tokens",
        "producer": "pipelines.tokenize",
        "config": asdict(cfg),
        "data_dir": data_dir,
        "plan_digest": plan_digest,
        "tokenizer_digest": identity["tokenizer_digest"],
        "tokenizer": {
            "checkpoint": tokenizer_ckpt,
            "kind": identity["tokenizer_kind"],
            "digest": identity["tokenizer_digest"],
            "config": tok_cfg,
        },
        "commit": identity["commit"],  # None, or the task list + region parameters of cond_tokens.npy
        "codebook_size": tok_cfg["codebook_size"],
        "token_dtype": token_dtype(tok_cfg["codebook_size"]).name,
        "text_encoder": {"name": identity["text_encoder"], "digest": identity["text_encoder_digest"]},
        **totals,
    }
