"""Learning-rate schedule of Phenaki's tables 6-7: linear warm-up to a peak, then cosine decay.

A pure function of the step, so a resumed run gets the same rate as an uninterrupted one without
having to restore any scheduler state.
"""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """Learning rate at optimizer step `step` (0-based).

    Warm-up rises linearly from peak/warmup_steps at step 0 to `peak_lr` at step `warmup_steps - 1`
    (step 0 is not 0, so the first update is not wasted). Then cosine decay from `peak_lr` down to
    `min_ratio * peak_lr` at `total_steps`; steps past the end stay at the floor.
    """
    if peak_lr < 0:
        raise ValueError(f"peak_lr must be >= 0, got {peak_lr}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    step = max(int(step), 0)
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak_lr
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    floor = min_ratio * peak_lr
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
