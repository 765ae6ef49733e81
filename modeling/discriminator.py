"""StyleGAN discriminator with blur resampling (Karras et al.; Phenaki appendix B.1: "StyleGAN discriminator
with blur resample, channel multiplier 1").

`dims=2` judges frames independently (video frames folded into the batch); `dims=3` is the 3D-inflated
variant (MAGVIT): 3D convolutions, blur-downsampled in space, average-pooled in time while frames remain.
Axes: B batch, C channels, T frames, H/W pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class DiscriminatorConfig:
    image_size: int = 128
    channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    dims: int = 2  # 2: per-frame; 3: spatio-temporal
    mbstd_group: int = 4


def _blur_kernel() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum()


class Blur(nn.Module):
    """Low-pass FIR filter [1,3,3,1]^2 applied per channel before strided downsampling (anti-aliasing)."""

    def __init__(self, channels: int, dims: int):
        super().__init__()
        self.channels, self.dims = channels, dims
        kernel = _blur_kernel()
        kernel = kernel[None, None].repeat(channels, 1, 1, 1)
        if dims == 3:
            kernel = kernel[:, :, None]  # (C, 1, 1, 4, 4): spatial only
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 2:
            return F.conv2d(F.pad(x, (2, 1, 2, 1), mode="reflect"), self.kernel, groups=self.channels)
        return F.conv3d(F.pad(x, (2, 1, 2, 1, 0, 0), mode="reflect"), self.kernel, groups=self.channels)


class DownBlock(nn.Module):
    """Residual block: conv -> lrelu -> blur -> strided conv, with a blurred 1x1 skip; output / sqrt(2)."""

    def __init__(self, cin: int, cout: int, dims: int):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        stride = 2 if dims == 2 else (1, 2, 2)
        self.conv1 = conv(cin, cin, 3, padding=1)
        self.blur = Blur(cin, dims)
        self.conv2 = conv(cin, cout, 3, stride=stride, padding=1)
        self.skip = conv(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.leaky_relu(self.conv2(self.blur(y)), 0.2)
        out = (y + self.skip(self.blur(x))) / math.sqrt(2)
        if self.dims == 3 and out.shape[2] > 1:
            out = F.avg_pool3d(out, (2, 1, 1), ceil_mode=True)  # halve time too while frames remain
        return out


class StyleGANDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        conv = nn.Conv2d if cfg.dims == 2 else nn.Conv3d
        num_down = int(math.log2(cfg.image_size // 4))
        chans = [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(num_down + 1)]
        self.stem = conv(cfg.channels, chans[0], 1)
        self.blocks = nn.Sequential(*(DownBlock(chans[i], chans[i + 1], cfg.dims) for i in range(num_down)))
        self.final_conv = conv(chans[-1] + 1, chans[-1], 3, padding=1)
        self.fc = nn.Linear(chans[-1] * 4 * 4, chans[-1])  # the blocks leave a 4x4 map
        self.out = nn.Linear(chans[-1], 1)

    def _minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        """Append the across-batch feature std as a channel (StyleGAN), so D can see sample diversity."""
        b = x.shape[0]
        g = min(self.cfg.mbstd_group, b)
        while b % g:
            g -= 1
        y = x.reshape(g, -1, *x.shape[1:]).float()
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=list(range(1, y.dim() - 1)), keepdim=True)
        std = std.repeat(g, 1, *x.shape[2:]).to(x.dtype)
        return torch.cat([x, std], dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, C, T, H, W) -> logits (B * T,) for dims=2, (B,) for dims=3."""
        x = rearrange(video, "b c t h w -> (b t) c h w") if self.cfg.dims == 2 else video
        x = self.blocks(F.leaky_relu(self.stem(x), 0.2))
        x = F.leaky_relu(self.final_conv(self._minibatch_std(x)), 0.2)
        if x.dim() == 5:
            x = x.mean(dim=2)  # 3D: pool what is left of time, so any clip length is judged
        return self.out(F.leaky_relu(self.fc(x.flatten(1)), 0.2)).squeeze(-1)
