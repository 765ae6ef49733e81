"""A training run's progress bar, drawn by the driver from the run's `metrics.jsonl`.

Ray Train workers' stdout reaches the driver line by line, so a bar drawn in a worker cannot render. Rank 0
appends one JSON line per step to `<out>/metrics.jsonl` (`jobs.training.metrics.MetricsLog`); while
`jobs.training.common.launch` waits on the trainer, a thread here follows that file and draws one tqdm bar:
step/total, steps/s, time left, the latest loss. With the bar on, workers print no per-step lines (they read
`PROGRESS_ENV`); where output is not a terminal (CI logs, `ray job submit`) or the file is on another machine,
there is no bar and workers print every `log_every` steps as before.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

PROGRESS_ENV = "PHENAKI_PROGRESS"  # "bar": the driver draws a bar and workers skip per-step lines; "lines"
POSTFIX_KEYS = ("loss", "psnr", "used_codes", "mask_accuracy")  # what a person watches, when the run logs it


def on_terminal() -> bool:
    """stdout (the workers' lines) and stderr (the bar) are a terminal with a width (a pty without one, as
    `script` makes, would draw a zero-width bar: nothing)."""
    try:
        return (
            sys.stdout.isatty()
            and sys.stderr.isatty()
            and os.get_terminal_size(sys.stderr.fileno()).columns > 0
        )
    except OSError:
        return False


def progress_mode(terminal: bool, local_files: bool, env: str | None = None) -> str:
    """ "bar" or "lines". `env` (PROGRESS_ENV) wins when set; else a bar only on a terminal (stdout, which
    the workers' lines go to, and stderr, which the bar goes to) and when the driver can read the workers'
    metrics file (a single-machine cluster)."""
    if env in ("bar", "lines"):
        return env
    return "bar" if terminal and local_files else "lines"


class JsonlTail:
    """The complete lines appended to a JSON-lines file since the last `read` (from its size at creation:
    a resumed run's file already holds the earlier runs' steps)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            if f.seek(0, 2) < self.offset:  # replaced by a shorter file: start over
                self.offset = 0
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written has no newline yet: the next read gets it
        self.offset += end
        rows = []
        for line in data[:end].splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def budget_stop_in(first: dict, last: dict, total: int, budget_s: float | None) -> float | None:
    """Seconds until the run's time budget stops it, when that comes before its last step (at the rate since
    `first`); None when the steps run out first or it cannot tell yet. The budget counts from the first
    step, as the trainers' StepClock does."""
    if not budget_s or "time" not in first or "time" not in last or last["step"] <= first["step"]:
        return None
    elapsed = last["time"] - first["time"]
    rate = (last["step"] - first["step"]) / max(elapsed, 1e-9)
    left = budget_s - elapsed
    return max(left, 0.0) if (total - last["step"]) / rate > left else None


def postfix(row: dict[str, Any], budget_stop_s: float | None = None) -> str:
    """'loss 1.234 · budget stop in 120 s · psnr 21.5' from one metrics row (most important first: a narrow
    terminal cuts the end)."""
    parts = [
        f"{key} {row[key]:.4g}"
        for key in POSTFIX_KEYS
        if isinstance(row.get(key), int | float) and math.isfinite(row[key])
    ]
    if budget_stop_s is not None:
        parts.insert(1, f"budget stop in {budget_stop_s:.0f} s")
    return " · ".join(parts)


class ProgressFollower:
    """Follows `path` and keeps one tqdm bar at the latest step. `poll` reads what is new (the thread started
    by `start` calls it every `interval_s`); `stop` reads the rest and closes the bar."""

    def __init__(
        self, path: str | Path, total: int, desc: str, budget_s: float | None = None,
        interval_s: float = 0.5, file: IO[str] | None = None,
    ):  # fmt: skip
        self.tail = JsonlTail(path)
        self.total, self.desc, self.budget_s = total, desc, budget_s
        self.interval_s, self.file = interval_s, file
        self.bar = None  # made at the first row, so rate and time left leave out the workers' start-up
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.done = False  # the bar reached the last step and is closed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        from tqdm import tqdm

        rows = self.tail.read()
        if not rows or self.done:
            return
        for row in rows:
            step = int(row.get("step", 0))
            if self.bar is None:  # its clock starts here, so the rate counts the steps after this one
                self.first = {**row, "step": step}
                self.bar = tqdm(total=self.total, initial=step, desc=self.desc, unit="step", file=self.file,
                                dynamic_ncols=True, leave=True)  # fmt: skip
            elif step >= self.bar.n:
                self.bar.update(step - self.bar.n)
            else:  # a worker group restarted from an earlier checkpoint
                self.bar.n = step
            self.last = {**row, "step": step}
        stop_in = budget_stop_in(self.first, self.last, self.total, self.budget_s)
        self.bar.set_postfix_str(postfix(self.last, stop_in), refresh=True)
        if self.last["step"] >= self.total:  # close now: the run's export and evaluation are not steps
            self.bar.close()
            self.done = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def start(self) -> ProgressFollower:
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.desc}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        if self.bar is not None and not self.done:
            self.bar.close()

    def __enter__(self) -> ProgressFollower:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
