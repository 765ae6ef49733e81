"""Ray Train + DeepSpeed glue under the one trainer (`jobs.training.loop`) and its model families.

Driver side: `launch` builds a `TorchTrainer` (Ray Train V2) whose storage lives under `<out>/ray/<run>`, so
re-running a job with the same --out resumes from its last reported checkpoint, and `FailureConfig` restarts a
failed worker group from it. Resumes are exact: a checkpoint holds the step, the data position and every
rank's RNG states (DeepSpeed client state), and is committed before training goes on
(`jobs.training.checkpointing`). Worker side: the helpers below wrap a plain `nn.Module` in a DeepSpeed engine
(`modeling/` never sees DeepSpeed), set the learning rate from the pure schedule and reduce metrics over ranks
(the serving export is `jobs.training.export`).

DeepSpeed is imported inside worker functions only: the driver and `modeling/` never need it, and the
import is slow and pulls in accelerator probing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from jobs.runtime import WORKER_ENV, init_ray, log
from modeling.lr_schedule import warmup_cosine


@dataclass
class TrainConfig:
    """Optimisation and run settings common to both trainers (defaults: Phenaki tables 6-7)."""

    steps: int = 1000  # optimizer steps
    peak_lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 10.0
    batch_size: int = 8  # per worker micro batch (tokenizer: videos; transformer: mixed samples)
    grad_accum: int = 1
    zero_stage: int = 2  # 0-3
    precision: str = "fp32"  # "fp32" | "bf16" (DeepSpeed refuses fp16 on CPU)
    num_workers: int = 2
    # Elastic range: with min_workers set, Ray Train V2 starts with as many workers as the cluster fits
    # between min_workers and num_workers, and after a failure restarts on what is left (resuming through a
    # universal checkpoint when the count changed). None: exactly num_workers.
    min_workers: int | None = None
    use_gpu: bool | None = None  # None: use GPUs when the cluster has one per worker
    checkpoint_every: int = 500  # steps between resumable checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # Ray Train keeps the last N (CheckpointConfig.num_to_keep, at least 1)
    max_failures: int = 1  # worker-group restarts (from the last checkpoint) before giving up
    log_every: int = 10
    seed: int = 0
    time_budget_s: float | None = None  # stop early after this long (still checkpoints and exports)
    record_samples: bool = False  # per-step {step, rank, loss, sample_ids, ...} in <out>/steps-rank{r}.jsonl
    activation_checkpointing: bool = (
        False  # recompute block activations in backward (less memory, ~+33% FLOPs)
    )
    storage_path: str | None = (
        None  # Ray Train storage (checkpoints): default <out>/ray; gs://bucket/prefix too
    )
    peak_tflops: float | None = (
        None  # per-worker peak for MFU (default: GPU datasheet, or a CPU matmul probe)
    )
    strict_data: bool = False  # a damaged shard (or undecodable clip) raises instead of a counted skip
    # Fault drills (jobs.training.faults): one worker exits at step N ("step": after it, "save": inside its
    # checkpoint save) on the first `fail_times` attempts; `nan_at_step` makes step N's loss NaN.
    fail_at_step: int | None = None
    fail_in: str = "step"
    fail_times: int = 1
    nan_at_step: int | None = None

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(
                f"precision must be 'fp32' or 'bf16' (fp16 is refused on CPU), got {self.precision!r}"
            )
        if self.steps < 0 or self.batch_size < 1 or self.grad_accum < 1 or self.num_workers < 1:
            raise ValueError("steps >= 0, batch_size >= 1, grad_accum >= 1 and num_workers >= 1 are required")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ValueError(
                f"min_workers must be in 1..num_workers={self.num_workers}, got {self.min_workers}"
            )
        for name in ("fail_at_step", "nan_at_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a step >= 1 (or None), got {getattr(self, name)}")
        if self.fail_in not in ("step", "save") or self.fail_times < 1:
            raise ValueError(f"fail_in must be 'step' or 'save' and fail_times >= 1, got {self.fail_in!r}, "
                             f"{self.fail_times}")  # fmt: skip
        if self.fail_in == "save" and self.fail_at_step is not None and not self._saves_at(self.fail_at_step):
            raise ValueError(
                f"fail_in='save' needs fail_at_step on a checkpoint step (a multiple of checkpoint_every="
                f"{self.checkpoint_every}, or steps={self.steps}), got {self.fail_at_step}"
            )

    def _saves_at(self, step: int) -> bool:
        return step == self.steps or bool(self.checkpoint_every and step % self.checkpoint_every == 0)


# --------------------------------------------------------------------------------------------- driver
def deepspeed_config(
    cfg: TrainConfig, world: int, *, zero_stage: int | None = None, backwards_per_step: int = 1
) -> dict:
    """The DeepSpeed config for `world` data-parallel workers.

    The optimizer is DeepSpeed-built torch AdamW (`torch_adam`): FusedAdam needs CUDA and a JIT build, and
    torch's AdamW is what every backend has. The learning rate in it is overwritten each step by
    `set_lr` from the pure schedule, so there is no scheduler state to checkpoint.

    `backwards_per_step`: forward/backward pairs per micro batch. ZeRO-3 cannot run two forwards of one
    module before a backward, so a step with a video and an image batch is two DeepSpeed micro steps.
    """
    stage = cfg.zero_stage if zero_stage is None else zero_stage
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum * backwards_per_step,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * backwards_per_step * world,
        "gradient_clipping": cfg.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": cfg.peak_lr,
                "betas": list(cfg.betas),
                "eps": 1e-8,
                "weight_decay": cfg.weight_decay,
                "torch_adam": True,
            },
        },
        "zero_optimization": {"stage": stage},
        # bf16: skip a step whose gradients are not finite (fp32 ZeRO-1..3 already does when clipping is on;
        # jobs.training.faults).
        "bf16": {"enabled": cfg.precision == "bf16", "check_grad_overflow": True},
        "steps_per_print": 2**31 - 1,  # we log ourselves
        "wall_clock_breakdown": False,
    }


def resolve_use_gpu(cfg: TrainConfig) -> bool:
    if cfg.use_gpu is not None:
        return bool(cfg.use_gpu)
    import ray

    return ray.cluster_resources().get("GPU", 0) >= (cfg.min_workers or cfg.num_workers)


def launch(
    train_loop: Callable[[dict], None], loop_config: dict, cfg: TrainConfig, out_dir: str, run_name: str
):
    """Run `train_loop(loop_config)` on `cfg.num_workers` Ray Train workers; returns the `ray.train.Result`.

    Storage is `<storage>/<run_name>`, `<storage>` being `cfg.storage_path` (a local path or an fsspec URL
    such as gs://bucket/prefix) or `<abs out_dir>/ray`: a second launch with the same storage and name
    resumes from the latest checkpoint there (Ray Train V2 restores its checkpoint manager from storage).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.training.metrics import METRICS_FILE
    from jobs.training.progress import PROGRESS_ENV, ProgressFollower, on_terminal, progress_mode
    from pipelines.prepare import storage_env  # emulator / credential variables, for gs:// storage

    init_ray()  # no-op when already connected
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = resolve_use_gpu(cfg)
    terminal = on_terminal()
    progress = progress_mode(terminal, terminal and cluster_is_this_machine(), os.environ.get(PROGRESS_ENV))
    storage_path, storage_filesystem = run_storage(cfg.storage_path, out)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, "out_dir": str(out), "use_gpu": use_gpu},
        scaling_config=ScalingConfig(num_workers=worker_range(cfg), use_gpu=use_gpu),
        run_config=RunConfig(
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            name=run_name,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(cfg.keep_checkpoints, 1)),
            worker_runtime_env={"env_vars": {**WORKER_ENV, **storage_env(), PROGRESS_ENV: progress}},
        ),
    )
    # The workers take a while before their first line (each imports PyTorch and DeepSpeed; a new machine also
    # builds DeepSpeed's CPU comm op once, ~70 s): say so, so the silence does not read as a hang.
    log.info(
        "[%s] starting %d Ray Train worker(s) with DeepSpeed ZeRO-%d; the first step follows in ~30 s (~100 s on a "
        "machine's first run), checkpoints and metrics go to %s", run_name, cfg.num_workers, cfg.zero_stage, out,
    )  # fmt: skip
    if progress != "bar":
        return trainer.fit()
    with ProgressFollower(out / METRICS_FILE, cfg.steps, run_name, cfg.time_budget_s):
        return trainer.fit()


def worker_range(cfg: TrainConfig) -> int | tuple[int, int]:
    """ScalingConfig's num_workers: a fixed count, or (min, max) for an elastic group."""
    return cfg.num_workers if cfg.min_workers is None else (cfg.min_workers, cfg.num_workers)


def cluster_is_this_machine() -> bool:
    """Whether every live Ray node runs on this machine (so rank 0's files are the driver's files)."""
    import ray

    here = ray.util.get_node_ip_address()
    return all(n["NodeManagerAddress"] == here for n in ray.nodes() if n["Alive"])


def run_storage(storage: str | None, out: Path) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig.

    Local paths are made absolute (workers on other nodes see a shared mount under the same path). A URL
    (gs://, s3://, ...) goes through fsspec, wrapped for pyarrow, with the storage options the data pipeline
    uses (`pipelines.fetch.storage_options_for`): checkpoints reach the same buckets with the same
    credentials (and the same emulator in tests) as the shards. Ray then takes the path without its scheme.
    """
    from pipelines.fetch import storage_options_for, url_scheme

    if not storage:
        return str(out / "ray"), None
    if url_scheme(storage) in ("", "file"):
        return str(Path(storage.removeprefix("file://")).resolve()), None
    import fsspec
    import pyarrow.fs

    options = storage_options_for(storage)
    if options and os.environ.get("STORAGE_EMULATOR_HOST"):
        # Ray pickles the filesystem into its controller, whose environment may lack the emulator variable:
        # bind the endpoint into the instance (fsspec pickles a filesystem as its constructor arguments).
        options["endpoint_url"] = os.environ["STORAGE_EMULATOR_HOST"]
    fs, path = fsspec.core.url_to_fs(storage, **options)
    return path.rstrip("/"), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


# --------------------------------------------------------------------------------------------- worker
def worker_print(message: str) -> None:
    """One console line from a Ray Train worker.

    Ray Train V2 patches `print` in workers to log through its logger *and* tee to the wrapped stdout, so a
    plain print shows up twice on the driver; a write to the process's real stdout is forwarded once.
    """
    print(message, file=sys.__stdout__, flush=True)


@dataclass
class Worker:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_worker(cfg: TrainConfig) -> Worker:
    """Per-worker setup: threads sized to the cores this worker shares, the torch device, seeds."""
    import ray.train
    import ray.train.torch

    os.environ.update(WORKER_ENV)  # for subprocesses; this process got it from the runtime env
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(ctx.get_local_world_size(), 1)))
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DeepSpeed also broadcasts)
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), device)


def build_engine(
    model: nn.Module | Callable[[], nn.Module],
    cfg: TrainConfig,
    world: int,
    *,
    zero_stage: int | None = None,
    backwards_per_step: int = 1,
):
    """Wrap a plain module in a DeepSpeed engine with our AdamW and ZeRO stage.

    Pass a builder (`lambda: MaskGIT(cfg)`) rather than a module so that under ZeRO-3 the model is
    constructed inside `deepspeed.zero.Init`: each parameter is partitioned across ranks as soon as its
    module is built, so no rank ever holds the whole model (the 1.8B preset is 7.4 GB in fp32). Every rank
    draws the same initial values (same seed, `setup_worker`) and keeps its own slice.
    `cfg.activation_checkpointing` switches on recomputation in the model's checkpointable blocks.
    """
    import deepspeed

    from modeling.activation_checkpointing import set_activation_checkpointing

    stage = cfg.zero_stage if zero_stage is None else zero_stage
    config = deepspeed_config(cfg, world, zero_stage=stage, backwards_per_step=backwards_per_step)
    if not isinstance(model, nn.Module):
        model = construct_model(model, config)
    set_activation_checkpointing(model, cfg.activation_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine


def construct_model(build: Callable[[], nn.Module], ds_config: dict) -> nn.Module:
    """`build()`, inside `deepspeed.zero.Init` when `ds_config` is ZeRO-3 (a collective then: all ranks call).

    zero.Init partitions each module's parameters right after that module's `__init__`, so the largest
    thing ever whole on a rank is one layer; each parameter then holds `ds_tensor`, this rank's slice, and
    an empty `data` until a forward gathers it."""
    if ds_config["zero_optimization"]["stage"] != 3:
        return build()
    import deepspeed

    if not deepspeed.comm.is_initialized():  # zero.Init sizes partitions by DeepSpeed's view of the world
        deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else None)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        return build()


def engine_dtype(engine) -> torch.dtype:
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def schedule_lr(cfg: TrainConfig, step: int) -> float:
    return warmup_cosine(
        step,
        peak_lr=cfg.peak_lr,
        warmup_steps=cfg.warmup_steps,
        total_steps=cfg.steps,
        min_ratio=cfg.min_lr_ratio,
    )


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def reduce_metrics(metrics: dict[str, float], stop: bool, worker: Worker) -> tuple[dict[str, float], bool]:
    """Average metrics over ranks and OR the stop flags, in one small all-reduce.

    Every rank must pass the same metric names: the reduced vector is built in sorted-name order.
    """
    names = sorted(metrics)
    if worker.world_size == 1 or not dist.is_initialized():
        return {k: float(metrics[k]) for k in names}, stop
    vec = torch.tensor([float(metrics[k]) for k in names] + [1.0 if stop else 0.0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        vec = vec.to(worker.device)
    dist.all_reduce(vec)
    vec = vec.cpu()
    values = (vec[:-1] / worker.world_size).tolist()
    return dict(zip(names, values, strict=True)), bool(vec[-1] > 0)


def clip_fps(tokenizer_meta: dict, config: dict) -> float:
    """Frame rate of the training clips: recorded by train-tokenizer, else the prepare config's."""
    fps = (tokenizer_meta.get("extra") or {}).get("fps") or (config.get("prepare") or {}).get("fps")
    if not fps:
        raise ValueError(
            "unknown clip frame rate: the tokenizer checkpoint has no extra.fps; set prepare.fps"
        )
    return float(fps)
