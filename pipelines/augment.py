"""Colour augmentation for tokenizer training: hue rotation about the grey axis.

Why: a tokenizer learns the codes of the colours and motions it is shown together. In the demo world purple
appears only in stills, so a moving purple object falls between the codes learned for still purple and
moving blue, and its reconstruction drifts to blue after a few frames. Rotating each clip's colours about
the grey axis by a random angle shows the tokenizer moving objects of every hue, so colour and motion are
learned apart. Grey (the background, black, white) is on the axis and is left exactly as it was.

The rotation is linear in RGB (Rodrigues' formula about k = (1, 1, 1)/sqrt(3)), so it acts the same on
[0, 1] and [-1, 1] pixels; results are clamped back into [-1, 1]. Only the tokenizer's loader uses it: the
transformer's captions name colours, which a rotation would contradict.
"""

from __future__ import annotations

import math

import torch


def hue_rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(N,) angles in radians -> (N, 3, 3) rotations of RGB about the grey axis (1, 1, 1)."""
    k = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=angles.dtype)
    cross = torch.tensor(
        [[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=angles.dtype
    )  # [k]x, the cross-product matrix of k
    outer = torch.outer(k, k)
    cos = angles.cos()[:, None, None]
    sin = angles.sin()[:, None, None]
    eye = torch.eye(3, dtype=angles.dtype)
    return cos * eye + sin * cross + (1.0 - cos) * outer


def rotate_hues(videos: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """videos (B, 3, T, H, W) in [-1, 1], angles (B,) radians -> the same clips with rotated hues."""
    if videos.shape[1] != 3 or angles.shape != (videos.shape[0],):
        raise ValueError(f"expected videos (B, 3, T, H, W) and angles (B,), got {tuple(videos.shape)} and "
                         f"{tuple(angles.shape)}")  # fmt: skip
    rot = hue_rotation_matrices(angles.to(torch.float64)).to(videos.dtype)  # (B, 3, 3)
    out = torch.einsum("bij,bjthw->bithw", rot, videos)
    return out.clamp_(-1.0, 1.0)


def random_hue_rotation(videos: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each clip's hues by a uniform random angle with `probability`; the others are left unchanged.

    The draw comes only from `generator`, so a loader that seeds it from (seed, rank, step) gives a resumed
    run the same augmented batches as the uninterrupted one.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"hue rotation probability must be in [0, 1], got {probability}")
    b = videos.shape[0]
    chosen = torch.rand(b, generator=generator) < probability
    angles = torch.rand(b, generator=generator) * (2 * math.pi)
    angles = torch.where(chosen, angles, torch.zeros_like(angles))
    if not bool(chosen.any()):
        return videos
    return rotate_hues(videos, angles)
