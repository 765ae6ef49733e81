"""COMMIT training (MAGVIT sec. 3.2): `phenaki train-transformer` with `transformer.family: commit`.

The same trainer as MaskGIT's (`jobs.training.loop`; `jobs.training.families` sends `commit` here), on a
token cache made by `phenaki tokenize` with `tokenize.commit: true` and a MAGVIT-VQ tokenizer: each sample
holds z = f_T(V) and the nine condition-token rows z~ = f_T(V~) (`pipelines.commit_data`). Every step draws a
task per row (`task_sampling: row`, the default) or one for the whole batch (`step`, as the reference code
does; the paper: "we sample one of the tasks at each training step"), uniformly over the ten tasks or by
`transformer_train.task_weights`; cond_mask = ~ispad comes from the task's pixel mask at the cache's clip
shape and the tokenizer's stride (computed once per job), cg rows have no condition. `commit_training_step`
corrupts z by Eq. 2 and weighs the refine / mask / recons parts by `commit.loss_weights`.

Config sections: `transformer` (CommitTransformerConfig sizes + `family: commit` + `text: true|false`: text
cross-attention on the cache's embeddings), `transformer_train` (CommitTrainConfig), `commit` (CommitConfig:
loss weights, mask schedule, generation defaults). Codebook, sequence length and grid come from the cache and
the tokenizer. Class ids come from the captions (`transformer_train.class_keywords`, class i = the first
keyword starting a word of the caption; none: the null class), `transformer.num_classes` sizes the prefix.

Writes a self-contained serving checkpoint of kind "commit" to <out> (model.safetensors, config.yaml whose
extra holds num_frames, fps, text encoder, `commit` (generation defaults and condition geometry),
`class_names`, tokenizer digest and token grid; <out>/tokenizer/), plus <out>/metrics.jsonl and <out>/ray/.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.training.common import (
    TrainConfig,
    Worker,
    build_engine,
    clip_fps,
    engine_dtype,
)
from jobs.training.export import copy_tokenizer, export_serving
from jobs.training.loop import last_metrics, step_generator
from jobs.training.metrics import Throughput
from modeling.checkpoint import GenerationRecord, read_checkpoint_meta
from modeling.commit import TASKS, CommitConfig
from modeling.commit_model import CommitTransformer, CommitTransformerConfig, commit_training_step
from modeling.magvit_vq import MagvitVQConfig
from modeling.text_encoder import TextEncoderConfig
from modeling.tokenizers import check_tokenizer_for
from modeling.typed_config import build_dataclass

RUN_NAME = "transformer"
FAMILY = "commit"
TASK_SAMPLING = ("row", "step")
_GEOMETRY = ("fp_cond_frames", "fi_cond_frames", "pad_value")  # fixed by the cache's condition tokens


@dataclass
class CommitTrainConfig(TrainConfig):
    task_weights: dict[str, float] | None = (
        None  # task -> weight (unlisted tasks: 0); None: uniform over TASKS
    )
    task_sampling: str = "row"  # "row": a task per sample; "step": one per step (the reference)
    class_keywords: list[str] | None = None  # class i: first keyword starting a word of the caption
    class_drop_prob: float = 0.1  # class + text dropped together (classifier-free guidance)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task_sampling not in TASK_SAMPLING:
            raise ValueError(f"task_sampling must be one of {TASK_SAMPLING}, got {self.task_sampling!r}")
        task_probs(self.task_weights)  # validates

    def loader_config(self):
        from pipelines.commit_data import CommitLoaderConfig

        keywords = tuple(self.class_keywords) if self.class_keywords else None
        return CommitLoaderConfig(self.batch_size, self.seed, keywords, strict=self.strict_data)


def task_probs(weights: dict[str, float] | None) -> torch.Tensor:
    """(10,) sampling probabilities in TASKS order."""
    if weights is None:
        return torch.full((len(TASKS),), 1.0 / len(TASKS))
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"task_weights name unknown task(s) {unknown}; tasks: {list(TASKS)}")
    w = torch.tensor([float(weights.get(t, 0.0)) for t in TASKS], dtype=torch.float64)
    if not (torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(f"task_weights must be finite, >= 0 and not all 0, got {weights}")
    return (w / w.sum()).float()


@dataclass
class CommitJob:
    """A COMMIT training run (a `jobs.training.loop.TrainTask`)."""

    data: str | list[str]
    tokenizer: str
    model: CommitTransformerConfig
    train: CommitTrainConfig
    commit: CommitConfig
    clip_shape: tuple[int, int, int]  # (T, H, W) of the cache's clips
    record: GenerationRecord  # the checkpoint's `extra`: what generation needs, and provenance
    run_name = RUN_NAME
    # worker side, made by `setup`
    _loader: Any = field(default=None, init=False, repr=False)
    _masks: Any = field(default=None, init=False, repr=False)
    _probs: Any = field(default=None, init=False, repr=False)
    _worker: Any = field(default=None, init=False, repr=False)

    def run_config(self) -> dict:
        return {
            "data": self.data if isinstance(self.data, str) else list(self.data),
            "tokenizer": self.tokenizer,
            "transformer": {"family": FAMILY, **dataclasses.asdict(self.model)},
            "transformer_train": dataclasses.asdict(self.train),
            "commit": dataclasses.asdict(self.commit),
            "extra": self.record.to_extra(),
        }

    def setup(self, worker: Worker, out_dir: str) -> dict[str, Any]:
        from pipelines.commit_data import CommitBatches, task_token_masks

        self._worker = worker
        self._loader = CommitBatches(self.data, self.train.loader_config(), rank=worker.rank,
                                     world_size=worker.world_size)  # fmt: skip
        self._masks = task_token_masks(self.clip_shape, self.commit.tokenizer_stride, self.commit).to(
            worker.device
        )
        self._probs = task_probs(self.train.task_weights)
        return {
            "transformer": build_engine(lambda: CommitTransformer(self.model), self.train, worker.world_size)
        }

    def resume(self, state: dict | None) -> int:
        state = state or {"step": 0, "data_position": 0}
        self._loader.load_state({"position": int(state["data_position"])})
        return int(state["step"])

    def banner(self, step: int) -> str:
        m = self.model
        return (f"COMMIT: videos on rank 0 {self._loader.num_samples}, grid {m.grid}, codebook {m.codebook_size}, "
                f"classes {m.num_classes}, text {m.text_dim}, tasks per {self.train.task_sampling}, "
                f"start step {step}")  # fmt: skip

    def throughput(self, worker: Worker) -> Throughput:
        """Per-worker work of a step: the transformer over [task, class] + N visual tokens per video (counted
        on the meta device, `modeling.flops`), text cross-attention included for text models."""
        from modeling.flops import meta_forward_flops

        cfg, model_cfg = self.train, self.model
        n = model_cfg.seq_len
        text_len = self.record.max_text_length

        def forward(model: CommitTransformer) -> object:
            tokens = torch.zeros(1, n, dtype=torch.long)
            if model_cfg.text_dim is None:
                return model(tokens, "fp")
            text = torch.zeros(1, text_len, model_cfg.text_dim)
            return model(tokens, "fp", text=text, text_mask=torch.ones(1, text_len, dtype=torch.bool))

        samples = cfg.batch_size * cfg.grad_accum
        flops = samples * meta_forward_flops(lambda: CommitTransformer(model_cfg), forward)
        return Throughput.for_worker(worker, cfg, RUN_NAME, samples=samples, tokens=samples * n, flops=flops)

    def step(self, step: int, engines: dict[str, Any]) -> dict[str, float]:
        from pipelines.commit_data import select_condition

        cfg, worker, engine = self.train, self._worker, engines["transformer"]
        dtype = engine_dtype(engine)
        gen = step_generator(cfg.seed, worker.rank, 0xC0, step)  # tasks, masks and drops: pure in the step
        counts = torch.zeros(len(TASKS))
        for _ in range(cfg.grad_accum):
            batch = self._loader.next_batch()
            z = batch["tokens"].to(worker.device)
            tasks = sample_tasks(self._probs, z.shape[0], cfg.task_sampling, gen).to(worker.device)
            counts += torch.bincount(tasks.cpu(), minlength=len(TASKS)).float()
            z_cond, cond_mask = select_condition(batch["cond_tokens"].to(worker.device), tasks, self._masks)
            text = text_mask = None
            if self.model.text_dim is not None:
                text = batch["text"].to(worker.device, dtype)
                text_mask = batch["text_mask"].to(worker.device)
            loss, metrics = commit_training_step(
                engine,
                z,
                z_cond,
                cond_mask,
                tasks,
                batch["class_ids"].to(worker.device),
                cfg=self.commit,
                generator=gen,
                text=text,
                text_mask=text_mask,
                class_drop_prob=cfg.class_drop_prob,
            )
            engine.backward(loss)
            engine.step()
        metrics.update(loss=float(loss.detach()))
        metrics.update(
            {f"task_{t}": float(c) / float(counts.sum()) for t, c in zip(TASKS, counts, strict=True)}
        )
        return metrics

    def state(self, step: int) -> dict:
        return {"step": step, "data_position": self._loader.position}

    def export(self, engines: dict[str, Any], step: int, out_dir: str, worker: Worker) -> None:
        export_serving(engines["transformer"], lambda: CommitTransformer(self.model), self.model, out_dir, worker,
                       self.train.zero_stage, dataclasses.replace(self.record, step=step).to_extra())  # fmt: skip
        if worker.is_main:
            copy_tokenizer(self.tokenizer, str(Path(out_dir) / "tokenizer"))

    def result(self, out: Path) -> dict:
        return last_metrics(out)


def commit_model_config(
    section: dict | None, codebook_size: int, grid: tuple[int, int, int], text_dim: int
) -> CommitTransformerConfig:
    """A `transformer` section (`family: commit`, `text: true|false`, sizes) + the tokenizer's codebook and token
    grid (t, h, w) + the text width (used only with `text: true`) -> the model's config."""
    values = {k: v for k, v in (section or {}).items() if k != "family"}
    text = bool(values.pop("text", False))
    t, h, w = grid
    sizes = {
        "codebook_size": codebook_size,
        "seq_len": t * h * w,
        "grid": (t, h, w),
        "text_dim": text_dim if text else None,
    }
    return build_dataclass(CommitTransformerConfig, {**values, **sizes})


def section_builders(config: dict) -> dict[str, Callable[[], Any]]:
    """How to type this family's sections before any data exists (`jobs.config_tree.check_config`); the
    sizes that come from the tokenizer and the token cache at train time keep their defaults here."""
    model = {k: v for k, v in (config.get("transformer") or {}).items() if k not in ("family", "text")}
    return {
        "transformer": lambda: build_dataclass(CommitTransformerConfig, model),
        "transformer_train": lambda: build_dataclass(CommitTrainConfig, config.get("transformer_train")),
        "commit": lambda: build_dataclass(CommitConfig, config.get("commit")),
    }


def job_from_config(config: dict, data: str | list[str], tokenizer: str) -> CommitJob:
    """Sizes from the MAGVIT tokenizer checkpoint and the COMMIT token cache(s)."""
    from pipelines.commit_data import commit_config_from_record
    from pipelines.loaders import check_tokenizer_digest, split_cache_dirs, token_cache_info
    from pipelines.shards import read_manifest

    tokenizer = str(Path(tokenizer).resolve())  # workers run in another directory than this driver
    dirs = split_cache_dirs(data)
    data = dirs[0] if len(dirs) == 1 else dirs
    meta = read_checkpoint_meta(tokenizer)
    check_tokenizer_for("commit", meta.get("kind"), tokenizer)
    tok = build_dataclass(MagvitVQConfig, meta["config"])
    train = build_dataclass(CommitTrainConfig, config.get("transformer_train"))
    info = token_cache_info(data, strict=train.strict_data)
    check_tokenizer_digest(data, info.tokenizer_digest, tokenizer)
    records = {d: read_manifest(d).get("commit") for d in dirs}
    if not all(records.values()):
        raise ValueError(
            f"token cache(s) {[d for d, r in records.items() if not r]} hold no condition tokens: re-run "
            "`phenaki tokenize` with tokenize.commit=true"
        )
    t, h, w = info.token_grid
    if (h, w) != (tok.grid, tok.grid):
        raise ValueError(
            f"token cache {data} has a {h}x{w} grid, tokenizer {tokenizer} {tok.grid}x{tok.grid}"
        )
    model = commit_model_config(config.get("transformer"), tok.codebook_size, (t, h, w), info.text_dim)
    if train.class_keywords and len(train.class_keywords) > model.num_classes:
        raise ValueError(
            f"{len(train.class_keywords)} class_keywords but transformer.num_classes={model.num_classes}"
        )
    if len({json.dumps(r, sort_keys=True) for r in records.values()}) > 1:
        raise ValueError(f"token caches record different COMMIT condition parameters: {records}")
    record = next(iter(records.values()))
    commit_config_from_record(record)  # the cache holds the nine tasks' rows in our order
    values = dict(config.get("commit") or {})
    clash = {k: v for k, v in values.items() if k in _GEOMETRY and v != record[k]}
    if clash:
        raise ValueError(f"commit {clash} differs from the cache's condition tokens ({record}): re-tokenize")
    stride = (tok.temporal_compression, tok.spatial_compression, tok.spatial_compression)
    commit = dataclasses.replace(
        build_dataclass(CommitConfig, values),
        codebook_size=tok.codebook_size,
        num_classes=model.num_classes,
        tokenizer_stride=stride,
        **{k: record[k] for k in _GEOMETRY},
    )
    text_cfg = build_dataclass(TextEncoderConfig, config.get("text_encoder"))
    record = GenerationRecord(
        num_frames=t * tok.temporal_compression,
        fps=clip_fps(meta, config),
        text_encoder=info.text_encoder or text_cfg.name,
        max_text_length=int(info.max_text_length or text_cfg.max_length),
        commit=dataclasses.asdict(commit),  # generation defaults + condition geometry
        class_names=tuple(train.class_keywords or ()),
        tokenizer_digest=info.tokenizer_digest,
        token_grid=(t, h, w),
        data=data if isinstance(data, str) else tuple(data),
    )
    clip_shape = (t * tok.temporal_compression, h * tok.spatial_compression, w * tok.spatial_compression)
    return CommitJob(data, tokenizer, model, train, commit, clip_shape, record)


def sample_tasks(probs: torch.Tensor, batch: int, per: str, generator: torch.Generator) -> torch.Tensor:
    """(B,) task ids in TASKS order: one per row, or one repeated for the batch."""
    if per == "step":
        return torch.multinomial(probs, 1, generator=generator).expand(batch).clone()
    return torch.multinomial(probs, batch, replacement=True, generator=generator)
