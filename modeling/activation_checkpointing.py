"""Activation checkpointing: recompute a block's activations in the backward pass instead of storing them.

The repeated blocks of every model (transformer `Block`s of C-ViViT, MaskGIT and COMMIT; the MAGVIT
`ResBlock`s) subclass `Checkpointable`. With checkpointing on, a training forward keeps only each block's
input; backward re-runs the block to get the rest. Activation memory of a depth-L stack drops from
O(L * activations per block) to O(L * block input + one block's activations), for one extra forward
(about +33% step FLOPs). MFU figures count model FLOPs only, so they drop by that factor (docs/training.md).

Non-reentrant `torch.utils.checkpoint` is used: it supports keyword arguments and inputs that do not require
grad, and it re-fires module hooks in the recomputation, which is what DeepSpeed ZeRO-3 needs to gather the
block's partitioned parameters again. Pure PyTorch: the trainers switch it on with
`set_activation_checkpointing`, evaluation and sampling (no grad) never recompute.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointable(nn.Module):
    """A module whose `forward` runs `_forward`, under `torch.utils.checkpoint` when switched on and training."""

    checkpoint_activations: bool = (
        False  # a class default: switched per instance by set_activation_checkpointing
    )

    def forward(self, *args, **kwargs):
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False, **kwargs)
        return self._forward(*args, **kwargs)

    def _forward(self, *args, **kwargs):
        raise NotImplementedError


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch checkpointing on or off for every `Checkpointable` in `model`; returns how many there are."""
    blocks = [m for m in model.modules() if isinstance(m, Checkpointable)]
    for block in blocks:
        block.checkpoint_activations = bool(enabled)
    return len(blocks)
