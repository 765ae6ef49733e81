"""Masking schedules and the masked visual token modelling (MVTM) loss (MaskGIT; Phenaki sec. 2.2).

Training masks ceil(gamma(r) * n) of a sample's n scored tokens, r ~ U(0, 1), and scores cross-entropy on
the masked ones. An image sample (one frame) is a video of one latent frame: only its first h_z*w_z
tokens are masked and scored; the rest of its row is padding, filled with [MASK] and never scored.

Normalisation (`loss_normalization`): MaskGIT averages the cross-entropy over every masked token of the
batch ("token"). Mixed with videos, that weighs a sample by its token count: a 9-frame video has 5x an
image's tokens, so images 20% of the samples carry ~4% of the loss. "sample" averages within each sample,
then over samples, so each kind weighs what its share of the batch says (the paper's 80/20 mix means
80/20 of the gradient). Both agree on batches of one kind.
"""

from __future__ import annotations

import math

import torch

from modeling.names import SCHEDULE_NAMES


def cosine_schedule(r: torch.Tensor | float) -> torch.Tensor:
    """gamma(r) = cos(pi/2 * r): the fraction of tokens masked at progress r in [0, 1] (MaskGIT's choice)."""
    return torch.cos(torch.as_tensor(r, dtype=torch.float32) * math.pi / 2)


def linear_schedule(r: torch.Tensor | float) -> torch.Tensor:
    return 1 - torch.as_tensor(r, dtype=torch.float32)


SCHEDULES = dict(zip(SCHEDULE_NAMES, (cosine_schedule, linear_schedule), strict=True))
LOSS_NORMALIZATIONS = ("sample", "token")


def random_training_mask(
    num_scored: torch.Tensor, seq_len: int, generator: torch.Generator | None = None, schedule: str = "cosine"
) -> torch.Tensor:
    """num_scored (B,) long -> mask (B, N) bool: ceil(gamma(r) n_b) random positions among each row's first n_b.

    At least one token per row is masked so every sample contributes to the loss.
    """
    b = num_scored.shape[0]
    device = num_scored.device
    r = torch.rand(b, generator=generator, device="cpu").to(device)
    num_masked = torch.ceil(SCHEDULES[schedule](r).to(device) * num_scored).long().clamp(min=1)
    num_masked = torch.minimum(num_masked, num_scored)
    scores = torch.rand(b, seq_len, generator=generator, device="cpu").to(device)
    positions = torch.arange(seq_len, device=device)[None, :]
    scores = scores.masked_fill(positions >= num_scored[:, None], 2.0)  # padding never chosen
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position's score within its row
    return rank < num_masked[:, None]


def mvtm_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    num_scored: torch.Tensor,
    generator: torch.Generator | None = None,
    text_drop_prob: float = 0.1,
    schedule: str = "cosine",
    normalization: str = "sample",
) -> tuple[torch.Tensor, dict[str, float]]:
    """tokens (B, N) long (padding = -1 beyond num_scored), text (B, L, Dt), text_mask (B, L), num_scored (B,).

    Returns the cross-entropy of the masked tokens, averaged per `normalization` (module docstring), and
    metrics (accuracy on masked tokens, mask fraction).
    """
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}")
    b, n = tokens.shape
    mask = random_training_mask(num_scored, n, generator, schedule)
    padding = torch.arange(n, device=tokens.device)[None, :] >= num_scored[:, None]
    inputs = tokens.masked_fill(mask | padding, model.mask_token_id)
    drop_text = (torch.rand(b, generator=generator, device="cpu") < text_drop_prob).to(tokens.device)
    logits = model(inputs, text, text_mask, drop_text)  # (B, N, V)
    # -log p(token) where masked (per digit and summed for a factorized model), 0 elsewhere: (B, N)
    per_token = -model.log_likelihood(logits, tokens.clamp(min=0)) * mask
    if normalization == "token":
        loss = per_token.sum() / mask.sum().clamp(min=1)
    else:
        loss = (per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    with torch.no_grad():
        correct = (model.most_likely(logits) == tokens) & mask
        metrics = {
            "mask_accuracy": float(correct.sum() / mask.sum().clamp(min=1)),
            "mask_fraction": float(mask.sum() / num_scored.sum().clamp(min=1)),
            "text_dropped": float(drop_text.float().mean()),
        }
    return loss, metrics
