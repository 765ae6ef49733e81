"""What a training run writes about itself: per-step metrics (JSON lines and TensorBoard events), throughput
and MFU, per-rank sample records, and the step clock.

Every trainer reports, per optimizer step: its loss parts, `lr`, `step_s`, `samples_per_s`, `tokens_per_s`,
`achieved_tflops` (per worker) and `mfu`. MFU is model FLOPs per second over the hardware's peak:

    mfu = 3 * forward_flops_per_step / step_s / peak_flops     (per worker; all workers do the same work)

`forward_flops_per_step` comes from `modeling.flops` (counted on the meta device from the model's own
modules, so it is exact for our matmuls and convolutions at any size); 3x is forward + backward.
Activation-checkpointing recomputation is not model FLOPs and is not counted. The peak is
`TrainConfig.peak_tflops` when set, else the dense datasheet figure of a known GPU at the run's precision,
else, on CPU, a matmul measured in the worker at startup (so CPU MFU is against what this machine's BLAS
reaches, the practical ceiling, not a theoretical one).

Rank 0 writes `<out>/metrics.jsonl` (one JSON object per step) and TensorBoard scalars under
`<out>/tensorboard/` (`tensorboard --logdir <out>/tensorboard`), tagged `<run>/<metric>`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from jobs.training.common import Worker, worker_print
from jobs.training.progress import PROGRESS_ENV
from modeling.flops import TRAINING_FLOPS_PER_FORWARD

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
STEP_RECORDS = "steps-rank{rank}.jsonl"  # per-rank per-step records (TrainConfig.record_samples)

# Dense (no sparsity) datasheet peaks per GPU, TFLOP/s: (bf16 tensor cores, tf32 tensor cores). Substring
# match on torch.cuda.get_device_name, first match wins, so "H100 PCIe" must precede "H100".
GPU_PEAK_TFLOPS = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
}
GPU_PEAK_BF16_TFLOPS = {name: bf16 for name, (bf16, _) in GPU_PEAK_TFLOPS.items()}


def gpu_peak_tflops(name: str, precision: str = "bf16") -> float | None:
    """Datasheet dense peak of the GPU called `name` at `precision` ("bf16", or "fp32" run as TF32)."""
    for key, (bf16, tf32) in GPU_PEAK_TFLOPS.items():
        if key in name:
            return bf16 if precision == "bf16" else tf32
    return None


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 1024, runs: int = 3) -> float:
    """Best-of-`runs` throughput of an n x n matmul on `device` in `dtype`, TFLOP/s (uses this process's threads)."""
    gen = torch.Generator(device=device).manual_seed(0)  # not the global RNG: exact resumes depend on it
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    torch.mm(a, b)  # warm-up: BLAS thread pool, kernel selection
    best = math.inf
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_tflops(device: torch.device, precision: str, override: float | None = None) -> tuple[float, str]:
    """(peak TFLOP/s per worker, where the figure comes from) for MFU."""
    if override:
        return float(override), "TrainConfig.peak_tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = gpu_peak_tflops(name, precision)
        if value is not None:
            return value, f"datasheet dense {precision} peak of {name}"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return measure_matmul_tflops(device, dtype), f"measured {precision} matmul on {device.type} at startup"


@dataclass
class Throughput:
    """Per-worker work of one optimizer step, to turn a step time into throughput metrics."""

    samples_per_step: int  # per worker
    tokens_per_step: int  # per worker: tokens the model processes (tokenizer: latent tokens produced)
    forward_flops_per_step: int  # per worker, all trained networks' forwards (modeling.flops)
    peak_tflops: float  # per worker
    world_size: int

    @classmethod
    def for_worker(
        cls, worker: Worker, cfg, run: str, *, samples: int, tokens: int, flops: int
    ) -> Throughput:
        """Per-worker step work against this worker's peak (`peak_tflops`); rank 0 says where the peak is from.
        `cfg`: the run's TrainConfig (precision, peak_tflops)."""
        peak, source = peak_tflops(worker.device, cfg.precision, cfg.peak_tflops)
        if worker.is_main:
            worker_print(f"[{run}] MFU against {peak:.3g} TFLOP/s per worker ({source})")
        return cls(samples, tokens, flops, peak, worker.world_size)

    def metrics(self, step_s: float) -> dict[str, float]:
        dt = max(step_s, 1e-9)
        achieved = TRAINING_FLOPS_PER_FORWARD * self.forward_flops_per_step / dt / 1e12
        return {
            "step_s": step_s,
            "samples_per_s": self.samples_per_step * self.world_size / dt,
            "tokens_per_s": self.tokens_per_step * self.world_size / dt,
            "achieved_tflops": achieved,
            "mfu": achieved / self.peak_tflops if self.peak_tflops > 0 else float("nan"),
        }


class MetricsLog:
    """Rank 0 appends one JSON line per step to `<out>/metrics.jsonl`, writes the same scalars as TensorBoard
    events under `<out>/tensorboard/`, and prints every `log_every` steps, unless the driver draws a progress
    bar from that file (`jobs.training.progress`: PROGRESS_ENV is "bar")."""

    def __init__(self, out_dir: str, worker: Worker, log_every: int, total_steps: int, run: str):
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = worker.is_main
        self.log_every = max(int(log_every), 1)
        self.total = total_steps
        self.run = run
        self.print_steps = os.environ.get(PROGRESS_ENV) != "bar"
        self._tensorboard = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            # A resumed run appends a new events file beside the old ones; TensorBoard merges them by step.
            self._tensorboard = SummaryWriter(logdir=str(Path(out_dir) / TENSORBOARD_DIR), flush_secs=30)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"run": self.run, "step": step, "time": time.time(), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tensorboard.add_scalar(f"{self.run}/{name}", value, step)
        if step % self.log_every == 0 or step == self.total:
            if self.print_steps:
                parts = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
                worker_print(f"[{self.run}] step {step}/{self.total} {parts}")
            self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


class StepRecords:
    """With `TrainConfig.record_samples`, each rank appends one JSON line per step to `<out>/steps-rank{r}.jsonl`:
    `{"step", "rank", "loss", "sample_ids", "attempt", "restored_from"}`.

    `loss` is this rank's own (not the all-reduced) loss, `sample_ids` the keys of the samples it trained on
    in the step, `attempt` counts this rank's starts of the run (0 first; a worker-group restart or a rerun
    driver adds one) and `restored_from` is the checkpoint step it started from (0: fresh). A step re-run
    after a restart thus has several records; the one with the highest attempt is the one that survived.
    """

    def __init__(self, out_dir: str, worker: Worker, enabled: bool, restored_from: int):
        self.path = Path(out_dir) / STEP_RECORDS.format(rank=worker.rank)
        self.enabled = bool(enabled)
        self.rank = worker.rank
        self.restored_from = int(restored_from)
        self.attempt = 0
        if self.enabled and self.path.exists():
            lines = self.path.read_text().splitlines()
            self.attempt = max((json.loads(line).get("attempt", 0) for line in lines if line), default=-1) + 1

    def write(self, step: int, loss: float, sample_ids: list[str]) -> None:
        if not self.enabled:
            return
        row = {
            "step": step,
            "rank": self.rank,
            "loss": float(loss),
            "sample_ids": [str(k) for k in sample_ids],
            "attempt": self.attempt,
            "restored_from": self.restored_from,
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_step_records(out_dir: str | Path, rank: int) -> list[dict]:
    path = Path(out_dir) / STEP_RECORDS.format(rank=rank)
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def read_tensorboard_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every events file under `logdir` (TFRecord framing, tensorboardX protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            payload = data[pos + 12 : pos + 12 + length]  # after u64 length + u32 length-crc
            pos += 12 + length + 4  # payload + u32 payload-crc
            event = Event.FromString(payload)
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return scalars


class StepClock:
    """Step timing and the time budget (measured from the first training step, not from startup)."""

    def __init__(self, budget_s: float | None):
        self.budget_s = budget_s
        self.start = time.perf_counter()
        self.last = self.start

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.last = now - self.last, now
        return dt

    def over_budget(self) -> bool:
        return self.budget_s is not None and time.perf_counter() - self.start > self.budget_s
