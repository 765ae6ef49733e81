"""Convolutional building blocks of the MAGVIT 3D-VQ (Yu et al. 2022, sec. 3.1) and its 2D counterpart.

The encoder and decoder are VQGAN's: cascaded residual blocks (GroupNorm -> swish -> conv, twice, plus a skip)
interleaved with average-pooling downsampling and nearest-resize + conv upsampling. In 3D every 2D convolution
becomes a 3D one with a temporal axis; downsampling is 3D (time and space) in the shallow levels of the
encoder and 2D (space only) in the deep ones, and the decoder mirrors it (2D upsampling first, then 3D).

`dims` is 2 or 3 throughout; both variants build the *same* module tree (same state-dict keys, kernels
(O, I, k, k) vs (O, I, k, k, k)), which is what lets `modeling.magvit_vq.inflate_2d_to_3d` map one onto the other.

Padding: every convolution pads explicitly with F.pad (default "reflect", the paper's replacement for zero
padding "to improve token consistency for the same content at different locations"), so a constant input
stays constant up to the borders. In time, reflect padding needs more frames than the pad width; when a
level has fewer (a 1-frame latent after 4x temporal downsampling of 4 frames, or an image), that level's
temporal pad falls back to "replicate", which pads a constant-in-time signal with the same constant.

Axes: B batch, C channels, T frames, H/W pixels; 3D tensors are (B, C, T, H, W), 2D ones (B, C, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modeling.activation_checkpointing import Checkpointable

if TYPE_CHECKING:
    from modeling.magvit_vq import MagvitVQConfig

PAD_MODES = ("reflect", "replicate", "zeros")


def pad_same(x: torch.Tensor, kernel_size: tuple[int, ...], mode: str) -> torch.Tensor:
    """Pad the trailing len(kernel_size) axes so a stride-1 convolution keeps their size.

    Split as ((k - 1) // 2, k // 2) per axis (what 'SAME' does for odd and even k). Reflect padding of an axis
    shorter than or equal to its pad width (time in a deep 3D level) replicates that axis instead.
    """
    pads: list[int] = []
    for k in reversed(kernel_size):
        pads += [(k - 1) // 2, k // 2]
    if not any(pads):
        return x
    if mode == "zeros":
        return F.pad(x, pads)
    if mode == "reflect":
        short = [
            i for i in range(len(kernel_size))
            if x.shape[-1 - i] <= max(pads[2 * i], pads[2 * i + 1])
        ]  # fmt: skip
        if short:
            reflect = [p if i // 2 not in short else 0 for i, p in enumerate(pads)]
            replicate = [p if i // 2 in short else 0 for i, p in enumerate(pads)]
            return F.pad(F.pad(x, reflect, mode="reflect"), replicate, mode="replicate")
    return F.pad(x, pads, mode=mode)


class Conv2dSame(nn.Conv2d):
    """Stride-1 Conv2d whose padding is done by `pad_same` (reflect by default) instead of zeros."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, *, bias: bool = True, pad_mode: str = "reflect"
    ):
        super().__init__(cin, cout, kernel_size, bias=bias)
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.pad_mode))


class Conv3dSame(nn.Conv3d):
    """Stride-1 Conv3d padded by `pad_same` in time and space."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, *, bias: bool = True, pad_mode: str = "reflect"
    ):
        super().__init__(cin, cout, kernel_size, bias=bias)
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.pad_mode))


def conv(dims: int, cin: int, cout: int, kernel_size: int, *, bias: bool, pad_mode: str) -> nn.Module:
    cls = Conv2dSame if dims == 2 else Conv3dSame
    return cls(cin, cout, kernel_size, bias=bias, pad_mode=pad_mode)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    g = min(groups, channels)
    if channels % g:
        raise ValueError(f"{channels} channels do not split into {g} GroupNorm groups (norm_groups={groups})")
    return nn.GroupNorm(g, channels, eps=1e-6)  # eps as flax.linen.GroupNorm


class ResBlock(Checkpointable):
    """GN -> swish -> conv3 -> GN -> swish -> conv3 (no biases), plus x (through a 1x1 conv if widths differ).

    Checkpointable (`modeling.activation_checkpointing`): the full-resolution blocks hold most activations."""

    def __init__(self, dims: int, cin: int, cout: int, groups: int, pad_mode: str):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = conv(dims, cin, cout, 3, bias=False, pad_mode=pad_mode)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = conv(dims, cout, cout, 3, bias=False, pad_mode=pad_mode)
        self.skip = conv(dims, cin, cout, 1, bias=False, pad_mode=pad_mode) if cin != cout else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.silu(self.norm1(x)))
        y = self.conv2(F.silu(self.norm2(y)))
        return y + self.skip(x)


def downsample(x: torch.Tensor, temporal: bool) -> torch.Tensor:
    """2x average pooling in space, and in time too when `temporal` (3D only). No padding: sizes are even."""
    if x.dim() == 4:
        return F.avg_pool2d(x, 2)
    return F.avg_pool3d(x, (2 if temporal else 1, 2, 2))


def upsample(x: torch.Tensor, temporal: bool) -> torch.Tensor:
    """2x nearest-neighbour resize in space, and in time too when `temporal` (3D only)."""
    if x.dim() == 4:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, scale_factor=(2.0 if temporal else 1.0, 2.0, 2.0), mode="nearest")


def _res_stack(dims: int, cin: int, cout: int, n: int, cfg: MagvitVQConfig) -> nn.Sequential:
    return nn.Sequential(
        *(ResBlock(dims, cin if j == 0 else cout, cout, cfg.norm_groups, cfg.padding) for j in range(n))
    )


class Encoder(nn.Module):
    """(B, C, [T,] H, W) pixels -> (B, D, [T/4,] H/8, W/8) continuous latents (for the B/L presets).

    conv3 (no bias) -> per level: num_res_blocks ResBlocks at base * mult[i], then 2x average pooling (3D where
    temporal_downsample[i], else 2D; none after the last level) -> num_res_blocks more ResBlocks -> GN -> swish
    -> 1x1 conv to the embedding width.
    """

    def __init__(self, cfg: MagvitVQConfig, dims: int):
        super().__init__()
        self.temporal = (
            [bool(t) for t in cfg.temporal_downsample]
            if dims == 3
            else [False] * len(cfg.temporal_downsample)
        )
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        self.conv_in = conv(dims, cfg.channels, cfg.base_channels, 3, bias=False, pad_mode=cfg.padding)
        self.levels = nn.ModuleList()
        cin = cfg.base_channels
        for w in widths:
            self.levels.append(_res_stack(dims, cin, w, cfg.num_res_blocks, cfg))
            cin = w
        self.mid = _res_stack(dims, cin, cin, cfg.num_res_blocks, cfg)
        self.norm_out = group_norm(cin, cfg.norm_groups)
        self.conv_out = conv(dims, cin, cfg.embedding_dim, 1, bias=True, pad_mode=cfg.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, level in enumerate(self.levels):
            x = level(x)
            if i < len(self.temporal):
                x = downsample(x, self.temporal[i])
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """The encoder mirrored: (B, D, [t,] h, w) quantized latents -> (B, C, [4t,] 8h, 8w) pixels.

    conv3 to base * mult[-1] -> num_res_blocks ResBlocks -> per level from the deepest: num_res_blocks
    ResBlocks at base * mult[i], then (except at the shallowest) nearest 2x resize (temporal where the encoder's
    matching pooling was) + conv3 -> GN -> swish -> conv3 to pixels. Upsampling is thus 2D first, then 3D.
    """

    def __init__(self, cfg: MagvitVQConfig, dims: int):
        super().__init__()
        temporal = (
            [bool(t) for t in cfg.temporal_downsample]
            if dims == 3
            else [False] * len(cfg.temporal_downsample)
        )
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        cin = widths[-1]
        self.conv_in = conv(dims, cfg.embedding_dim, cin, 3, bias=True, pad_mode=cfg.padding)
        self.mid = _res_stack(dims, cin, cin, cfg.num_res_blocks, cfg)
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.temporal: list[bool] = []
        for i in reversed(range(len(widths))):
            self.levels.append(_res_stack(dims, cin, widths[i], cfg.num_res_blocks, cfg))
            cin = widths[i]
            if i > 0:
                self.temporal.append(temporal[i - 1])
                self.ups.append(conv(dims, cin, cin, 3, bias=True, pad_mode=cfg.padding))
        self.norm_out = group_norm(cin, cfg.norm_groups)
        self.conv_out = conv(dims, cin, cfg.channels, 3, bias=True, pad_mode=cfg.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(x))
        for i, level in enumerate(self.levels):
            x = level(x)
            if i < len(self.ups):
                x = self.ups[i](upsample(x, self.temporal[i]))
        return self.conv_out(F.silu(self.norm_out(x)))
