"""`phenaki describe --config CFG`: what a preset builds, as JSON, without allocating a single weight.

Parameter counts come from the real modules built on the meta device; token shapes from the tokenizer and
the clip length (`prepare.num_frames`); the text width from `transformer.text_dim` or, when unset, from the
local text encoder's config. Forward FLOPs per clip are what MFU estimates divide by.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from jobs.runtime import setup_logging


def text_width(config: dict) -> int:
    transformer = config.get("transformer") or {}
    if "text_dim" in transformer:
        return int(transformer["text_dim"])
    from modeling.text_encoder import resolve_text_encoder

    _, path, family = resolve_text_encoder((config.get("text_encoder") or {}).get("name", "minilm"))
    encoder_config = json.loads((path / "config.json").read_text())
    return int(encoder_config["d_model" if family == "t5" else "hidden_size"])


def describe(config: dict) -> dict:
    from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
    from modeling.flops import count_parameters, maskgit_forward_flops
    from modeling.maskgit import MaskGIT, MaskGITConfig, code_sizes
    from modeling.presets import build_dataclass
    from modeling.tokenizers import tokenizer_config_from

    report: dict = {}
    total = 0
    if "tokenizer" in config:
        family, tok_cfg = tokenizer_config_from(config["tokenizer"])
        num_frames = int((config.get("prepare") or {}).get("num_frames", 11))
        t, h, w = tok_cfg.token_grid(num_frames)
        tok_params = count_parameters(family.model_cls, tok_cfg)
        total += tok_params
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
            })
            report["discriminator"] = {"parameters": count_parameters(StyleGANDiscriminator, disc_cfg),
                                       "dims": disc_cfg.dims}
        if "transformer" in config:
            max_text = int((config.get("text_encoder") or {}).get("max_length", 32))
            mg_cfg = build_dataclass(MaskGITConfig, {
                **config["transformer"], **code_sizes(dataclasses.asdict(tok_cfg), config["transformer"]),
                "seq_len": t * h * w, "tokens_per_frame": h * w, "text_dim": text_width(config),
            })
            mg_params = count_parameters(MaskGIT, mg_cfg)
            total += mg_params
            report["transformer"] = {
                "family": "maskgit",
                "parameters": mg_params,
                "seq_len": mg_cfg.seq_len,
                "text_dim": mg_cfg.text_dim,
                "dim": mg_cfg.dim, "depth": mg_cfg.depth, "heads": mg_cfg.heads, "mlp_dim": mg_cfg.mlp_dim,
                "forward_flops_per_clip": maskgit_forward_flops(mg_cfg, text_len=max_text),
                "text_length": max_text,
            }
    report["total_parameters"] = total  # trained weights: tokenizer + transformer (the text encoder is frozen)
    report["bytes"] = {"fp32": 4 * total, "bf16": 2 * total}
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file or preset name (configs/<name>.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transformer.depth=12")


def main(args: argparse.Namespace) -> int:
    from modeling.presets import load_config

    setup_logging()
    report = {"config": args.config, **describe(load_config(args.config, args.overrides))}
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.describe", description=__doc__)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(main(build_parser().parse_args()))
