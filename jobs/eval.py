"""`phenaki eval`: detector-based adherence of generated videos to their prompts, or a tokenizer's fidelity.

Either a demo/generation `results.json` (records `{"prompts": [...], "file": ..., "segments": ...}`, files
relative to the JSON's directory), one `--video` with its `--prompt`(s), or `--tokenizer CKPT` (a tokenizer
checkpoint, or a transformer checkpoint with its tokenizer inside): the detector on the tokenizer's
reconstructions of fresh clips of every colour x shape x motion (`pipelines.fidelity`). Every figure leads
with "one clean object": colour, shape and motion count only on a video that shows one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.runtime import run_command, setup_logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", help="results.json written by `phenaki demo`")
    parser.add_argument("--video", help="one video file to score")
    parser.add_argument("--prompt", action="append", default=[], help="the video's prompt(s)")
    parser.add_argument("--tokenizer", help="tokenizer checkpoint (or a transformer checkpoint holding one): "
                        "object fidelity of its reconstructions")
    parser.add_argument("--repeats", type=int, default=1, help="--tokenizer: 72 fresh clips per repeat")
    parser.add_argument("--frames", type=int, default=None,
                        help="--tokenizer: frames per clip (default: the checkpoint's training clips)")
    parser.add_argument("--out", help="write the full evaluation as JSON here")


def load_records(results_path: str) -> list[dict]:
    path = Path(results_path)
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    return [{**r, "file": str((path.parent / r["file"]).resolve())} for r in records]


def tokenizer_fidelity_report(checkpoint: str, repeats: int = 1, frames: int | None = None) -> dict:
    """Object fidelity of a tokenizer checkpoint (or of the one inside a transformer checkpoint)."""
    from modeling.checkpoint import load_checkpoint, read_checkpoint_meta
    from modeling.tokenizers import FAMILIES
    from pipelines.fidelity import fidelity_clips, tokenizer_fidelity

    path = Path(checkpoint)
    if read_checkpoint_meta(path).get("kind") not in FAMILIES:
        path = path / "tokenizer"  # a transformer checkpoint carries its tokenizer here
    loaded = load_checkpoint(path)
    frames = frames or int(loaded.extra.get("num_frames") or 9)
    report, _ = tokenizer_fidelity(loaded.model, fidelity_clips(loaded.model.cfg.image_size, frames, repeats))
    return {"tokenizer": str(path), "frames": frames, **report}


def main(args: argparse.Namespace) -> int:
    from pipelines.evaluate import evaluate_videos

    setup_logging()
    if args.tokenizer:
        from pipelines.fidelity import summary_line

        report = tokenizer_fidelity_report(args.tokenizer, args.repeats, args.frames)
        print(f"object fidelity of {report['tokenizer']}: {summary_line(report)}")
        print(json.dumps({k: v for k, v in report.items() if k != "per_clip"}, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))
        return 0
    if bool(args.results) == bool(args.video):
        raise SystemExit(
            "phenaki eval: pass --results results.json, --video FILE --prompt TEXT, or --tokenizer CKPT"
        )
    if args.video and not args.prompt:
        raise SystemExit("phenaki eval: --video needs the --prompt it was generated from")
    records = load_records(args.results) if args.results else [{"prompts": args.prompt, "file": args.video}]
    from pipelines.detector import unscored_note

    prompts = dict.fromkeys(p for r in records for p in r["prompts"])  # each once, in order
    for note in filter(None, map(unscored_note, prompts)):
        print(f"note: {note}")
    report = evaluate_videos(records)
    summary = {k: v for k, v in report.items() if k != "segments"}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.eval", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.eval", main, build_parser().parse_args()))
