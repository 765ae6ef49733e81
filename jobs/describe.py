"""`phenaki describe --config CFG`: what a preset builds, without allocating a single weight.

Parameter counts come from the real modules built on the meta device; token shapes from the tokenizer and
the clip length (`prepare.num_frames`); the text width from `transformer.text_dim` or, when unset, from the
local text encoder's config. Forward FLOPs per clip are what MFU estimates divide by. Prints a labelled
summary; `--json` prints the same report as JSON for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from jobs.runtime import run_command


def text_width(config: dict) -> int:
    transformer = config.get("transformer") or {}
    if "text_dim" in transformer:
        return int(transformer["text_dim"])
    from modeling.text_encoder import TextEncoderConfig, resolve_text_encoder
    from modeling.typed_config import build_dataclass

    _, path, family = resolve_text_encoder(
        build_dataclass(TextEncoderConfig, config.get("text_encoder")).name
    )
    encoder_config = json.loads((path / "config.json").read_text())
    return int(encoder_config["d_model" if family == "t5" else "hidden_size"])


def _maskgit_report(config: dict, tok_cfg, grid: tuple[int, int, int]) -> dict:
    from modeling.flops import count_parameters, maskgit_forward_flops
    from modeling.maskgit import MaskGIT, MaskGITConfig, code_sizes
    from modeling.text_encoder import TextEncoderConfig
    from modeling.typed_config import build_dataclass

    t, h, w = grid
    max_text = build_dataclass(TextEncoderConfig, config.get("text_encoder")).max_length
    section = {k: v for k, v in config["transformer"].items() if k != "family"}
    cfg = build_dataclass(MaskGITConfig, {
        **section, **code_sizes(dataclasses.asdict(tok_cfg), section),
        "seq_len": t * h * w, "tokens_per_frame": h * w, "text_dim": text_width(config),
    })  # fmt: skip
    return {
        "family": "maskgit",
        "parameters": count_parameters(MaskGIT, cfg),
        "seq_len": cfg.seq_len,
        "text_dim": cfg.text_dim,
        "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "mlp_dim": cfg.mlp_dim,
        "forward_flops_per_clip": maskgit_forward_flops(cfg, text_len=max_text),
        "text_length": max_text,
    }  # fmt: skip


def _commit_report(config: dict, tok_cfg, grid: tuple[int, int, int]) -> dict:
    """COMMIT (MAGVIT): sizes as `jobs.training.commit` builds them (codebook and grid from the tokenizer)."""
    import torch

    from jobs.training.commit import commit_model_config
    from modeling.commit_model import CommitTransformer
    from modeling.flops import count_parameters, meta_forward_flops

    text = bool(config["transformer"].get("text", False))
    cfg = commit_model_config(
        config["transformer"], tok_cfg.codebook_size, grid, text_width(config) if text else 0
    )
    flops = meta_forward_flops(
        lambda: CommitTransformer(cfg), lambda m: m(torch.zeros(1, cfg.seq_len, dtype=torch.long), "fp")
    )
    return {
        "family": "commit",
        "parameters": count_parameters(CommitTransformer, cfg),
        "seq_len": cfg.seq_len,
        "text_dim": cfg.text_dim,
        "num_classes": cfg.num_classes,
        "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "mlp_dim": cfg.mlp_dim,
        "forward_flops_per_clip": flops,
    }  # fmt: skip


def describe(config: dict) -> dict:
    from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
    from modeling.flops import count_parameters
    from modeling.tokenizers import tokenizer_config_from
    from modeling.typed_config import build_dataclass

    report: dict = {}
    model = discriminator = 0
    if "tokenizer" in config:
        family, tok_cfg = tokenizer_config_from(config["tokenizer"])
        num_frames = int((config.get("prepare") or {}).get("num_frames", 11))
        t, h, w = tok_cfg.token_grid(num_frames)
        tok_params = count_parameters(family.model_cls, tok_cfg)
        model += tok_params
        report["tokenizer"] = {
            "family": family.name,
            "parameters": tok_params,
            "num_frames": num_frames,
            "image_size": tok_cfg.image_size,
            "token_grid": [t, h, w],
            "tokens_per_clip": t * h * w,
            "codebook_size": tok_cfg.codebook_size,
        }
        loss = config.get("tokenizer_loss") or {}
        if float(loss.get("adv_weight", 0.1)) > 0:
            disc_cfg = build_dataclass(DiscriminatorConfig, {
                **(config.get("discriminator") or {}), "image_size": tok_cfg.image_size, "channels": tok_cfg.channels,
            })  # fmt: skip
            discriminator = count_parameters(StyleGANDiscriminator, disc_cfg)
            report["discriminator"] = {"parameters": discriminator, "dims": disc_cfg.dims}
        if "transformer" in config:
            from jobs.training.families import transformer_family

            build = {"maskgit": _maskgit_report, "commit": _commit_report}[transformer_family(config)]
            report["transformer"] = build(config, tok_cfg, (t, h, w))
            model += report["transformer"]["parameters"]
    # What a checkpoint holds (tokenizer + transformer; the text encoder is frozen and loaded by name) and,
    # separately, the discriminator that only tokenizer training builds.
    report["total_parameters"] = model
    report["discriminator_parameters"] = discriminator
    report["trained_parameters"] = model + discriminator
    report["bytes"] = {"fp32": 4 * model, "bf16": 2 * model}
    return report


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _flops(n: int) -> str:
    for scale, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} FLOP"


def format_report(report: dict) -> str:
    """The report as labelled lines with units (what a person reads; `--json` gives the numbers)."""
    lines = [f"config {report['config']}"]
    if tok := report.get("tokenizer"):
        t, h, w = tok["token_grid"]
        lines.append(
            f"  tokenizer      {tok['family']:<9} {_count(tok['parameters']):>7} parameters   "
            f"{tok['num_frames']} frames of {tok['image_size']}x{tok['image_size']} px -> {t}x{h}x{w} = "
            f"{tok['tokens_per_clip']} tokens per clip, {tok['codebook_size']} codes"
        )
    if disc := report.get("discriminator"):
        lines.append(
            f"  discriminator  {'stylegan':<9} {_count(disc['parameters']):>7} parameters   (tokenizer training only)"
        )
    if tr := report.get("transformer"):
        text = f", text {tr['text_dim']}-d" if tr.get("text_dim") else ", class-conditional"
        lines.append(
            f"  transformer    {tr['family']:<9} {_count(tr['parameters']):>7} parameters   {tr['seq_len']} tokens, "
            f"width {tr['dim']} x {tr['depth']} layer{'s' * (tr['depth'] != 1)}, {tr['heads']} heads, MLP {tr['mlp_dim']}"
            f"{text}; {_flops(tr['forward_flops_per_clip'])} per clip forward"
        )
    total, size = report["total_parameters"], report["bytes"]
    lines.append(
        f"  total          {'':<9} {_count(total):>7} parameters   what a checkpoint holds (tokenizer + transformer): "
        f"{_bytes(size['fp32'])} in fp32, {_bytes(size['bf16'])} in bf16"
    )
    if report["discriminator_parameters"]:
        lines.append(
            f"  trained        {'':<9} {_count(report['trained_parameters']):>7} parameters   with the discriminator"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="YAML config file or preset name (configs/<name>.yaml)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON (exact numbers, for scripts)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transformer.depth=12")


def main(args: argparse.Namespace) -> int:
    from jobs.config import load_config

    report = {"config": args.config, **describe(load_config(args.config, args.overrides))}
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.describe", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.describe", main, build_parser().parse_args()))
