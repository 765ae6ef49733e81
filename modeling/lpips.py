"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), VGG variant.

The distance between two images is the sum over five VGG16 layers of the spatial mean of a learned, non-negative
per-channel weighting of the squared difference of unit-normalised features. It is the `lpips` package's
`LPIPS(net="vgg", version="0.1")`: the VGG16 trunk comes from torchvision's ImageNet weights (`vgg16-397923af.pth`,
keys `features.N.*`) and the five 1x1 heads from the package's `weights/v0.1/vgg.pth` (keys `linK.model.1.weight`,
the index 1 because a dropout sits at 0). Its input scaling, (x - shift) / scale with shift = 2 * mean - 1 and
scale = 2 * std of ImageNet, is exactly `VGGFeatures`' normalisation of [-1, 1] input, so the trunk is shared
with the tokenizer's perceptual loss.

Shapes: a, b (B, 3, H, W) in [-1, 1] -> (B,) distances; per layer l the features are (B, C_l, H_l, W_l) with
C = 64, 128, 256, 512, 512 at strides 1, 2, 4, 8, 16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modeling.losses import VGG16_SOURCE, VGGFeatures
from modeling.weights import load_into, load_state_file

LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_LIN_SOURCE = (
    "The LPIPS heads are weights/v0.1/vgg.pth inside the `lpips` package (PyPI) or github.com/richzhang/"
    "PerceptualSimilarity; pass that file's local path."
)


class _NetLin(nn.Module):
    """lpips' NetLinLayer at eval time: (dropout, 1x1 conv C -> 1 without bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # lpips' normalize_tensor: divide by the channel norm plus eps (not F.normalize's max(norm, eps))
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = VGGFeatures()
        self.lins = nn.ModuleList([_NetLin(c) for c in LPIPS_CHANNELS])

    @classmethod
    def from_files(cls, vgg16_path: str | Path, lin_path: str | Path) -> LPIPS:
        """The torchvision VGG16 file (its classifier is ignored) and lpips' v0.1 `vgg.pth`; eval mode."""
        vgg = load_state_file(vgg16_path, "VGG16 weights (torchvision layout)", VGG16_SOURCE)
        lins = load_state_file(lin_path, "LPIPS v0.1 VGG heads", LPIPS_LIN_SOURCE)
        net = cls()
        load_into(net.net, {k: v for k, v in vgg.items() if k.startswith("features.")}, vgg16_path, "VGG16")
        renamed = {f"{k[3]}.{k[5:]}" if k.startswith("lin") else k: v for k, v in lins.items()}
        load_into(net.lins, renamed, lin_path, "LPIPS v0.1 VGG heads (lin0..lin4)")
        return net.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b (B, 3, H, W) in [-1, 1] -> (B,) LPIPS distances."""
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(
                f"expected two image batches (B, 3, H, W) of one shape, got {a.shape} and {b.shape}"
            )
        total = a.new_zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self.net(a), self.net(b), strict=True):
            diff = (_unit_channels(fa) - _unit_channels(fb)).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total
