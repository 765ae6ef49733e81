"""`phenaki train-transformer`: train the MaskGIT (Phenaki) or COMMIT (MAGVIT) transformer on a token cache
with Ray Train + DeepSpeed.

`transformer.family` picks the task (`jobs.training.families`: `jobs.training.transformer` for MaskGIT,
`jobs.training.commit` for COMMIT); both run on the one trainer (`jobs.training.loop`). Config sections:
`transformer`, `transformer_train`, `text_encoder` (and `commit` for COMMIT). Writes a self-contained serving
checkpoint to <out> (model.safetensors, config.yaml with extra.text_encoder, extra.tokenizer_digest,
extra.token_grid, and <out>/tokenizer/), plus <out>/metrics.jsonl and <out>/ray/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.config import load_config
from jobs.runtime import add_ray_arguments, init_ray, run_command
from jobs.training.families import transformer_job
from jobs.training.loop import train
from jobs.training.transformer import RUN_NAME


def run(config: dict, data: str | list[str], tokenizer: str, out_dir: str) -> dict:
    """Train from a loaded config dict; returns the last logged metrics (empty if no step ran).
    `transformer.family` picks the task: MaskGIT (default) or COMMIT (`jobs.training.families`)."""
    return train(transformer_job(config, data, tokenizer), out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML config file or preset name (configs/<name>.yaml)"
    )
    parser.add_argument(
        "--data",
        required=True,
        action="append",
        help="token cache directory (written by `phenaki tokenize`); repeat it or separate with commas "
        "to train on several caches together",
    )
    parser.add_argument("--tokenizer", required=True, help="tokenizer checkpoint the cache was made with")
    parser.add_argument(
        "--out", required=True, help="output directory: self-contained checkpoint, metrics, ray state"
    )
    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transformer_train.steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phenaki train-transformer", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    add_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    # A bad config, token cache or tokenizer fails here, in one line, before Ray starts (and is never retried).
    job = transformer_job(load_config(args.config, args.overrides), args.data, args.tokenizer)
    init_ray(args.address)
    last = train(job, args.out)
    loss = last.get("loss")
    print(
        f"[{RUN_NAME}] checkpoint: {Path(args.out).resolve()}  last step: {last.get('step')}  loss: "
        + (f"{loss:.4f}" if isinstance(loss, int | float) else "n/a")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.train_transformer", main, build_parser().parse_args()))
