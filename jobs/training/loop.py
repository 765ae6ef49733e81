"""One trainer for every model family: Ray Train workers, DeepSpeed engines, exact resume, the step loop,
metrics and checkpoints, the serving export.

A family brings a `TrainTask` (`jobs.training.tokenizer.TokenizerJob`,
`jobs.training.transformer.TransformerJob`, `jobs.training.commit.CommitJob`): what to build on a worker, one optimizer step, what a checkpoint carries
beside the engines and what to export. Everything else is here, once: `train` writes the run's config and
launches the workers (`jobs.training.common.launch`: storage, failure restarts, the progress bar); on each
worker `train_loop` restores the latest checkpoint (engines, train state, RNG states), sets the learning
rate from the pure schedule, runs the task's steps and hands each to `StepTail`, which averages metrics over
ranks, adds throughput and MFU, logs, runs the fault drill and checkpoints on its cadence or when the time
budget runs out.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from jobs.runtime import log
from jobs.training.checkpointing import restore, save_and_report
from jobs.training.common import (
    TrainConfig,
    Worker,
    launch,
    reduce_metrics,
    schedule_lr,
    set_lr,
    setup_worker,
    worker_print,
)
from jobs.training.faults import (
    StepGuard,
    clear_halt,
    maybe_inject_fault,
    maybe_poison_loss,
    raise_if_halted,
    write_halt,
)
from jobs.training.metrics import MetricsLog, StepClock, Throughput


class TrainTask(Protocol):
    """A model family's part of a training run. The driver pickles the task to every worker, where `setup`
    runs first; the worker-side state it creates (loaders, frozen networks) lives on that worker's copy."""

    run_name: str  # the Ray Train run (storage <out>/ray/<run_name>) and the log prefix
    train: TrainConfig  # steps, learning-rate schedule, batch, ZeRO stage, workers, budgets

    def run_config(self) -> dict:
        """What `<out>/run_config.yaml` records (driver side)."""
        ...

    def setup(self, worker: Worker, out_dir: str) -> dict[str, Any]:
        """Build loaders and models on this worker; returns the DeepSpeed engines by checkpoint name."""
        ...

    def resume(self, state: dict | None) -> int:
        """Take the restored train state (None: a fresh run) and return the step to start from."""
        ...

    def banner(self, step: int) -> str:
        """One line about the run, printed by rank 0 before the first step."""
        ...

    def throughput(self, worker: Worker) -> Throughput:
        """Samples, tokens and FLOPs per optimizer step on this worker (throughput and MFU)."""
        ...

    def step(self, step: int, engines: dict[str, Any]) -> dict[str, float]:
        """Optimizer step `step` (0-based; every `grad_accum` micro step); returns this rank's metrics, the
        same names on every rank."""
        ...

    def state(self, step: int) -> dict:
        """What a checkpoint after `step` steps carries beside the engines (step, data position, ...)."""
        ...

    def export(self, engines: dict[str, Any], step: int, out_dir: str, worker: Worker) -> None:
        """Write the serving checkpoint (every rank: ZeRO-3 gathers) and anything the family adds."""
        ...

    def result(self, out: Path) -> dict:
        """What `train` returns, read from the finished run's directory (driver side)."""
        ...


@dataclass
class StepTail:
    """The end of every optimizer step: metrics, the non-finite guard, fault drills, checkpoints, the time
    budget."""

    cfg: TrainConfig
    worker: Worker
    engines: dict[str, Any]
    log: MetricsLog
    throughput: Throughput
    out_dir: str
    start_step: int  # the step the run (re)starts from: already checkpointed
    clock: StepClock = field(init=False)
    last_saved: int = field(init=False)
    guard: StepGuard = field(init=False)

    def __post_init__(self) -> None:
        self.clock = StepClock(self.cfg.time_budget_s)  # the budget counts from the first step
        self.last_saved = self.start_step
        self.guard = StepGuard(self.engines)

    def after_step(self, step: int, lr: float, metrics: dict[str, float], state: dict) -> bool:
        """Log step `step` and checkpoint `state` when due; True when the run must stop (time budget, or the
        non-finite guard halted it: `halted`).

        A collective: every rank calls it with the same metric names."""
        cfg = self.cfg
        dt = self.clock.lap()
        metrics, stop = reduce_metrics(metrics, self.clock.over_budget(), self.worker)
        metrics.update(lr=lr, **self.throughput.metrics(dt), **self.guard.check_step(step, metrics))
        self.log.write(step, metrics)
        if self.halted:
            return True
        maybe_inject_fault(cfg, step, self.out_dir, self.worker)
        due = stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps)
        if due and not self.save(step, state, metrics):
            return True
        if stop and self.worker.is_main:
            worker_print(f"[{self.log.run}] time budget {cfg.time_budget_s}s reached at step {step}")
        return stop

    @property
    def halted(self) -> str | None:
        return self.guard.halted

    def save(self, step: int, state: dict, metrics: dict) -> bool:
        """Checkpoint step `step` unless a weight is non-finite (then nothing is saved; returns False)."""
        if not self.guard.check_before_save(step, self.worker.device):
            return False
        drill = functools.partial(maybe_inject_fault, self.cfg, step, self.out_dir, self.worker, where="save")
        save_and_report(self.engines, state, metrics, self.worker, fault_drill=drill)
        self.last_saved = step
        return True

    def finish(self, step: int, state: dict) -> None:
        """The final checkpoint (unless step `step` was just saved, or the run is halted) and the log's last
        flush; a halted run leaves `<out>/halted.json` for the driver."""
        if not self.halted and (step != self.last_saved or step == 0):
            self.save(step, state, {"step": step})
        self.log.close()
        if self.halted and self.worker.is_main:
            write_halt(self.out_dir, self.halted, self.last_saved)
            worker_print(f"[{self.log.run}] halted at {self.halted}; last checkpoint: step {self.last_saved}")


def step_generator(*keys: int) -> torch.Generator:
    """A generator seeded by a pure function of `keys` (e.g. seed, rank, step): a step's masks, tasks and
    drops are the same after a resume without saving any RNG state."""
    value = int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(value)


def train_loop(config: dict) -> None:
    """The Ray Train worker function: `config["task"]` trained to its `train.steps` (or time budget)."""
    import deepspeed  # noqa: F401  (imported here, in the worker, never in the driver or modeling/)

    task: TrainTask = config["task"]
    cfg, out_dir = task.train, config["out_dir"]
    worker = setup_worker(cfg)
    engines = task.setup(worker, out_dir)
    step = task.resume(restore(engines))  # restore also reinstates this rank's RNG states
    log = MetricsLog(out_dir, worker, cfg.log_every, cfg.steps, task.run_name)
    if worker.is_main:
        worker_print(f"[{task.run_name}] {task.banner(step)}")
    tail = StepTail(cfg, worker, engines, log, task.throughput(worker), out_dir, start_step=step)
    while step < cfg.steps:
        lr = schedule_lr(cfg, step)
        for engine in engines.values():
            set_lr(engine, lr)
        with maybe_poison_loss(cfg, step, engines):
            metrics = task.step(step, engines)
        step += 1
        if tail.after_step(step, lr, metrics, task.state(step)):
            break
    tail.finish(step, task.state(step))
    if not tail.halted:  # a halted run saves and exports nothing past its last finite checkpoint
        task.export(engines, step, out_dir, worker)


def train(task: TrainTask, out_dir: str) -> dict:
    """Run `task` on Ray Train into `out_dir` (a rerun with the same `out_dir` resumes); returns
    `task.result`. Raises the workers' error when the run fails after its restarts."""
    # Import the loop under its module name, so Ray pickles it by reference even under `python -m`.
    from jobs.training.loop import train_loop as loop

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.yaml").write_text(yaml.safe_dump(task.run_config(), sort_keys=False))
    clear_halt(out)  # a rerun after a halt resumes from the last finite checkpoint
    from ray.train import TrainingFailedError

    try:
        result = launch(loop, {"task": task}, task.train, str(out), task.run_name)
        if result.error is not None:
            raise result.error
    except TrainingFailedError as error:  # Ray Train V2 raises from fit() once the failure budget is spent
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.error(
            "[%s] FAILED: the worker group failed more often than max_failures=%d allows; the last checkpoint "
            "stays in %s and a rerun with the same --out resumes from it. Last error: %s",
            task.run_name, task.train.max_failures, out, first_line,
        )  # fmt: skip
        raise
    raise_if_halted(out)
    return task.result(out)


def last_metrics(out: Path) -> dict:
    """The last line of a finished run's `<out>/metrics.jsonl` (empty when no step ran)."""
    from jobs.training.metrics import METRICS_FILE

    path = out / METRICS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}
