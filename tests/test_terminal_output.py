"""What a person sees in the terminal during training: the driver's progress bar from metrics.jsonl, the
workers' per-step lines only where there is no bar, and Ray's known-harmless noise filtered."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import torch

from jobs.runtime import KNOWN_NOISE, quiet_known_noise
from jobs.training.common import Worker
from jobs.training.metrics import METRICS_FILE, MetricsLog
from jobs.training.progress import (
    PROGRESS_ENV,
    JsonlTail,
    ProgressFollower,
    budget_stop_in,
    postfix,
    progress_mode,
)

REPO = Path(__file__).resolve().parents[1]


def append(path, *rows, raw: str = ""):
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write(raw)


def test_progress_mode():
    assert progress_mode(terminal=True, local_files=True) == "bar"
    assert progress_mode(terminal=False, local_files=True) == "lines"  # CI logs, `ray job submit`
    assert progress_mode(terminal=True, local_files=False) == "lines"  # rank 0 writes on another machine
    assert progress_mode(terminal=False, local_files=False, env="bar") == "bar"
    assert progress_mode(terminal=True, local_files=True, env="lines") == "lines"


def test_tail_reads_only_new_complete_lines(tmp_path):
    path = tmp_path / METRICS_FILE
    append(path, {"step": 7})  # an earlier run's steps: not this run's progress
    tail = JsonlTail(path)
    assert tail.read() == []
    append(path, {"step": 1}, raw='{"step": 2, "lo')  # the second line is still being written
    assert tail.read() == [{"step": 1}]
    append(path, raw='ss": 1.5}\n')
    assert tail.read() == [{"step": 2, "loss": 1.5}]
    assert tail.read() == []


def test_tail_of_a_file_not_there_yet(tmp_path):
    tail = JsonlTail(tmp_path / "later" / METRICS_FILE)
    assert tail.read() == []
    (tmp_path / "later").mkdir()
    append(tmp_path / "later" / METRICS_FILE, {"step": 1})
    assert tail.read() == [{"step": 1}]


def test_postfix_shows_what_a_person_watches():
    row = {"step": 3, "loss": 1.23456, "psnr": 21.5, "lr": 1e-3, "mask_accuracy": float("nan")}
    assert postfix(row) == "loss 1.235 · psnr 21.5"
    assert (
        postfix({"loss": 0.5, "psnr": 20.0}, budget_stop_s=42.4) == "loss 0.5 · budget stop in 42 s · psnr 20"
    )


def test_budget_note_only_when_the_budget_comes_first():
    first, last = {"step": 1, "time": 100.0}, {"step": 11, "time": 110.0}  # 1 step/s, 10 s in
    assert budget_stop_in(first, last, total=100, budget_s=50) == 40.0  # 89 steps left, 40 s of budget
    assert budget_stop_in(first, last, total=30, budget_s=50) is None  # the steps run out first
    assert budget_stop_in(first, last, total=100, budget_s=None) is None
    assert budget_stop_in(first, first, total=100, budget_s=50) is None  # no rate yet
    assert budget_stop_in(first, {"step": 50, "time": 200.0}, total=100, budget_s=50) == 0.0


def test_follower_draws_one_bar_from_the_metrics_file(tmp_path):
    path = tmp_path / METRICS_FILE
    screen = io.StringIO()
    follower = ProgressFollower(path, total=10, desc="tokenizer", budget_s=5, file=screen)
    follower.poll()
    assert follower.bar is None  # workers still starting: nothing drawn yet
    append(path, *({"step": s, "time": 1000.0 + s, "loss": 2.0 / s} for s in (1, 2, 3)))
    follower.poll()
    assert follower.bar.n == 3 and follower.bar.total == 10
    # 1 step/s: the 5 s budget (from the first step) stops the run before step 10
    assert follower.bar.postfix == "loss 0.6667 · budget stop in 3 s"
    append(path, {"step": 2, "time": 1010.0, "loss": 1.0})  # a worker group restarted from step 1
    follower.poll()
    assert follower.bar.n == 2
    append(path, *({"step": s, "time": 1010.0 + s, "loss": 0.1} for s in range(3, 11)))
    follower.poll()
    assert follower.done  # closed at the last step: what the run does after it is not steps
    follower.stop()
    text = screen.getvalue()
    assert "tokenizer" in text and "10/10" in text and "loss 0.1" in text


def test_follower_thread_stops_cleanly(tmp_path):
    path = tmp_path / METRICS_FILE
    with ProgressFollower(path, total=2, desc="run", interval_s=0.01, file=io.StringIO()) as follower:
        append(path, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5})
    assert follower.bar.n == 2 and not follower._thread.is_alive()


def test_workers_print_step_lines_only_without_a_bar(tmp_path, monkeypatch, capfd):
    worker = Worker(0, 1, torch.device("cpu"))
    for mode, printed in (("lines", True), ("bar", False)):
        monkeypatch.setenv(PROGRESS_ENV, mode)
        log = MetricsLog(str(tmp_path / mode), worker, log_every=2, total_steps=4, run="tokenizer")
        for step in range(1, 5):
            log.write(step, {"loss": 1.0 / step})
        log.close()
        out = capfd.readouterr().out
        assert ("[tokenizer] step 2/4 loss=0.5" in out) is printed and ("step 4/4" in out) is printed
        assert "step 3/4" not in out
        assert len((tmp_path / mode / METRICS_FILE).read_text().splitlines()) == 4  # the file gets every step


def test_known_noise_is_filtered_and_nothing_else(caplog):
    quiet_known_noise()
    quiet_known_noise()  # idempotent: one filter per logger
    cleaner = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
    assert len(logging.getLogger(cleaner).filters) == 1 and cleaner in KNOWN_NOISE
    with caplog.at_level(logging.INFO):
        logging.getLogger(cleaner).warning(
            "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
            "Continuing to monitor."
        )
        logging.getLogger(cleaner).warning("Detected that the Ray Train controller actor (x) is dead.")
        logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
            "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
        )
        logging.getLogger("phenaki").warning(
            "Failed to query Ray Train Controller actor state."
        )  # ours: kept
    assert [r.getMessage()[:30] for r in caplog.records] == [
        "Detected that the Ray Train co",
        "Failed to query Ray Train Cont",
    ]
    assert [r.name for r in caplog.records] == [cleaner, "phenaki"]


def test_shard_progress_note_gives_rate_and_time_left():
    from pipelines.ray_utils import progress_note

    assert progress_note(0, 40, 0.0) == "[0/40]"
    assert progress_note(4, 40, 8.0) == "[4/40 · 0.5 shards/s · ~72 s left]"
    assert progress_note(1, 40, 10.0) == "[1/40 · 0.1 shards/s · ~6.5 min left]"
    assert progress_note(40, 40, 80.0) == "[40/40 · 0.5 shards/s · done]"


def test_every_command_says_it_started_before_its_imports(tmp_path):
    """`phenaki X` prints a start-up line before importing the job (torch, Ray: seconds), and sets up logging
    for every command in one place (`run_command`), so the trainers' own start-up lines reach the terminal."""
    import subprocess
    import sys

    from jobs.cli import SUBCOMMANDS

    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "describe", "--config", "debug", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[0] == "phenaki describe: starting"
    assert json.loads(proc.stdout)  # stdout stays machine-readable
    helped = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train-tokenizer", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0 and "starting" not in helped.stderr and "usage: phenaki" in helped.stdout
    for module, _ in SUBCOMMANDS.values():  # nobody configures logging on their own any more
        assert "setup_logging()" not in (REPO / f"{module.replace('.', '/')}.py").read_text(), module
