"""`phenaki tokenize`: Ray Data actor pool turning clip shards into a token cache (codes + text embeddings).

Any tokenizer family (C-ViViT or MAGVIT-VQ, from the checkpoint). With a MAGVIT-VQ tokenizer, `--commit` (or
`tokenize.commit: true`) also stores COMMIT's per-task condition tokens for `transformer.family: commit`.
"""

from __future__ import annotations

import argparse

from jobs.runtime import add_ray_arguments, init_ray, log, run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", required=True, help="tokenizer checkpoint directory (phenaki train-tokenizer --out)"
    )
    parser.add_argument("--data", required=True, help="clip-shard directory (phenaki prepare --out)")
    parser.add_argument("--out", required=True, help="token-cache directory to write")
    parser.add_argument(
        "--config", default=None, help="config preset or YAML (its `text_encoder` and `tokenize` sections)"
    )
    parser.add_argument(
        "--text-encoder", default=None, help="'minilm' (default), 't5:/local/dir' or a local HF directory"
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--commit", action="store_true", help="MAGVIT: also store COMMIT's condition tokens")
    parser.add_argument(
        "--strict", action="store_true", help="a damaged clip shard fails the job instead of a counted skip"
    )
    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tokenize.batch_size=16")


def tokenize_config_from(config: dict):
    """The TokenizeConfig a config file implies: its `tokenize` section plus the `text_encoder` section."""
    from modeling.text_encoder import TextEncoderConfig
    from modeling.typed_config import build_dataclass
    from pipelines.tokenize import TokenizeConfig

    section = dict(config.get("tokenize") or {})
    text = build_dataclass(TextEncoderConfig, config.get("text_encoder"))
    section.setdefault("text_encoder", text.name)
    section.setdefault("max_text_length", text.max_length)
    return build_dataclass(TokenizeConfig, section)


def main(args: argparse.Namespace) -> int:
    from jobs.config import load_config
    from pipelines.tokenize import tokenize

    config = load_config(args.config, args.overrides)
    cfg = tokenize_config_from(config)
    if args.text_encoder:
        cfg.text_encoder = args.text_encoder
    if args.batch_size:
        cfg.batch_size = args.batch_size
    if args.commit:
        cfg.commit = True
    if args.strict:
        cfg.strict = True
    init_ray(args.address)
    manifest = tokenize(args.tokenizer, args.data, args.out, cfg)
    log.info("token cache: %s (%s)", args.out, manifest.get("counts"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.tokenize", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.tokenize", main, build_parser().parse_args()))
