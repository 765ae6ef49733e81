"""Serving checkpoints: `model.safetensors` + `config.yaml` + `digest.txt` in one directory.

Loading never unpickles: weights come from safetensors, the config from YAML (safe_load) and is rebuilt
into the model's typed dataclass. The digest (sha256 of the weights file) identifies a tokenizer so a token
cache made by another tokenizer is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.typed_config import build_dataclass


def checkpoint_kinds() -> dict[str, tuple[type, type]]:
    """Every model family a checkpoint can hold: kind -> (model class, config class)."""
    from modeling.commit_model import CommitTransformer, CommitTransformerConfig
    from modeling.cvivit import CViViT, CViViTConfig
    from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
    from modeling.magvit_vq import Magvit2DVQ, MagvitVQ, MagvitVQConfig
    from modeling.maskgit import MaskGIT, MaskGITConfig

    return {
        "cvivit": (CViViT, CViViTConfig),
        "magvit_vq_2d": (
            Magvit2DVQ,
            MagvitVQConfig,
        ),  # before magvit_vq: kind_of takes the first isinstance match
        "magvit_vq": (MagvitVQ, MagvitVQConfig),
        "maskgit": (MaskGIT, MaskGITConfig),
        "commit": (CommitTransformer, CommitTransformerConfig),
        "discriminator": (StyleGANDiscriminator, DiscriminatorConfig),
    }


def kind_of(model: nn.Module) -> str:
    for kind, (cls, _) in checkpoint_kinds().items():
        if isinstance(model, cls):
            return kind
    raise TypeError(f"no checkpoint kind registered for {type(model).__name__}")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_checkpoint(directory: str | Path, model: nn.Module, config: Any, extra: dict | None = None) -> str:
    """Write atomically (temp dir, then rename): a reader never sees a half-written checkpoint.

    Returns the digest. An existing directory is replaced; anything else in it (a `tokenizer/` subdirectory,
    training logs) is carried over.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        digest = file_digest(tmp / "model.safetensors")
        meta = {
            "kind": kind_of(model),
            "config": dataclasses.asdict(config),
            "extra": extra or {},
            "digest": digest,
        }
        (tmp / "config.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        (tmp / "digest.txt").write_text(digest + "\n")
        if directory.exists():
            for child in directory.iterdir():
                if not (tmp / child.name).exists():
                    shutil.move(str(child), str(tmp / child.name))
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return digest


@dataclass
class Loaded:
    model: nn.Module
    config: Any
    kind: str
    extra: dict
    digest: str
    path: Path


def read_checkpoint_meta(directory: str | Path) -> dict:
    path = Path(directory) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} is not a phenaki checkpoint (no config.yaml): pass the directory that "
            "`phenaki train-tokenizer` / `phenaki train-transformer` wrote with --out"
        )
    return yaml.safe_load(path.read_text())


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Loaded:
    directory = Path(directory)
    meta = read_checkpoint_meta(directory)
    model_cls, config_cls = checkpoint_kinds()[meta["kind"]]
    config = build_dataclass(config_cls, meta["config"])
    model = model_cls(config)
    model.load_state_dict(load_file(str(directory / "model.safetensors"), device=str(device)))
    model.to(device).eval()
    return Loaded(model, config, meta["kind"], meta.get("extra") or {}, meta.get("digest", ""), directory)
