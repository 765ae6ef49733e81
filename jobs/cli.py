"""The `phenaki` command: one subcommand per job module (jobs/<name>.py), imported only when used.

Every subcommand is also `python -m jobs.<module>` with the same arguments, which is what `ray job submit`
runs on a cluster.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("jobs.synth", "write the synthetic shapes world as WebVid CSV + mp4 and LAION parquet + jpg"),
    "prepare": ("jobs.prepare", "Ray Data: video/image-text sources -> clip shards (WebDataset)"),
    "train-tokenizer": ("jobs.train_tokenizer", "Ray Train + DeepSpeed: train the C-ViViT tokenizer"),
    "tokenize": ("jobs.tokenize", "Ray Data: clip shards -> token cache (codes + text embeddings)"),
    "train-transformer": ("jobs.train_transformer", "Ray Train + DeepSpeed: train the MaskGIT transformer"),
    "generate": ("jobs.generate", "sample a video (several prompts: a story; --image: animate)"),
    "serve": ("jobs.serve", "Ray Serve: the sampler as an HTTP endpoint"),
    "eval": ("jobs.eval", "detector-based adherence (colour/shape/motion) of generated videos"),
    "submit": (
        "jobs.submit",
        "submit a job to a Ray cluster (Jobs API: working-dir upload, token auth, streamed logs)",
    ),
    "describe": (
        "jobs.describe",
        "a preset's parameter counts, token shapes and FLOPs (no weights allocated; --json for scripts)",
    ),
    "demo": ("jobs.demo", "the whole pipeline on the synthetic world, on a local Ray cluster"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phenaki", description="Phenaki text-to-video on Ray", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}")
        parser.print_help()
        return 0
    if not {"-h", "--help"} & set(argv[1:]):
        # Importing a job (torch, Ray) takes seconds before it can log anything: say it has started.
        print(f"phenaki {argv[0]}: starting", file=sys.stderr, flush=True)
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(
        prog=f"phenaki {argv[0]}", description=SUBCOMMANDS[argv[0]][1], allow_abbrev=False
    )
    module.add_arguments(parser)
    from jobs.runtime import run_command

    return run_command(f"phenaki {argv[0]}", module.main, parser.parse_args(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
