"""`python -m benchmarks`: run the benchmark suite, then render benchmarks/RESULTS.md and its plots.

    python -m benchmarks                        # every benchmark, full mode (long: the plan is printed first)
    python -m benchmarks --skip slow            # leave out the slow ones (demo_stages, image_ablation, magvit_quality)
    python -m benchmarks --quick                # smoke pass -> results/quick/, RESULTS-quick.md (minutes)
    python -m benchmarks --only sampling_speed,tokenizer_throughput
    python -m benchmarks --render               # no runs: re-render from the JSONs on disk

The benchmarks and their flags are in `benchmarks.suite`, the report in `benchmarks.report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import report, suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="every benchmark in its quick mode (separate files)"
    )
    parser.add_argument("--only", default=None, help=f"comma-separated: {','.join(suite.BY_NAME)}")
    parser.add_argument(
        "--skip", default=None, help="comma-separated names to leave out ('slow': the slow ones)"
    )
    parser.add_argument("--render", action="store_true", help="run nothing; render from the JSONs on disk")
    parser.add_argument("--results", type=Path, default=None, help="results directory (default by mode)")
    parser.add_argument(
        "--out", type=Path, default=None, help="report file (default: RESULTS.md / RESULTS-quick.md)"
    )
    parser.add_argument(
        "--timeout-min", type=float, default=None, help="stop a benchmark after this many minutes"
    )
    args = parser.parse_args(argv)
    results = args.results or (suite.QUICK_RESULTS_DIR if args.quick else suite.RESULTS_DIR)
    out = args.out or (report.QUICK_OUT if args.quick else report.DEFAULT_OUT)
    try:
        chosen = suite.select(suite.parse_names(args.only), suite.parse_names(args.skip))
    except ValueError as e:
        parser.error(str(e))
    failed = []
    if not args.render:
        print(suite.plan_text(chosen, quick=args.quick), flush=True)
        results.mkdir(parents=True, exist_ok=True)
        outcomes = []
        for bench in chosen:
            print(f"\n== {bench.name}: {' '.join(bench.command(results / f'{bench.name}.json', quick=args.quick))}",
                  flush=True)  # fmt: skip
            outcome = suite.run_one(bench, results, quick=args.quick,
                                    timeout_s=args.timeout_min * 60 if args.timeout_min else None)  # fmt: skip
            outcomes.append(outcome)
            print(f"   {'ok' if outcome.ok else 'FAILED'} in {outcome.seconds:.0f} s (log: {outcome.log})"
                  + ("" if outcome.ok else f"\n   {outcome.reason}"), flush=True)  # fmt: skip
        suite.record_outcomes(results, outcomes)
        failed = [o for o in outcomes if not o.ok]
        total = sum(o.seconds for o in outcomes)
        print(
            f"\n{len(outcomes) - len(failed)} of {len(outcomes)} benchmarks ran in {total:.0f} s", flush=True
        )
    sections = report.render(results, out, quick=args.quick)
    print(f"wrote {out} ({len(sections)} sections, plots in {report.plots_dir_for(out.resolve())})")
    if failed:
        print("failed: " + ", ".join(f"{o.name} ({o.reason[:200]})" for o in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
