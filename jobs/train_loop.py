"""The end of every optimizer step, shared by the tokenizer, transformer and COMMIT trainers.

After its optimizer step a trainer hands its step number, learning rate, local metrics and resumable state
to `StepTail.after_step`, which averages the metrics over ranks, adds throughput and MFU
(`jobs.train_metrics.Throughput`), logs them (JSON lines, TensorBoard, console), runs the fault drill,
checkpoints on the `checkpoint_every` cadence or when the time budget runs out, and says whether to stop.
`finish` writes the final checkpoint unless the last step was just saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.train_common import (
    TrainConfig,
    Worker,
    maybe_inject_fault,
    reduce_metrics,
    save_and_report,
    worker_print,
)
from jobs.train_metrics import MetricsLog, StepClock, Throughput


@dataclass
class StepTail:
    cfg: TrainConfig
    worker: Worker
    engines: dict[str, Any]
    log: MetricsLog
    throughput: Throughput
    out_dir: str
    start_step: int  # the step the run (re)starts from: already checkpointed
    clock: StepClock = field(init=False)
    last_saved: int = field(init=False)

    def __post_init__(self) -> None:
        self.clock = StepClock(self.cfg.time_budget_s)  # the budget counts from the first step
        self.last_saved = self.start_step

    def after_step(self, step: int, lr: float, metrics: dict[str, float], state: dict) -> bool:
        """Log step `step` and checkpoint `state` when due; True when the run must stop (time budget).

        A collective: every rank calls it with the same metric names."""
        cfg = self.cfg
        dt = self.clock.lap()
        metrics, stop = reduce_metrics(metrics, self.clock.over_budget(), self.worker)
        metrics.update(lr=lr, **self.throughput.metrics(dt))
        self.log.write(step, metrics)
        maybe_inject_fault(cfg, step, self.out_dir, self.worker)
        if stop or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps):
            save_and_report(self.engines, state, metrics, self.worker)
            self.last_saved = step
        if stop and self.worker.is_main:
            worker_print(f"[{self.log.run}] time budget {cfg.time_budget_s}s reached at step {step}")
        return stop

    def finish(self, step: int, state: dict) -> None:
        """The final checkpoint (unless step `step` was just saved) and the log's last flush."""
        if step != self.last_saved or step == 0:
            save_and_report(self.engines, state, {"step": step}, self.worker)
        self.log.close()
