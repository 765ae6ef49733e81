"""Pure parts of the MAGVIT quality benchmark (`benchmarks.magvit_quality`): synthetic clips, region PSNR,
detector motion agreement, summaries.

Axes: N clips, B batch, C channels, T frames, H/W pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pipelines.detector import detect
from pipelines.synth import MOTIONS, TRAIN_TRIPLES, Triple, sample_video


def render_clips(
    count: int, *, seed: int, num_frames: int, size: int, triples: Sequence[Triple] = TRAIN_TRIPLES
) -> tuple[np.ndarray, list[str]]:
    """`count` ground-truth clips (N, T, H, W, 3) uint8 cycling through `triples`, and their motions.

    Rendered in memory (no H.264 round trip): the benchmark measures models, not the codec. Clip i depends
    only on (seed, i), so train and evaluation sets from different seeds never share a clip.
    """
    frames, motions = [], []
    for i in range(count):
        colour, shape, motion = triples[i % len(triples)]
        rng = np.random.default_rng([seed, i])
        frames.append(sample_video(rng, colour, shape, motion, num_frames=num_frames, size=size))
        motions.append(motion)
    return np.stack(frames), motions


def motion_class_ids(motions: Sequence[str]) -> torch.Tensor:
    """Motion names -> (N,) long class ids in `MOTIONS` order (the class tokens of cg / cfp)."""
    return torch.tensor([MOTIONS.index(m) for m in motions], dtype=torch.long)


def clip_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """Per-clip PSNR (dB, pixels in [0, 1]) of a vs b, each (B, C, T, H, W) in [-1, 1], over the True pixels of
    mask (B, 1, T, H, W) (None: all pixels). (B,) float64; NaN for a clip whose mask is empty."""
    a, b = a.detach().double().clamp(-1, 1), b.detach().double().clamp(-1, 1)
    err = ((a - b) / 2).pow(2)  # (B, C, T, H, W)
    if mask is None:
        mask = torch.ones_like(err[:, :1], dtype=torch.bool)
    weight = mask.expand_as(err).double()
    count = weight.flatten(1).sum(1)
    mse = (err * weight).flatten(1).sum(1) / count.clamp(min=1)
    psnr = 10 * torch.log10(1.0 / mse.clamp(min=1e-10))
    return torch.where(count > 0, psnr, torch.full_like(psnr, math.nan)).numpy()


def detected_motions(frames: np.ndarray) -> list[str | None]:
    """(N, T, H, W, 3) uint8 -> the detector's motion per clip (None: no shape found)."""
    return [detect(clip).motion for clip in frames]


def agreement(got: Sequence[str | None], want: Sequence[str | None]) -> float:
    """Fraction of clips whose detected motion equals the reference's (a missing detection disagrees)."""
    if len(got) != len(want) or not got:
        raise ValueError(f"need two equal, non-empty lists, got {len(got)} and {len(want)}")
    return float(np.mean([g is not None and g == w for g, w in zip(got, want, strict=True)]))


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """Mean and median over the finite values (None when there are none), and how many there were."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return {"mean": None, "median": None, "n": 0}
    return {"mean": round(float(x.mean()), 4), "median": round(float(np.median(x)), 4), "n": int(x.size)}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, None when either is missing or b is 0."""
    return None if a is None or b is None or b == 0 else round(a / b, 4)
