"""The MaskGIT family's training task (`phenaki train-transformer`, `jobs.train_transformer`).

MVTM loss (Phenaki sec. 2.2): cosine mask schedule, text dropped 10% of the time (classifier-free guidance),
images and videos mixed at `video_fraction` (an image scores only its first h_z*w_z tokens). The model's
codebook size, sequence length and tokens per frame come from the tokenizer checkpoint and the cache, the
text width from the cache's embeddings, so the `transformer` section only sizes the network. The step loop,
resume and checkpoints are `jobs.training.loop`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.training.common import (
    TrainConfig,
    Worker,
    build_engine,
    clip_fps,
    engine_dtype,
)
from jobs.training.export import copy_tokenizer, export_serving
from jobs.training.loop import last_metrics, step_generator
from jobs.training.metrics import StepRecords, Throughput
from modeling.checkpoint import GenerationRecord, read_checkpoint_meta
from modeling.maskgit import MaskGIT, MaskGITConfig, code_sizes
from modeling.masking import LOSS_NORMALIZATIONS, SCHEDULES, mvtm_loss
from modeling.text_encoder import TextEncoderConfig
from modeling.tokenizers import check_tokenizer_for
from modeling.typed_config import build_dataclass

RUN_NAME = "transformer"


@dataclass
class TransformerTrainConfig(TrainConfig):
    video_fraction: float = 0.8  # paper: 80% videos, 20% images (mix="kind")
    mix: str = "kind"  # "kind": videos vs images at video_fraction; "source": by source weight
    source_weights: dict[str, float] | None = None  # mix="source": source name -> weight (else as prepared)
    text_drop_prob: float = 0.1  # classifier-free guidance training
    mask_schedule: str = "cosine"
    loss_normalization: str = "sample"  # "sample": each sample weighs the same; "token": MaskGIT's mean

    def __post_init__(self) -> None:
        super().__post_init__()
        # Checked here, when the config is built on the driver, not on the workers after the cluster started.
        self.loader_config()
        if not 0.0 <= self.text_drop_prob <= 1.0:
            raise ValueError(f"transformer_train.text_drop_prob must be in [0, 1], got {self.text_drop_prob}")
        if self.mask_schedule not in SCHEDULES:
            raise ValueError(
                f"transformer_train.mask_schedule must be one of {sorted(SCHEDULES)}, got {self.mask_schedule!r}"
            )
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(
                f"transformer_train.loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}"
            )

    def loader_config(self):
        """The token loader's settings, derived from these (not restated)."""
        from pipelines.loaders import TokenLoaderConfig

        return TokenLoaderConfig(
            batch_size=self.batch_size, video_fraction=self.video_fraction, seed=self.seed, mix=self.mix,
            weights=self.source_weights, strict=self.strict_data,
        )  # fmt: skip


@dataclass
class TransformerJob:
    """A MaskGIT training run (a `jobs.training.loop.TrainTask`)."""

    data: str | list[str]  # one token cache, or several trained on together
    tokenizer: str
    model: MaskGITConfig
    train: TransformerTrainConfig
    record: GenerationRecord  # the checkpoint's `extra`: what generation needs, and provenance
    run_name = RUN_NAME
    # worker side, made by `setup`
    _loader: Any = field(default=None, init=False, repr=False)
    _records: Any = field(default=None, init=False, repr=False)
    _worker: Any = field(default=None, init=False, repr=False)

    def run_config(self) -> dict:
        return {
            "data": self.data if isinstance(self.data, str) else list(self.data),  # no YAML alias
            "tokenizer": self.tokenizer,
            "transformer": dataclasses.asdict(self.model),
            "transformer_train": dataclasses.asdict(self.train),
            "extra": self.record.to_extra(),
        }

    def setup(self, worker: Worker, out_dir: str) -> dict[str, Any]:
        from pipelines.loaders import TokenBatches

        cfg = self.train
        self._worker = worker
        self._loader = TokenBatches(
            self.data,
            cfg.loader_config(),
            rank=worker.rank,
            world_size=worker.world_size,
            seq_len=self.model.seq_len,
        )
        self._records = StepRecords(out_dir, worker, cfg.record_samples, restored_from=0)
        return {"transformer": build_engine(lambda: MaskGIT(self.model), cfg, worker.world_size)}

    def resume(self, state: dict | None) -> int:
        state = state or {"step": 0, "data_position": 0}
        self._loader.load_state({"position": int(state["data_position"])})
        self._records.restored_from = int(state["step"])
        return int(state["step"])

    def banner(self, step: int) -> str:
        return (f"samples on rank 0 {self._loader.num_samples}, seq_len {self.model.seq_len}, "
                f"codebook {self.model.codebook_size}, start step {step}")  # fmt: skip

    def throughput(self, worker: Worker) -> Throughput:
        """Per-worker work of a step: every sample (video, or image padded to the video length) runs the full
        sequence against the cache's text length (`modeling.flops.maskgit_forward_flops`)."""
        from modeling.flops import maskgit_forward_flops

        cfg = self.train
        samples = cfg.batch_size * cfg.grad_accum
        flops = samples * maskgit_forward_flops(self.model, text_len=self.record.max_text_length)
        return Throughput.for_worker(worker, cfg, RUN_NAME, samples=samples, tokens=samples * self.model.seq_len,
                                     flops=flops)  # fmt: skip

    def step(self, step: int, engines: dict[str, Any]) -> dict[str, float]:
        cfg, worker, loader, engine = self.train, self._worker, self._loader, engines["transformer"]
        dtype = engine_dtype(engine)
        # Mask and text-drop randomness as a pure function of (seed, rank, step): resumes need no RNG state.
        gen = step_generator(cfg.seed, worker.rank, step)
        sample_ids: list[str] = []
        losses: list[float] = []
        for _ in range(cfg.grad_accum):
            batch = loader.next_batch()
            sample_ids.extend(loader.last_keys)
            loss, metrics = mvtm_loss(
                engine,
                batch["tokens"].to(worker.device),
                batch["text"].to(worker.device, dtype),
                batch["text_mask"].to(worker.device),
                batch["num_scored"].to(worker.device),
                generator=gen,
                text_drop_prob=cfg.text_drop_prob,
                schedule=cfg.mask_schedule,
                normalization=cfg.loss_normalization,
            )
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        self._records.write(step + 1, sum(losses) / len(losses), sample_ids)
        return {**metrics, "loss": losses[-1], "image_fraction": float(batch["is_image"].float().mean())}

    def state(self, step: int) -> dict:
        return {"step": step, "data_position": self._loader.position}

    def export(self, engines: dict[str, Any], step: int, out_dir: str, worker: Worker) -> None:
        export_serving(engines["transformer"], lambda: MaskGIT(self.model), self.model, out_dir, worker,
                       self.train.zero_stage, dataclasses.replace(self.record, step=step).to_extra())  # fmt: skip
        if worker.is_main:
            copy_tokenizer(self.tokenizer, str(Path(out_dir) / "tokenizer"))

    def result(self, out: Path) -> dict:
        return last_metrics(out)


def section_builders(config: dict) -> dict[str, Callable[[], Any]]:
    """How to type this family's sections before any data exists (`jobs.config_tree.check_config`): codebook
    and sequence sizes come from the tokenizer and the token cache at train time, so defaults stand in."""
    model = {k: v for k, v in (config.get("transformer") or {}).items() if k != "family"}
    return {
        "transformer": lambda: build_dataclass(MaskGITConfig, model),
        "transformer_train": lambda: build_dataclass(TransformerTrainConfig, config.get("transformer_train")),
    }


def job_from_config(config: dict, data: str | list[str], tokenizer: str) -> TransformerJob:
    """Fill the model's data-dependent sizes from the tokenizer checkpoint and the token cache(s)."""
    from pipelines.loaders import check_tokenizer_digest, split_cache_dirs, token_cache_info

    section = {k: v for k, v in (config.get("transformer") or {}).items() if k != "family"}
    config = {**config, "transformer": section}  # `family: maskgit` is the default

    tokenizer = str(Path(tokenizer).resolve())  # workers run in another directory than this driver
    dirs = split_cache_dirs(data)  # a list, or comma-separated
    data = dirs[0] if len(dirs) == 1 else dirs

    meta = read_checkpoint_meta(tokenizer)
    check_tokenizer_for("maskgit", meta.get("kind"), tokenizer)
    tok = meta["config"]
    grid = tok["image_size"] // tok["patch_size"]
    train = build_dataclass(TransformerTrainConfig, config.get("transformer_train"))
    info = token_cache_info(data, strict=train.strict_data)
    check_tokenizer_digest(data, info.tokenizer_digest, tokenizer)  # fail on the driver, before any worker
    if info.frame_tokens != grid * grid:
        raise ValueError(
            f"token cache {data} has {info.frame_tokens} tokens per frame, tokenizer {tokenizer} {grid}x{grid}"
        )
    sizes = {
        **code_sizes(tok, section),
        "seq_len": info.seq_len,
        "tokens_per_frame": info.frame_tokens,
        "text_dim": info.text_dim,
    }
    model = build_dataclass(MaskGITConfig, {**(config.get("transformer") or {}), **sizes})
    latent_frames = info.seq_len // info.frame_tokens
    text_cfg = build_dataclass(TextEncoderConfig, config.get("text_encoder"))
    record = GenerationRecord(
        num_frames=1 + (latent_frames - 1) * int(tok["temporal_patch_size"]),
        fps=clip_fps(meta, config),
        text_encoder=info.text_encoder or text_cfg.name,
        max_text_length=int(info.max_text_length or text_cfg.max_length),
        sampling=dict(config.get("sampling") or {}),
        tokenizer_digest=info.tokenizer_digest,
        token_grid=(latent_frames, grid, grid),
        data=data if isinstance(data, str) else tuple(data),
    )
    return TransformerJob(
        data,
        tokenizer,
        model,
        train,
        record,
    )
