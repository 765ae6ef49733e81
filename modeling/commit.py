"""COMMIT: COnditional Masked Modeling by Interior Tokens (MAGVIT, Yu et al. 2022, sec. 3.2 and Algorithm 1).

Training corrupts the target tokens z = f_T(V) with a *multivariate* mask that embeds the condition tokens
z~ = f_T(V~) (V~: the task's padded condition video, `modeling.commit_tasks`). Eq. 2, as printed:

    m(z_i | z~_i) = z~_i     if s_i <= s*  and  not ispad(z~_i)
                    [MASK]   if s_i <= s*  and  ispad(z~_i)
                    z_i      if s_i >  s*

"where s_i and s* are the per-token mask score and the cut-off score introduced in Section 2. ispad(z~_i)
returns whether the corresponding supervoxel of z~_i in V~ only contains padding." Section 2: "it first
uniformly samples a per-token mask score s_i ~ U(0, 1) ... Then it samples r ~ U(0, 1) and computes a cut-off
threshold s* as the ceil(gamma(r) N)-th smallest element in s."

The loss (Eq. 3) is sum_i -log p(z_i | [rho, c, z_bar]) over *all* positions, split by Eq. 4 into
L_refine (positions that got z~_i), L_mask (positions that got [MASK]) and L_recons (positions that kept z_i).
Parts are assigned by which case of Eq. 2 fired, not by comparing values (z~_i may equal z_i). The paper
weighs the three equally (the reference config's weight_mode "mask+refine+recons" is all ones), so the default
weights are (1, 1, 1); Table 5 ablates dropping L_refine and L_recons.

Decoding, Algorithm 1 "Non-autoregressive Decoding by COMMIT", as printed:

    Input: prefix rho and c, condition z~, steps K, temperature T
    1: s = 0, s* = 1, z^ = 0^N
    2: for t <- 0, 1, ..., K-1 do
    3:   z_bar <- m(z^ | z~; s, s*)
    4:   z^_i ~ p(z_i | [rho, c, z_bar]), for all i where s_i <= s*
    5:   s_i <- p(z^_i | [rho, c, z_bar]), for all i where s_i <= s*
    6:   s_i <- s_i + T (1 - (t+1)/K) Gumbel(0, 1), for all i where s_i < 1
    7:   s* <- the ceil(gamma((t+1)/K) N)-th smallest value of s
    8:   s_i <- 1, for all i where s_i > s*
    9: end for
    10: return z^

Every position starts "masked" (s_i = 0 <= s* = 1), so the first input is z~ at non-pad positions and [MASK]
elsewhere; condition tokens are *not* frozen: they are resampled like the rest and fixed only when confident
("all tokens are predicted where the interior condition tokens get refined"). After step t exactly
ceil(gamma((t+1)/K) N) positions stay unfixed, each shown to the next step as its Eq. 2 value (z~_i or
[MASK]); gamma(1) = 0, so the K-th step fixes everything and K forward passes are made in all. Fixed positions
get score +inf here instead of the paper's 1: with Gumbel noise an unfixed score can exceed 1, and the printed
line 8 could then re-open fixed tokens, which the text ("retaining tokens", Fig. 3) and the reference code
(NEVER_MASK = inf) rule out.

Axes: B batch, N tokens (flattened t*h*w grid), K codebook size, V prefix vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modeling.commit_tasks import (
    CLASS_TASKS,
    DEFAULT_STRIDE,
    TASK_IDS,
    TASKS,
    CommitCondition,
    TaskParams,
    condition_pixel_mask,
    condition_token_mask,
    condition_video,
    default_task_params,
    infer_stride,
    ispad,
    sample_task,
    sample_task_params,
    tokenize_with_condition,
)
from modeling.masking import SCHEDULES
from modeling.sampling import draw_from_model, parallel_decode

__all__ = [
    "TASKS", "TASK_IDS", "CLASS_TASKS", "DEFAULT_STRIDE", "TaskParams", "CommitCondition", "condition_video",
    "condition_pixel_mask", "condition_token_mask", "ispad", "infer_stride", "default_task_params",
    "sample_task", "sample_task_params", "tokenize_with_condition", "CommitConfig", "commit_debug",
    "PrefixLayout", "CommitParts", "num_masked_for_ratio", "commit_inputs", "commit_loss",
    "commit_num_unfixed", "commit_decode",
]  # fmt: skip


@dataclass
class CommitConfig:
    """COMMIT training and decoding settings (the transformer itself is configured elsewhere)."""

    codebook_size: int = 1024  # MAGVIT 3D-VQ
    num_classes: int = 0  # 101 UCF-101, 174 SSv2; 0 = no class labels
    num_tasks: int = len(TASKS)
    tasks: tuple[str, ...] = TASKS
    tokenizer_stride: tuple[int, int, int] = DEFAULT_STRIDE
    fp_cond_frames: int = 1  # 1 BAIR, 5 Kinetics-600
    fi_cond_frames: int = 1
    pad_value: float = -1.0  # constant padding: black on [-1, 1] pixels (0 on the reference's [0, 1])
    mask_schedule: str = "cosine"
    loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (refine, mask, recons)
    steps: int = 12  # K
    temperature: float = 4.5  # T of Algorithm 1 (reference: sampling.choice_temperature = 4.5)
    sample_temperature: float = 1.0  # softmax temperature of line 4's sampling (1 = sample p itself)
    # Algorithm 1 line 5 prints a probability; the authors' code scores log-probabilities, and the only published
    # temperature (4.5) is paired with those, as in our MaskGIT sampler. "prob" reproduces the printed line.
    confidence: str = "log_prob"

    def layout(self) -> PrefixLayout:
        return PrefixLayout(self.codebook_size, self.num_classes, self.num_tasks)

    def task_params(self, task: str, shape) -> TaskParams:
        frames = self.fi_cond_frames if task == "fi" else self.fp_cond_frames
        return default_task_params(task, shape, cond_frames=frames)


def commit_debug(**overrides) -> CommitConfig:
    """The tiny named debug preset: 16 codes, 4 classes, 2 decoding steps."""
    values = dict(codebook_size=16, num_classes=4, steps=2, temperature=1.0)
    return CommitConfig(**{**values, **overrides})


@dataclass(frozen=True)
class PrefixLayout:
    """One id space for a COMMIT transformer's inputs: [codebook K | MASK | 10 tasks | classes | null class].

    The sequence is [rho, c, z_bar_1 .. z_bar_N] (sec. 4.1: "1 task prompt, 1 class token, and 1024 visual
    tokens"): `prefix_len` = 2. Tasks without a class (and dropped classes, for guidance) use the null class.
    Text, when used, is not a prefix: it enters by cross-attention as in `modeling.maskgit` (TextContext),
    with the class slot holding the null class.
    """

    codebook_size: int
    num_classes: int = 0
    num_tasks: int = len(TASKS)
    prefix_len: int = 2

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def task_offset(self) -> int:
        return self.codebook_size + 1

    @property
    def class_offset(self) -> int:
        return self.task_offset + self.num_tasks

    @property
    def null_class_id(self) -> int:
        return self.class_offset + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.null_class_id + 1

    def task_token(self, task: str) -> int:
        return self.task_offset + TASK_IDS[task]

    def prefix(
        self, task: str, batch: int, class_ids: torch.Tensor | None = None, device=None
    ) -> torch.Tensor:
        """-> (B, 2) long [task token, class token]. class_ids (B,) long, -1 = no class (null); used by cg/cfp
        only, which require them."""
        if task in CLASS_TASKS and class_ids is None:
            raise ValueError(f"{task} needs class_ids")
        classes = torch.full((batch,), self.null_class_id, dtype=torch.long, device=device)
        if task in CLASS_TASKS:
            class_ids = class_ids.to(classes.device).long()
            if class_ids.ge(self.num_classes).any():
                raise ValueError(f"class ids must be < num_classes={self.num_classes}")
            classes = torch.where(class_ids >= 0, self.class_offset + class_ids, classes)
        tasks = torch.full((batch,), self.task_token(task), dtype=torch.long, device=classes.device)
        return torch.stack([tasks, classes], dim=1)

    def sequence(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """prefix (B, 2), corrupted tokens z_bar (B, N) -> transformer input (B, 2 + N)."""
        return torch.cat([prefix, tokens], dim=1)

    def token_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Transformer output (B, 2 + N, >= K) -> (B, N, K): visual positions, codebook entries only."""
        return logits[:, self.prefix_len :, : self.codebook_size]


@dataclass
class CommitParts:
    """Eq. 2's case per position, each (B, N) bool; exactly one is True everywhere."""

    refine: torch.Tensor  # s_i <= s* and not ispad: input z~_i   (L_refine)
    mask: torch.Tensor  # s_i <= s* and ispad: input [MASK]     (L_mask)
    recon: torch.Tensor  # s_i > s*: input z_i                  (L_recons)


def num_masked_for_ratio(ratio: torch.Tensor, n: int) -> torch.Tensor:
    """ceil(ratio * n) in float64, with 1e-6 slack so that float error (e.g. 1 - 1/3) cannot add a token."""
    return torch.ceil(ratio.double() * n - 1e-6).long()


def commit_inputs(
    z: torch.Tensor,
    z_cond: torch.Tensor,
    cond_mask: torch.Tensor,
    *,
    mask_id: int,
    mask_ratio: torch.Tensor | float | None = None,
    scores: torch.Tensor | None = None,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, CommitParts]:
    """Eq. 2. z (B, N) long targets, z_cond (B, N) long = f_T(V~), cond_mask (B, N) bool = ~ispad.

    mask_ratio: gamma(r) per row ((B,) or a float); default r ~ U(0, 1) through `schedule`. scores: s (B, N);
    default U(0, 1). s* is the ceil(gamma(r) N)-th smallest score (at least one token masked) and every
    s_i <= s* is masked. Returns (inputs z_bar (B, N), targets z (B, N), parts).
    """
    b, n = z.shape
    device = z.device
    if scores is None:
        scores = torch.rand(b, n, generator=generator, device="cpu").to(device)
    if mask_ratio is None:
        r = torch.rand(b, generator=generator, device="cpu")
        mask_ratio = SCHEDULES[schedule](r)
    ratio = torch.as_tensor(mask_ratio, dtype=torch.float64).reshape(-1).expand(b).to(device)
    num_masked = num_masked_for_ratio(ratio, n).clamp(1, n)
    cutoff = scores.sort(dim=1).values.gather(1, (num_masked - 1)[:, None])  # s*
    selected = scores <= cutoff
    cond_mask = cond_mask.bool()
    parts = CommitParts(refine=selected & cond_mask, mask=selected & ~cond_mask, recon=~selected)
    inputs = torch.where(selected, torch.where(cond_mask, z_cond, torch.full_like(z, mask_id)), z)
    return inputs, z, parts


def commit_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    parts: CommitParts,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 3/4: logits (B, N, K), targets (B, N) -> (loss, metrics).

    loss = mean over rows of sum_i w_i CE_i / sum_i w_i, w_i the weight of position i's part (refine, mask,
    recons): the reference's weighted_sequence_cross_entropy_loss. A part with weight 0 gets no gradient.
    """
    b, n, k = logits.shape
    ce = F.cross_entropy(logits.float().reshape(b * n, k), targets.reshape(-1), reduction="none")
    ce = ce.reshape(b, n)
    w_refine, w_mask, w_recon = weights
    w = parts.refine.float() * w_refine + parts.mask.float() * w_mask + parts.recon.float() * w_recon
    loss = ((ce * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-8)).mean()
    metrics: dict[str, float] = {"loss": float(loss.detach())}
    with torch.no_grad():
        correct = logits.argmax(-1) == targets
        for name, part in (("refine", parts.refine), ("mask", parts.mask), ("recons", parts.recon)):
            count = part.sum().clamp(min=1)
            metrics[f"{name}_fraction"] = float(part.float().mean())
            metrics[f"{name}_ce"] = float((ce * part).sum() / count)
            metrics[f"{name}_accuracy"] = float((correct & part).sum() / count)
    return loss, metrics


def commit_num_unfixed(step: int, steps: int, n: int, schedule: str = "cosine") -> int:
    """Line 7: how many positions stay unfixed after 0-based `step`: ceil(gamma((step+1)/K) N); 0 at the end."""
    if step >= steps - 1:
        return 0
    ratio = (step + 1) / steps
    exact = {"cosine": lambda r: math.cos(math.pi / 2 * r), "linear": lambda r: 1.0 - r}  # float64 gamma
    gamma = exact[schedule](ratio) if schedule in exact else float(SCHEDULES[schedule](ratio))
    return int(num_masked_for_ratio(torch.tensor(gamma), n).clamp(0, n))


@torch.no_grad()
def commit_decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    z_cond: torch.Tensor,
    cond_mask: torch.Tensor,
    *,
    mask_id: int,
    steps: int = 12,
    schedule: str = "cosine",
    temperature: float = 4.5,
    sample_temperature: float = 1.0,
    confidence: str = "log_prob",
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Algorithm 1 on `modeling.sampling.parallel_decode` (`on_step` as there). logits_fn(z_bar (B, N) long) -> (B, N, K) logits over
    the codebook (the caller closes over the prefix [rho, c], text, guidance). z_cond (B, N) long, cond_mask
    (B, N) bool = ~ispad. Returns z^ (B, N) long with every position sampled; exactly `steps` calls to
    logits_fn. Unlike MaskGIT, no position is fixed from the start: the condition positions are resampled too.
    """
    cond_mask = cond_mask.bool()
    # Every position starts unfixed (line 1: s = 0 <= s*); an unfixed position shows the model its condition
    # token where the condition has one and [MASK] elsewhere (Eq. 2 at s_i <= s*, line 3).
    return parallel_decode(
        logits_fn,
        torch.zeros_like(z_cond),  # line 1: z^ = 0^N
        torch.ones_like(cond_mask),
        torch.where(cond_mask, z_cond, torch.full_like(z_cond, mask_id)),
        steps=steps,
        num_unfixed_after=lambda t: commit_num_unfixed(t, steps, z_cond.shape[1], schedule),  # line 7
        draw=lambda logits: draw_from_model(logits, sample_temperature, generator),  # lines 4-5
        temperature=temperature,  # line 6
        generator=generator,
        confidence=confidence,
        stable=True,
        on_step=on_step,
    )
