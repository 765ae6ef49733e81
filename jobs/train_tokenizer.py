"""`phenaki train-tokenizer`: train the video tokenizer on clip shards with Ray Train + DeepSpeed.

The family's task (`jobs.training.tokenizer`: C-ViViT or MAGVIT 3D-VQ, losses, discriminator) runs on the one
trainer (`jobs.training.loop`). Config sections: `tokenizer` (family + CViViTConfig / MagvitVQConfig),
`tokenizer_train` (TokenizerTrainConfig), `tokenizer_loss` (TokenizerLossConfig), `discriminator`
(DiscriminatorConfig; image_size comes from `tokenizer`). Writes `<out>/model.safetensors, config.yaml,
digest.txt` (serving checkpoint), `<out>/metrics.jsonl`, `<out>/eval.json` (held-out reconstruction PSNR and
object fidelity) and `<out>/ray/` (resumable training state).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.config import load_config
from jobs.runtime import add_ray_arguments, init_ray, run_command
from jobs.training.loop import train
from jobs.training.tokenizer import RUN_NAME, check_clips, job_from_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML config file or preset name (configs/<name>.yaml)"
    )
    parser.add_argument("--data", required=True, help="clip-shard directory (written by `phenaki prepare`)")
    parser.add_argument("--out", required=True, help="output directory: checkpoint, metrics, eval, ray state")
    add_ray_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tokenizer_train.steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phenaki train-tokenizer", description=__doc__.split("\n")[0], allow_abbrev=False
    )
    add_arguments(parser)
    return parser


def run(config: dict, data: str, out_dir: str) -> dict:
    """Train from a loaded config dict; returns the held-out evaluation (also in `<out>/eval.json`)."""
    job = job_from_config(config, data)
    check_clips(job)
    return train(job, out_dir)


def main(args: argparse.Namespace) -> int:
    job = job_from_config(load_config(args.config, args.overrides), args.data)
    check_clips(job)  # a bad config or dataset fails before Ray starts
    init_ray(args.address)
    evaluation = train(job, args.out)
    psnr = evaluation.get("psnr_db")
    print(
        f"[{RUN_NAME}] checkpoint: {Path(args.out).resolve()}  held-out PSNR: "
        + (f"{psnr:.2f} dB" if psnr is not None else "n/a (no held-out clips)")
    )
    if evaluation.get("fidelity"):
        from pipelines.fidelity import summary_line

        print(f"[{RUN_NAME}] object fidelity: {summary_line(evaluation['fidelity'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.train_tokenizer", main, build_parser().parse_args()))
