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
    config_cls: type  # has usable_frames(n) and token_grid(n)
    # C-ViViT encodes the first frame alone, so a still is a one-frame clip and trains with the videos;
    # MAGVIT-VQ takes multiples of its temporal compression, so it trains on (cropped) videos only.
    takes_stills: bool
    title: str  # what a person calls it
    # the transformer families (`modeling.generators.GENERATORS` kinds) that are trained on its tokens
    transformers: tuple[str, ...] = ()

    def config(self, values: dict[str, Any] | None) -> Any:
        return build_dataclass(self.config_cls, values)

    def usable_frames(self, config: dict[str, Any], num_frames: int) -> int:
        """The longest clip length <= num_frames a tokenizer of this family (its checkpoint's config dict)
        takes; 0 for none."""
        return self.config(config).usable_frames(num_frames)


FAMILIES: dict[str, TokenizerFamily] = {
    "cvivit": TokenizerFamily("cvivit", CViViT, CViViTConfig, True, "C-ViViT", transformers=("maskgit",)),
    "magvit_vq": TokenizerFamily(
        "magvit_vq", MagvitVQ, MagvitVQConfig, False, "MAGVIT-VQ", transformers=("commit",)
    ),
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
    return family, family.config(values)


def build_tokenizer(section: dict[str, Any] | None) -> nn.Module:
    family, cfg = tokenizer_config_from(section)
    return family.model_cls(cfg)


def check_tokenizer_kind(kind: str | None, where: str) -> str:
    if kind not in FAMILIES:
        raise ValueError(
            f"{where} holds a {kind!r} checkpoint, not a tokenizer ({', '.join(TOKENIZER_KINDS)})"
        )
    return kind


def check_tokenizer_for(transformer: str, kind: str | None, where: str) -> TokenizerFamily:
    """The family of a tokenizer checkpoint (`kind`) if the `transformer` family trains on its tokens, else a
    ValueError naming the checkpoint, what it holds and what that transformer needs."""
    family = tokenizer_family(check_tokenizer_kind(kind, where))
    if transformer not in family.transformers:
        needed = [f.title for f in FAMILIES.values() if transformer in f.transformers]
        raise ValueError(
            f"{where} holds a {family.title} tokenizer ({kind!r}); the {transformer} transformer needs a "
            f"{' or '.join(needed)} tokenizer"
        )
    return family
