"""Pretrained weight files the user supplies: the one place that opens them and says what is wrong.

We never download or ship the feature networks' weights (I3D, Inception, VGG16, LPIPS heads, CLIP): every
metric and perceptual loss loads them from a local path. A `.safetensors` file is read as tensors; any other
file goes through `torch.load(weights_only=True)`, which refuses pickled objects, so a weight file cannot run
code. A missing or mismatched file is one error naming the file, what it should hold and where such weights
come from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightsFileError(ValueError):
    """A weight file that is unreadable, or not the network it should be."""


class WeightsFileMissing(FileNotFoundError):
    """No weight file at the path given."""


def load_state_file(path: str | Path, what: str, where: str) -> dict[str, torch.Tensor]:
    """The state dict in `path` (tensors only). `what`: the network ("FID Inception-v3 weights"); `where`: where
    such a file comes from, for the error a user sees when it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileMissing(f"{what} not found: {path}. {where}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # weights_only refuses arbitrary pickled objects
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise WeightsFileError(
            f"{path} is not a readable {what} file ({type(err).__name__}: {err}). {where}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(
            f"{path}: expected a state dict of tensors for {what}, got {type(state).__name__}"
        )
    return state


def load_into(net: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> nn.Module:
    """Load `state` into `net` strictly (BatchNorm's `num_batches_tracked` may be absent) -> `net` in eval mode,
    gradients off: a fixed feature extractor."""
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        raise WeightsFileError(f"{path}: tensor shapes do not match {what}: {err}") from err
    # BN counters are absent from checkpoints saved by old torch versions and unused in eval mode
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsFileError(
            f"{path} is not a {what} state dict: {len(missing)} missing keys (e.g. {missing[:5]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:5]})"
        )
    return net.eval().requires_grad_(False)
