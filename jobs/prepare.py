"""`phenaki prepare`: Ray Data turns video-text and image-text sources into clip shards."""

from __future__ import annotations

import argparse

from jobs.runtime import add_ray_arguments, init_ray, log, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SPEC",
        help="[FORMAT:]URI[::weight=W][::name=N], repeatable: a WebVid CSV, LAION parquet, "
        "img2dataset/video2dataset WebDataset folder or tars, or a media folder with .txt "
        "captions; local, file://, gs://, http(s)://; globs and {a,b} / {000..009} brace lists",
    )
    parser.add_argument(
        "--out", required=True, help="output directory (local or gs://) for shards + manifest.json"
    )
    parser.add_argument(
        "--config", default=None, help="config preset or YAML file (its `prepare` section is used)"
    )
    parser.add_argument(
        "--format",
        default=None,
        choices=["webvid", "laion", "webdataset", "folder"],
        help="force one format for every source",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first bad input instead of skipping it"
    )
    add_ray_arguments(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides, e.g. prepare.size=32, "
        "prepare.fetch.timeout_s=10, prepare.fetch.allow_loopback=true, prepare.limits.max_pixels=10000000",
    )


def main(args: argparse.Namespace) -> int:
    from jobs.config import load_config
    from modeling.typed_config import build_dataclass
    from pipelines.prepare import PrepareConfig, prepare

    config = load_config(args.config, args.overrides)
    section = dict(config.get("prepare") or {})
    if args.format:
        section["source_format"] = args.format
    if args.strict:
        section["strict"] = True
    cfg = build_dataclass(PrepareConfig, section)
    init_ray(args.address)
    manifest = prepare(args.source, args.out, cfg)
    log.info(
        "clip shards: %s (%s samples %s, skipped %s)",
        args.out,
        manifest["num_samples"],
        manifest["counts"],
        manifest["skips"],
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.prepare", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.prepare", main, build_parser().parse_args()))
