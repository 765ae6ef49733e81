"""Training faults: the non-finite guard, and the drills that inject faults so tests (and operators) can see
what each failure does.

Non-finite guard. A step whose loss or gradients are NaN/inf is skipped by DeepSpeed's ZeRO optimizers when
they check the gradient norm: fp32 with gradient clipping on (`TrainConfig.grad_clip > 0`), and bf16 because
`deepspeed_config` turns `check_grad_overflow` on; the engine counts it in `skipped_steps` and the weights
stay as they were. Where nothing skips it (ZeRO-0, or fp32 without clipping) the update has already touched
the weights, so the run halts at that step: `StepGuard` sees a non-finite metric with no new skip, or
non-finite weights before a save, and the workers stop without checkpointing or exporting; the driver then
raises `NonFiniteTrainingError`. A halted run is not retried (retries would replay the same exact steps);
the last checkpoint holds finite weights, and a rerun with the same --out resumes from it.

Drills (`TrainConfig`): `fail_at_step` kills one worker process after that step (`fail_in="step"`) or inside
that step's checkpoint save, after its files are written and before Ray registers them (`fail_in="save"`),
for the first `fail_times` attempts; `nan_at_step` makes the loss that step back-propagates NaN.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

FAULT_MARKER = ".fault-injected"  # the drill's record of the failures it injected (so it stops after N)
HALT_FILE = "halted.json"  # written by rank 0 when the guard halts a run; read by the driver


class NonFiniteTrainingError(RuntimeError):
    """The run stopped at a step whose update was not finite; its last checkpoint is intact."""


# --------------------------------------------------------------------------------------------- drills
def maybe_inject_fault(cfg, step: int, out_dir: str, worker, where: str = "step") -> None:
    """Fault drill: kill this worker process at step `cfg.fail_at_step` (`where` is "step" after the step's
    optimizer update and records, "save" inside its checkpoint save), for the first `cfg.fail_times` attempts.

    The failing worker is rank 1 (rank 0 in a one-worker run), so the driver-side rank 0 logs survive the
    kill. `<out>/.fault-injected` records each injected failure before the exit; once it holds
    `fail_times` of them no worker fails again, so the restarted group (or a rerun in the same --out) runs on.
    """
    if cfg.fail_at_step is None or step != cfg.fail_at_step or where != cfg.fail_in:
        return
    if worker.rank != min(1, worker.world_size - 1):
        return
    marker = Path(out_dir) / FAULT_MARKER
    failures = json.loads(marker.read_text())["failures"] if marker.exists() else 0
    if failures >= cfg.fail_times:
        return
    record = {"step": step, "where": where, "rank": worker.rank, "pid": os.getpid(), "failures": failures + 1}
    marker.write_text(json.dumps(record))
    from jobs.training.common import worker_print

    worker_print(
        f"fault injection: rank {worker.rank} exits at step {step} ({where}), failure {failures + 1}"
    )
    os._exit(1)


@contextmanager
def maybe_poison_loss(cfg, step: int, engines: dict[str, Any]):
    """Fault drill (`cfg.nan_at_step`): during the step that becomes step `nan_at_step`, every loss the
    engines back-propagate is multiplied by NaN, as a diverging step would make it (all ranks alike)."""
    if cfg.nan_at_step is None or step + 1 != cfg.nan_at_step:
        yield
        return
    originals = {name: engine.backward for name, engine in engines.items()}
    for name, engine in engines.items():
        engine.backward = lambda loss, *a, _orig=originals[name], **kw: _orig(loss * float("nan"), *a, **kw)
    try:
        yield
    finally:
        for name, engine in engines.items():
            engine.backward = originals[name]


# --------------------------------------------------------------------------------------------- guard
def skipped_steps(engines: dict[str, Any]) -> int:
    """Optimizer steps DeepSpeed skipped for non-finite gradients, summed over the engines."""
    return sum(int(getattr(engine, "skipped_steps", 0)) for engine in engines.values())


def local_weights_finite(engines: dict[str, Any]) -> bool:
    """Whether every weight this rank holds is finite (ZeRO-3: this rank's partition of each parameter)."""
    for engine in engines.values():
        for p in engine.module.parameters():
            tensor = getattr(p, "ds_tensor", None)
            tensor = p.data if tensor is None else tensor
            if tensor.numel() and not bool(torch.isfinite(tensor).all()):
                return False
    return True


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on every rank (a collective when a process group is up)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        value = value.to(device)
    dist.all_reduce(value)
    return float(value.cpu()) == 0.0


class StepGuard:
    """Counts skipped non-finite steps and decides when a run must halt (see the module docstring)."""

    def __init__(self, engines: dict[str, Any]) -> None:
        self.engines = engines
        self.skipped_before = skipped_steps(engines)  # restored with the engines' checkpoint
        self.halted: str | None = None

    def check_step(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """The step's counters to log (`nonfinite`: this step's loss, a metric or the gradients were not
        finite; `skipped_steps`: DeepSpeed's running count); sets `halted` when a non-finite step changed the
        weights.

        `metrics` are already averaged over ranks, so every rank sees the same non-finite values and
        decides alike without another collective."""
        skipped = skipped_steps(self.engines)
        nonfinite = [k for k, v in metrics.items() if not math.isfinite(v)]
        was_skipped = skipped > self.skipped_before  # DeepSpeed skips only for non-finite gradients
        if nonfinite and not was_skipped:
            self.halted = (
                f"step {step}: {', '.join(nonfinite)} not finite and the optimizer applied the update (ZeRO-0, or "
                "fp32 with grad_clip=0, does not skip such steps)"
            )
        self.skipped_before = skipped
        return {"skipped_steps": float(skipped), "nonfinite": float(bool(nonfinite) or was_skipped)}

    def check_before_save(self, step: int, device: torch.device) -> bool:
        """Whether the weights may be saved (a collective): False, and `halted` set, if any is non-finite."""
        if all_ranks_agree(local_weights_finite(self.engines), device):
            return True
        self.halted = f"step {step}: non-finite weights, not saved"
        return False


def write_halt(out_dir: str, reason: str, last_saved: int) -> None:
    Path(out_dir, HALT_FILE).write_text(json.dumps({"reason": reason, "last_checkpoint_step": last_saved}))


def raise_if_halted(out: Path) -> None:
    """Driver side, after the workers return: the guard's halt as an error naming the cause and the fix."""
    path = out / HALT_FILE
    if not path.exists():
        return
    halt = json.loads(path.read_text())
    raise NonFiniteTrainingError(
        f"training halted at {halt['reason']}. Nothing after step {halt['last_checkpoint_step']} was saved "
        f"(that checkpoint's weights are finite). Lower peak_lr or raise warmup_steps, keep grad_clip > 0 with "
        f"zero_stage >= 1 so such steps are skipped, check the data, then rerun with the same --out to resume."
    )


def clear_halt(out: Path) -> None:
    (out / HALT_FILE).unlink(missing_ok=True)
