"""The benchmark suite: which benchmarks exist, how each is run in its full and quick mode, how long each takes,
and running them one subprocess each so that one failing does not lose the others.

`python -m benchmarks` (`benchmarks/__main__.py`) runs the selection, records each outcome in
`<results>/suite_runs.json`, then renders the report (`benchmarks.report`) from the JSONs on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.machine import measured_on

BENCHMARKS_DIR = Path(__file__).parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"  # a quick pass never overwrites the full figures
RUNS_FILE = "suite_runs.json"
WORK_ROOT = Path("/tmp/phenaki-bench")  # benchmarks that make data or run jobs write it under here


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module: `python -m benchmarks.<name> <args> --out <results>/<name>.json`."""

    name: str
    what: str
    full_args: tuple[str, ...]
    quick_args: tuple[str, ...]
    full_minutes: (
        float  # expected on 2 idle CPU cores (a quick pass took 24 min in all on 2 busy shared cores)
    )
    quick_minutes: float
    slow: bool = False  # many minutes in its full mode: `--skip` it to keep a full pass short

    def command(self, out: Path, *, quick: bool) -> list[str]:
        args = self.quick_args if quick else self.full_args
        work = [a.replace("{work}", str(WORK_ROOT / self.name)) for a in args]
        command = [sys.executable, "-m", f"benchmarks.{self.name}", "--out", str(out), *work]
        return command


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("sampling_speed", "MaskGIT time vs steps, vs KV-cached AR, FLOP/s vs matmul peak",
              ("--runs", "3"), ("--quick",), 15, 0.5),
    Benchmark("tokenizer_throughput", "tokenizer encode / decode clips/s and tokens/s",
              ("--runs", "3"), ("--quick",), 4, 0.3),
    Benchmark("peer_comparison", "sampler and tokenizer against phenaki-pytorch, same process",
              ("--runs", "3"), ("--quick", "--runs", "1"), 10, 1),
    Benchmark("prepare_throughput", "prepare vs the PyAV decode-only limit; tokenize",
              ("--runs", "3", "--work", "{work}"), ("--quick", "--work", "{work}"), 5, 2),
    Benchmark("training", "Ray Train + DeepSpeed samples/s and MFU on 1 and 2 workers; ZeRO memory",
              ("--steps", "20", "--work", "{work}"), ("--quick", "--work", "{work}"), 6, 3),
    Benchmark("serve_batching", "serve latency, batched / unbatched throughput, shedding, autoscaling",
              ("--runs", "3"), ("--quick",), 3, 2),
    Benchmark("frechet_distance", "the Fréchet distance behind FID / FVD against pytorch-fid's: error and time",
              ("--runs", "3"), ("--quick",), 1, 0.2),
    Benchmark("detector_accuracy", "the adherence detector on ground-truth renders",
              ("--seeds", "4"), ("--seeds", "1"), 1.5, 0.5),
    Benchmark("shape_reading", "the detector's shape reading against blur and a person's labels",
              (), (), 1.5, 1.5),
    Benchmark("magvit_quality", "MAGVIT 3D-VQ vs C-ViViT reconstruction; COMMIT per task",
              (), ("--quick",), 20, 1, slow=True),
    Benchmark("demo_stages", "`phenaki demo` wall time by stage and adherence (full: 3 demo runs; quick: one --fast)",
              ("--runs", "3", "--vary-seeds", "--work", "{work}"),
              ("--runs", "1", "--work", "{work}", "--", "--fast"), 40, 3, slow=True),
    Benchmark("image_ablation", "do stills teach what videos lack (two trainings of the demo transformer)",
              ("--seeds", "4", "--work", "{work}"),
              ("--config", "debug", "--steps", "10", "--seeds", "1", "--work", "{work}"), 25, 3, slow=True),
)  # fmt: skip

BY_NAME = {b.name: b for b in BENCHMARKS}


SLOW = "slow"  # in --only / --skip: every benchmark marked slow


def parse_names(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'], every name checked against the suite (a ValueError names the unknown ones);
    'slow' stands for the benchmarks marked slow."""
    if not text:
        return []
    names = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        names += [b.name for b in BENCHMARKS if b.slow] if name == SLOW else [name]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BY_NAME)} or {SLOW}"
        )
    return names


def select(only: list[str], skip: list[str]) -> list[Benchmark]:
    """The benchmarks to run, in suite order: `only` (all when empty) less `skip`."""
    chosen = [b for b in BENCHMARKS if (not only or b.name in only) and b.name not in skip]
    if not chosen:
        raise ValueError("--only / --skip leave no benchmark to run")
    return chosen


def plan_text(chosen: list[Benchmark], *, quick: bool) -> str:
    """The table printed before running: name, expected minutes, what it measures."""
    lines = [f"{'benchmark':22s} {'expected':>9s}  what", f"{'-' * 22} {'-' * 9}  {'-' * 40}"]
    total = 0.0
    for b in chosen:
        minutes = b.quick_minutes if quick else b.full_minutes
        total += minutes
        slow = "  [slow: --skip slow leaves it out]" if b.slow and not quick else ""
        lines.append(f"{b.name:22s} {minutes:7.1f} m  {b.what}{slow}")
    lines.append(f"{'total':22s} {total:7.1f} m  (2 idle CPU cores; a shared machine takes longer)")
    return "\n".join(lines)


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    returncode: int | None
    reason: str  # "" when ok; else the last lines of the benchmark's output
    command: list[str]
    log: str
    date: str


def run_one(bench: Benchmark, results_dir: Path, *, quick: bool, timeout_s: float | None = None) -> Outcome:
    """Runs one benchmark as its own process; its stdout + stderr go to `<results>/logs/<name>.log`."""
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{bench.name}.log"
    command = bench.command(results_dir / f"{bench.name}.json", quick=quick)
    if not (BENCHMARKS_DIR / f"{bench.name}.py").exists():  # e.g. a benchmark another branch adds
        reason = f"benchmarks/{bench.name}.py is not in this checkout: nothing to run"
        log.write_text(reason + "\n")
        return Outcome(bench.name, False, 0.0, None, reason, command, str(log), measured_on())
    start = time.perf_counter()
    returncode: int | None
    try:
        with log.open("w") as f:
            returncode = subprocess.run(
                command, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=BENCHMARKS_DIR.parent
            ).returncode
        reason = "" if returncode == 0 else f"exit status {returncode}: {tail(log)}"
    except subprocess.TimeoutExpired:
        returncode, reason = None, f"stopped after {timeout_s:.0f} s: {tail(log)}"
    return Outcome(
        name=bench.name,
        ok=returncode == 0,
        seconds=round(time.perf_counter() - start, 1),
        returncode=returncode,
        reason=reason,
        command=command,
        log=str(log),
        date=measured_on(),
    )


def tail(log: Path, lines: int = 6) -> str:
    """The last non-empty lines of a log, joined with ' | ' (why a benchmark failed, in one table cell)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-600:] or "no output"


def record_outcomes(results_dir: Path, outcomes: list[Outcome]) -> Path:
    """Merges this pass's outcomes into `<results>/suite_runs.json` (a later pass of other benchmarks keeps
    the earlier entries)."""
    path = results_dir / RUNS_FILE
    runs = read_outcomes(results_dir)
    for o in outcomes:  # as a reader would type them in the checkout: no machine's absolute paths
        entry = asdict(o)
        entry["command"] = ["python", *(portable(a) for a in o.command[1:])]
        entry["log"] = portable(o.log)
        runs[o.name] = entry
    path.write_text(json.dumps(runs, indent=2) + "\n")
    return path


def portable(arg: str) -> str:
    """A path under the checkout as a path relative to it; anything else unchanged."""
    root = str(BENCHMARKS_DIR.parent) + os.sep
    return arg[len(root) :] if arg.startswith(root) else arg


def read_outcomes(results_dir: Path) -> dict[str, dict]:
    path = results_dir / RUNS_FILE
    return json.loads(path.read_text()) if path.exists() else {}
