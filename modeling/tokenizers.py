"""Tokenizer families, selected by config wherever a tokenizer is used (train-tokenizer, tokenize, generate,
serve): `tokenizer.family: cvivit` (Phenaki's C-ViViT, the default) or `magvit_vq` (MAGVIT's 3D-VQ).

Both expose the same interface, which is all the jobs rely on: `forward(video) -> (recon, indices, vq_loss,
commit_loss, perplexity, used_codes, latents)`, `encode(video (B,C,T,H,W)) -> (B,t,h,w)`, `decode(indices)`,
`token_grid(T)`, `latent_frames(T)`, `num_frames(t)`, and `.quantizer` with `restart_dead_codes`. They differ in
which clip lengths they take: C-ViViT 1 + k*t_p (the first frame alone), MAGVIT-VQ multiples of 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from modeling.cvivit import CViViT, CViViTConfig
from modeling.magvit_vq import MagvitVQ, MagvitVQConfig
from modeling.typed_config import build_dataclass


@dataclass(frozen=True)
class TokenizerFamily:
    name: str  # the checkpoint kind
    model_cls: type[nn.Module]
    config_cls: type


FAMILIES: dict[str, TokenizerFamily] = {
    "cvivit": TokenizerFamily("cvivit", CViViT, CViViTConfig),
    "magvit_vq": TokenizerFamily("magvit_vq", MagvitVQ, MagvitVQConfig),
}
TOKENIZER_KINDS = tuple(FAMILIES)


def tokenizer_family(name: str) -> TokenizerFamily:
    if name not in FAMILIES:
        raise ValueError(
            f"unknown tokenizer family {name!r}; known: {sorted(FAMILIES)} (set tokenizer.family)"
        )
    return FAMILIES[name]


def tokenizer_config_from(section: dict[str, Any] | None) -> tuple[TokenizerFamily, Any]:
    """A config file's `tokenizer` section (with optional `family`) -> (family, typed config)."""
    values = dict(section or {})
    family = tokenizer_family(values.pop("family", "cvivit"))
    return family, build_dataclass(family.config_cls, values)


def build_tokenizer(section: dict[str, Any] | None) -> nn.Module:
    family, cfg = tokenizer_config_from(section)
    return family.model_cls(cfg)


def check_tokenizer_kind(kind: str | None, where: str) -> str:
    if kind not in FAMILIES:
        raise ValueError(
            f"{where} holds a {kind!r} checkpoint, not a tokenizer ({', '.join(TOKENIZER_KINDS)})"
        )
    return kind


def clip_frames(kind: str, config: dict[str, Any], latent_frames: int) -> int:
    """Frames of a clip with `latent_frames` latent frames, from a checkpoint's config dict (no model built)."""
    if kind == "cvivit":
        return 1 + (latent_frames - 1) * int(config["temporal_patch_size"])
    cfg = build_dataclass(MagvitVQConfig, config)
    return latent_frames * cfg.temporal_compression


def tokens_per_side(kind: str, config: dict[str, Any]) -> int:
    """h_z = w_z from a checkpoint's config dict."""
    family = tokenizer_family(kind)
    return int(build_dataclass(family.config_cls, config).grid)
