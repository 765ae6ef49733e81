"""Serving checkpoints: `model.safetensors` + `config.yaml` + `digest.txt` in one directory.

Loading never unpickles: weights come from safetensors (checked against the recorded digest first), the
config from YAML (safe_load) and is rebuilt into the model's typed dataclass. The digest (sha256 of the weights file) identifies a tokenizer so a token
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

from modeling.text_encoder import DEFAULT_TEXT_ENCODER
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


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, hex, read in 4 MiB chunks (checkpoint files can be tens of GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """A checkpoint's identity: the first 16 hex digits of its weights' sha256."""
    return sha256_file(path)[:16]


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

    @property
    def generation(self) -> GenerationRecord:
        """A transformer checkpoint's generation record (typed `extra`)."""
        return GenerationRecord.from_extra(self.extra, self.path)

    @property
    def tokenizer_record(self) -> TokenizerRecord:
        """A tokenizer checkpoint's training record (typed `extra`)."""
        return TokenizerRecord.from_extra(self.extra, self.path)


@dataclass(frozen=True)
class GenerationRecord:
    """What a transformer checkpoint's `extra` records for generating from it (written by the trainers,
    `jobs.training.transformer` / `commit`), read in one place with one set of defaults."""

    num_frames: int  # frames per generated clip
    fps: float
    text_encoder: str = DEFAULT_TEXT_ENCODER  # the encoder the token cache's captions were embedded with
    max_text_length: int = 32
    sampling: dict = dataclasses.field(default_factory=dict)  # MaskGIT: the preset's `sampling` section
    commit: dict = dataclasses.field(default_factory=dict)  # COMMIT: generation defaults + condition geometry
    class_names: tuple[str, ...] = ()  # COMMIT: class i's name
    step: int | None = None  # the training step exported
    tokenizer_digest: str | None = None
    token_grid: tuple[int, ...] | None = None
    data: str | tuple[str, ...] | None = None  # provenance: the token cache(s) it was trained on

    def to_extra(self) -> dict:
        return _record_to_extra(self)

    @classmethod
    def from_extra(cls, extra: dict, where: str | Path = "checkpoint") -> GenerationRecord:
        missing = [k for k in ("num_frames", "fps") if k not in extra]
        if missing:
            raise ValueError(
                f"{where}/config.yaml extra lacks {missing} (needed to generate): not a transformer checkpoint "
                "written by `phenaki train-transformer`"
            )
        values = _record_values(cls, extra)
        return cls(
            **{
                **values,
                "num_frames": int(values["num_frames"]),
                "fps": float(values["fps"]),
                "text_encoder": str(values.get("text_encoder", cls.text_encoder)),
                "max_text_length": int(values.get("max_text_length", cls.max_text_length)),
                "sampling": dict(values.get("sampling") or {}),
                "commit": dict(values.get("commit") or {}),
                "class_names": tuple(str(c) for c in values.get("class_names") or ()),
                "token_grid": tuple(values["token_grid"]) if values.get("token_grid") else None,
                "data": _data_field(values.get("data")),
            }
        )


@dataclass(frozen=True)
class TokenizerRecord:
    """What a tokenizer checkpoint's `extra` records (written by `jobs.training.tokenizer`): the clips it was
    trained on, so evaluation and tokenizing know the clip length and rate without the data."""

    num_frames: int  # frames per training clip (1 for an image-only tokenizer)
    fps: float | None = None
    token_grid: tuple[int, ...] | None = None  # (t, h, w) of one training clip
    step: int | None = None
    data: str | None = None  # provenance: the clip shards
    perceptual: dict | None = None  # which perceptual terms trained it (`modeling.losses.perceptual_status`)

    def to_extra(self) -> dict:
        return _record_to_extra(self)

    @classmethod
    def from_extra(cls, extra: dict, where: str | Path = "checkpoint") -> TokenizerRecord:
        if "num_frames" not in extra:
            raise ValueError(
                f"{where}/config.yaml extra lacks num_frames: not a tokenizer checkpoint written by "
                "`phenaki train-tokenizer`"
            )
        values = _record_values(cls, extra)
        return cls(
            **{
                **values,
                "num_frames": int(values["num_frames"]),
                "fps": float(values["fps"]) if "fps" in values else None,
                "token_grid": tuple(values["token_grid"]) if values.get("token_grid") else None,
            }
        )


def _record_to_extra(record: Any) -> dict:
    """The `extra` a trainer writes for a record (what `from_extra` reads back equal): YAML types, no Nones."""
    return _plain({k: v for k, v in dataclasses.asdict(record).items() if v is not None})


def _record_values(cls: type, extra: dict) -> dict:
    """The keys of `extra` that are fields of the record `cls`, Nones dropped (older or newer keys ignored)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in extra.items() if k in known and v is not None}


def _data_field(value: Any) -> str | tuple[str, ...] | None:
    """A record's `data`: one dataset path, or several (a YAML list) as a tuple."""
    return value if value is None or isinstance(value, str) else tuple(value)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML writes and `yaml.safe_load` reads back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
    weights = directory / "model.safetensors"
    if meta.get("digest") and file_digest(weights) != meta["digest"]:
        raise ValueError(
            f"{weights} does not match the digest in {directory}/config.yaml (changed or truncated since it was "
            "saved): export the checkpoint again, or copy it whole"
        )
    model.load_state_dict(load_file(str(weights), device=str(device)))
    model.to(device).eval()
    return Loaded(model, config, meta["kind"], meta.get("extra") or {}, meta.get("digest", ""), directory)
