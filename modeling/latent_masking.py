"""MaskGIT-style latent masking: the conditioning baseline of MAGVIT's Table 5 ("Latent masking in MaskGIT").

MAGVIT sec. 3.2 argues against it: "it is suboptimal to directly unmask the tokens corresponding to the region
of the interior condition [12] ... the non-local receptive field of the tokenizer can leak the ground-truth
information into the unmasked tokens". The baseline, as our benchmark (`benchmarks/magvit_quality.py`) runs it:

- Training: the condition positions (the same `cond_mask` = ~ispad that COMMIT uses) hold z_i, the tokens of
  the *full, un-padded* video (what leaks), and are never masked; of the other n_free positions
  ceil(gamma(r) n_free) (at least one) become [MASK], r ~ U(0, 1), as MaskGIT trains (its Eq. 1). The loss is
  MaskGIT's: cross-entropy on the masked positions only (weights (refine, mask, recons) = (0, 1, 0)).
- Inference: only the padded condition video V~ exists, so the condition positions hold z~ = f_T(V~) from the
  start and stay fixed; the rest start as [MASK] and are revealed over K steps by MaskGIT's rule
  (`modeling.sampling.num_masked_after_step`), confidences Gumbel-annealed as in `commit_decode`.

The transformer is `modeling.commit_model.CommitTransformer` unchanged (the [task, class] prefix included), so
both arms differ only in how the condition enters. COMMIT's own functions are not touched. No text input.

Axes: B batch, N visual tokens (t*h*w raster order), K codebook size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modeling.commit import CommitParts, commit_loss, num_masked_for_ratio
from modeling.commit_model import CommitTransformer
from modeling.masking import SCHEDULES
from modeling.sampling import draw_from_model, num_masked_after_step, parallel_decode

__all__ = [
    "MASKGIT_LOSS_WEIGHTS",
    "latent_masking_inputs",
    "latent_masking_training_step",
    "latent_masking_decode",
]

# (refine, mask, recons) weights of `commit_loss`: MaskGIT scores the masked tokens only
MASKGIT_LOSS_WEIGHTS: tuple[float, float, float] = (0.0, 1.0, 0.0)


def latent_masking_inputs(
    z: torch.Tensor,
    cond_mask: torch.Tensor,
    *,
    mask_id: int,
    mask_ratio: torch.Tensor | float | None = None,
    scores: torch.Tensor | None = None,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, CommitParts]:
    """z (B, N) long = f_T(V) of the full video, cond_mask (B, N) bool -> (inputs (B, N), targets z, parts).

    mask_ratio: gamma(r) per row ((B,) or a float); default r ~ U(0, 1) through `schedule`. scores (B, N): the
    lowest ones among the non-condition positions are masked; default U(0, 1). `parts` reuses COMMIT's
    container so `commit_loss` scores it: refine is empty, mask = [MASK]ed positions, recon = the rest
    (condition positions included).
    """
    b, n = z.shape
    cond_mask = cond_mask.bool()
    if scores is None:
        scores = torch.rand(b, n, generator=generator, device="cpu").to(z.device)
    if mask_ratio is None:
        mask_ratio = SCHEDULES[schedule](torch.rand(b, generator=generator, device="cpu"))
    ratio = torch.as_tensor(mask_ratio, dtype=torch.float64).reshape(-1).expand(b).to(z.device)
    free = (~cond_mask).sum(dim=1)  # (B,) n_free
    # ceil(gamma(r) * n_free) per row (n = 1: the row's own count is folded into the ratio), 1 <= k <= n_free
    count = torch.minimum(num_masked_for_ratio(ratio * free.double(), 1).clamp(min=1), free)
    rank = scores.masked_fill(cond_mask, math.inf).argsort(dim=1).argsort(dim=1)  # condition ranks last
    masked = (rank < count[:, None]) & ~cond_mask
    parts = CommitParts(refine=torch.zeros_like(masked), mask=masked, recon=~masked)
    return z.masked_fill(masked, mask_id), z, parts


def latent_masking_training_step(
    model: CommitTransformer,
    z: torch.Tensor,
    cond_mask: torch.Tensor,
    task: str | torch.Tensor,
    class_ids: torch.Tensor | None,
    *,
    schedule: str = "cosine",
    loss_weights: tuple[float, float, float] = MASKGIT_LOSS_WEIGHTS,
    generator: torch.Generator | None = None,
    class_drop_prob: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One latent-masking loss (no optimizer step): z (B, N) long, cond_mask (B, N) bool, task (B,) ids or a
    name, class_ids (B,) long (-1 = none) -> (loss, metrics). z~ is not an input: the baseline trains on the
    full video's tokens. Classes are dropped with `class_drop_prob`, as `commit_training_step` does, so both
    arms see the same conditioning statistics."""
    inputs, targets, parts = latent_masking_inputs(
        z, cond_mask, mask_id=model.mask_token_id, schedule=schedule, generator=generator
    )
    rows = z.shape[0]
    dropped = (torch.rand(rows, generator=generator, device="cpu") < class_drop_prob).to(z.device)
    if class_ids is not None:
        ids = torch.as_tensor(class_ids, device=z.device).long().reshape(-1).expand(rows)
        class_ids = torch.where(dropped, torch.full_like(ids, -1), ids)
    loss, metrics = commit_loss(model(inputs, task, class_ids), targets, parts, loss_weights)
    metrics["cond_drop_fraction"] = float(dropped.float().mean())
    return loss, metrics


@torch.no_grad()
def latent_masking_decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    z_cond: torch.Tensor,
    cond_mask: torch.Tensor,
    *,
    mask_id: int,
    steps: int = 12,
    schedule: str = "cosine",
    temperature: float = 4.5,
    sample_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskGIT decoding with the condition unmasked. logits_fn(tokens (B, N)) -> (B, N, K); z_cond (B, N) long
    = f_T(V~); cond_mask (B, N) bool. Condition positions keep z_cond throughout (never resampled); the others
    start as [MASK] and are all revealed after `steps` passes (fewer if every row is done). -> (B, N) long."""
    cond_mask = cond_mask.bool()
    unknown = (~cond_mask).sum(dim=1)  # (B,) tokens to generate
    return parallel_decode(
        logits_fn,
        z_cond,
        ~cond_mask,
        torch.full_like(z_cond, mask_id),
        steps=steps,
        num_unfixed_after=lambda step: num_masked_after_step(step, steps, unknown, schedule),
        draw=lambda logits: draw_from_model(logits, sample_temperature, generator),
        temperature=temperature,
        generator=generator,
    )
