"""`phenaki synth`: write the synthetic shapes world in WebVid/LAION source formats."""

from __future__ import annotations

import argparse

from jobs.runtime import log, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--videos", type=int, default=600, help="number of videos (mp4 + webvid.csv)")
    parser.add_argument("--images", type=int, default=300, help="number of stills (jpg + laion.parquet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=24, help="frames per video (>= 24)")


def main(args: argparse.Namespace) -> int:
    from pipelines.synth import HELD_OUT, synthesize

    summary = synthesize(
        args.out, num_videos=args.videos, num_images=args.images, seed=args.seed, num_frames=args.frames
    )
    log.info("wrote %s", summary)
    log.info("held-out compositions (never in a video): %s", ", ".join(" ".join(t) for t in HELD_OUT))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.synth", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.synth", main, build_parser().parse_args()))
