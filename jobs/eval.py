"""`phenaki eval`: detector-based adherence of generated videos to their prompts.

Either a demo/generation `results.json` (records `{"prompts": [...], "file": ..., "segments": ...}`, files
relative to the JSON's directory) or one `--video` with its `--prompt`(s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.runtime import setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="results.json written by `phenaki demo`")
    parser.add_argument("--video", help="one video file to score")
    parser.add_argument("--prompt", action="append", default=[], help="the video's prompt(s)")
    parser.add_argument("--out", help="write the full evaluation as JSON here")


def load_records(results_path: str) -> list[dict]:
    path = Path(results_path)
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    return [{**r, "file": str((path.parent / r["file"]).resolve())} for r in records]


def main(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate_videos

    setup_logging()
    if bool(args.results) == bool(args.video):
        raise SystemExit("phenaki eval: pass either --results results.json or --video FILE --prompt TEXT")
    if args.video and not args.prompt:
        raise SystemExit("phenaki eval: --video needs the --prompt it was generated from")
    records = load_records(args.results) if args.results else [{"prompts": args.prompt, "file": args.video}]
    report = evaluate_videos(records)
    summary = {k: v for k, v in report.items() if k != "segments"}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.eval", description=__doc__)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
