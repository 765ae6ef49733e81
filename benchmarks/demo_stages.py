"""Demo wall time per stage and adherence, over several full runs of `phenaki demo` (medians reported).

    python -m benchmarks.demo_stages --runs 3 --work /tmp/demo-bench [--vary-seeds]

Each run is a fresh `phenaki demo` process with its own local Ray cluster and output directory. Writes
benchmarks/results/demo_stages.json with the machine described. Run it alone on the machine: the figures
are wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import describe_machine, measured_on

DEFAULT_OUT = Path(__file__).parent / "results" / "demo_stages.json"
# "clean" (one clean object) is the headline; the attributes count only on clean videos.
ATTRIBUTES = ("clean", "colour", "shape", "motion", "colour_every_frame", "all")
FIDELITY = ("clean", "colour", "shape", "motion")


def run_once(out: Path, extra: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--out", str(out), *extra], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    results["process_seconds"] = round(time.perf_counter() - start, 2)
    return results


def tokenizer_summary(results: dict) -> dict:
    """A run's tokenizer evaluation without the fidelity's per-clip rows and example strips (in its own out dir)."""
    evaluation = dict(results["tokenizer_eval"])
    if "fidelity" in evaluation:
        evaluation["fidelity"] = {
            k: v for k, v in evaluation["fidelity"].items() if k not in ("per_clip", "examples")
        }
    return evaluation


def seed_overrides(run: int) -> list[str]:
    """Run `run`'s own seeds: the synthetic world's, and both trainings' (initial weights, batches, masks)."""
    return [f"demo.seed={run}", f"tokenizer_train.seed={run}", f"transformer_train.seed={run}"]


def median_table(runs: list[dict]) -> dict:
    stages = list(runs[0]["timings_s"])
    timings = {s: statistics.median(r["timings_s"][s] for r in runs) for s in stages}
    timings["process (incl. interpreter + imports)"] = statistics.median(r["process_seconds"] for r in runs)
    adherence = {}
    for kind in runs[0]["adherence"]:
        adherence[kind] = {
            a: statistics.median(
                r["adherence"][kind][a] for r in runs if r["adherence"][kind].get(a) is not None
            )
            for a in ATTRIBUTES
            if any(r["adherence"][kind].get(a) is not None for r in runs)
        }
    psnr = statistics.median(r["tokenizer_eval"]["psnr_db"] for r in runs)
    fidelity = {
        a: statistics.median(r["tokenizer_eval"]["fidelity"][a] for r in runs)
        for a in FIDELITY
        if all(r["tokenizer_eval"].get("fidelity", {}).get(a) is not None for r in runs)
    }
    return {
        "stage_seconds_median": timings,
        "adherence_median": adherence,
        "tokenizer_psnr_db_median": psnr,
        "tokenizer_fidelity_median": fidelity,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", default="/tmp/demo-bench", help="where the runs write their outputs")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument(
        "--vary-seeds",
        action="store_true",
        help="run i uses seed i for the world and both trainings (default: the preset's seeds, "
        "so runs differ only by how far each time budget got)",
    )
    parser.add_argument("extra", nargs="*", help="extra `phenaki demo` arguments / overrides")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        extra = [*args.extra, *(seed_overrides(i) if args.vary_seeds else [])]
        results = run_once(Path(args.work) / f"run-{i}", extra)
        runs.append(results)
        print(
            f"run {i}: {results['timings_s']['total']:.1f} s, adherence {json.dumps(results['adherence'])}",
            flush=True,
        )
    report = {
        "date": measured_on(),
        "machine": describe_machine(),
        "runs": args.runs,
        "demo_arguments": args.extra,
        "seeds": "run i: seed i" if args.vary_seeds else "the preset's",
        **median_table(runs),
        "per_run": [
            {"timings_s": r["timings_s"], "adherence": r["adherence"], "tokenizer_eval": tokenizer_summary(r)}
            for r in runs
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "stage_seconds_median",
                    "adherence_median",
                    "tokenizer_psnr_db_median",
                    "tokenizer_fidelity_median",
                )
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
