"""Quantizers of the C-ViViT tokenizer: the factorized, l2-normalised vector quantizer of the paper
(ViT-VQGAN, as adopted by Phenaki), and finite scalar quantization (FSQ), the demo presets' choice.

The encoder output (width D) is projected to a low-dimensional code space (width C, e.g. 8 or 32), both the
projected vector and the codebook entries are l2-normalised, and the nearest code (= largest cosine) is
chosen. Lookup in a small normalised space is what keeps codebook usage high (ViT-VQGAN, sec. 3.2).

Codebook learning: the paper's L_VQ = ||sg(z) - e||^2 + beta * ||z - sg(e)||^2. We keep the commitment term
as a loss and learn the codebook either by that codebook term ("loss") or by exponential moving averages
("ema", the VQ-VAE alternative). EMA is the default because it keeps the codebook out of the optimizer:
DeepSpeed's ZeRO keeps its own fp32 master copy of every parameter, so resetting dead codes by writing into a
codebook *parameter* would be silently undone on the next step. Buffers are ours to edit; EMA statistics are
all-reduced across data-parallel ranks so every rank holds the same codebook.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    # A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks only see tensors inside tuples/lists/dicts.
    quantized: torch.Tensor  # (..., D) straight-through quantized vectors, back in model width
    indices: torch.Tensor  # (...) long code ids
    vq_loss: torch.Tensor  # scalar: codebook term (0 with EMA) + beta * commitment term
    commit_loss: torch.Tensor  # scalar: ||z - sg(e)||^2 (unweighted, for logging)
    perplexity: torch.Tensor  # scalar: exp(entropy of code usage in this batch)
    used_codes: torch.Tensor  # scalar: distinct codes used in this batch


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class FactorizedQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        code_dim: int,
        codebook_size: int,
        *,
        commitment_weight: float = 0.25,
        codebook_update: str = "ema",
        ema_decay: float = 0.99,
    ):
        super().__init__()
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {codebook_update!r}")
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        self.project_in = nn.Linear(dim, code_dim)
        self.project_out = nn.Linear(code_dim, dim)
        init = F.normalize(torch.randn(codebook_size, code_dim), dim=-1)
        if codebook_update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", init.clone())
            self.register_buffer("ema_count", torch.ones(codebook_size))
        # Exponentially averaged picks per step, for dead-code detection (a code "dies" when no input picks
        # it). Starts at 0 so codes that never won an input are restartable at the first check.
        self.register_buffer("usage", torch.zeros(codebook_size))

    @property
    def restartable(self) -> bool:
        """Dead codes can be re-seeded: only with EMA (ZeRO keeps a master copy of parameter codebooks and
        would undo the write on the next step)."""
        return self.codebook_update == "ema"

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=-1)

    def codes_to_embeddings(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) long -> (..., D): the decoder's view of a code."""
        return self.project_out(F.embedding(indices, self.normalized_codebook()))

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        shape = x.shape[:-1]
        z = F.normalize(self.project_in(x), dim=-1).reshape(-1, self.codebook.shape[-1])  # (M, C)
        codebook = self.normalized_codebook()
        # Both sides are unit vectors, so nearest in l2 == largest dot product.
        indices = (z @ codebook.t()).argmax(dim=-1)  # (M,)
        e = F.embedding(indices, codebook)
        commit = F.mse_loss(z, e.detach())
        codebook_term = F.mse_loss(e, z.detach()) if self.codebook_update == "loss" else z.new_zeros(())
        if self.training:
            self._update_statistics(z.detach(), indices)
        quantized = z + (e - z).detach()  # straight-through estimator
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
        return QuantizerOutput(
            quantized=self.project_out(quantized).reshape(*shape, -1),
            indices=indices.reshape(shape),
            vq_loss=codebook_term + self.commitment_weight * commit,
            commit_loss=commit.detach(),
            perplexity=perplexity.detach(),
            used_codes=(counts > 0).sum().detach(),
        )

    @torch.no_grad()
    def _update_statistics(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        one_hot = F.one_hot(indices, self.codebook_size).type_as(z)  # (M, K)
        counts = _all_reduce_sum(one_hot.sum(0))
        self.usage.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        if self.codebook_update == "ema":
            sums = _all_reduce_sum(one_hot.t() @ z)  # (K, C)
            self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            self.codebook.copy_(
                F.normalize(self.ema_sum / self.ema_count.clamp(min=1e-5).unsqueeze(-1), dim=-1)
            )

    @torch.no_grad()
    def restart_dead_codes(
        self, x: torch.Tensor, threshold: float = 0.03, generator: torch.Generator | None = None
    ) -> int:
        """Re-seed codes whose averaged usage fell below `threshold` with encoder outputs from `x` (..., D).

        The remedy for dead codes (Dhariwal et al. 2020 / "random restart"): without it a small tokenizer sits
        for hundreds of steps using a handful of codes (see shared/calibration.md). Every data-parallel rank
        must call this with the same generator state; rank 0's candidates are broadcast so codebooks agree.
        Returns the number of codes restarted.
        """
        dead = self.usage < threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        z = F.normalize(self.project_in(x.detach()), dim=-1).reshape(-1, self.codebook.shape[-1])
        # k-means++-style seeding: draw candidates in proportion to their squared distance from the nearest
        # live code. Uniform draws mostly pick the plain background (most positions), and such a code is
        # dead again at the next check; far-away vectors are the objects the codebook does not cover yet.
        live = self.normalized_codebook()[~dead]
        if live.shape[0]:
            distance = (2 - 2 * (z @ live.t()).max(dim=-1).values).clamp(min=0)
        else:
            distance = torch.ones(z.shape[0], device=z.device)
        weights = (distance.square() + 1e-12).float().cpu()
        pick = torch.multinomial(weights, num_dead, replacement=True, generator=generator).to(z.device)
        fresh = z[pick] + 0.01 * torch.randn(num_dead, z.shape[-1], generator=generator, device="cpu").to(
            z.device
        )
        fresh = F.normalize(fresh, dim=-1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(fresh, src=0)
        self.codebook.data[dead] = fresh
        if self.codebook_update == "ema":
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        # A grace period: a fresh code that wins nothing is restarted again after 1-2 more checks, not ~300 steps.
        self.usage[dead] = 2 * threshold
        return num_dead


def check_fsq_levels(levels: list[int] | tuple[int, ...] | None, codebook_size: int) -> None:
    """A tokenizer config's `quantizer: fsq` needs `fsq_levels` whose product is its `codebook_size`."""
    if not levels or math.prod(levels) != codebook_size:
        raise ValueError(
            f"quantizer fsq needs fsq_levels whose product is codebook_size: got levels {list(levels or [])} "
            f"and codebook_size {codebook_size} (e.g. fsq_levels [8, 8, 8, 8] with codebook_size 4096)"
        )


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (FSQ, Mentzer et al. 2023): project to len(levels) dims, bound each to its
    number of levels and round (straight-through). The codebook is implicit, the grid prod(levels), so no
    code can die: no EMA, no commitment loss, no restarts. An id is the mixed-radix number of the per-dim
    levels (dim 0 least significant), so `digits(id)` gives a transformer the structure of the code: ids
    one level apart along a dim are neighbours in latent space (`modeling.maskgit` can embed and predict
    the digits instead of K unrelated ids).
    """

    def __init__(self, dim: int, levels: list[int] | tuple[int, ...]):
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        self.levels = levels
        self.codebook_size = math.prod(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("num_levels", torch.tensor(levels, dtype=torch.float32), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    @property
    def restartable(self) -> bool:
        return False  # the grid is fixed: no code can die

    def _half_width(self) -> torch.Tensor:
        return torch.div(self.num_levels, 2, rounding_mode="floor")

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> each dim squashed to [-(L-1)/2, (L-1)/2] (shifted half a level for even L, so that
        rounding gives exactly L values)."""
        eps = 1e-3
        half_l = (self.num_levels - 1) * (1 + eps) / 2
        offset = torch.where(self.num_levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def digits(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., d) level of each dim in [0, L_i)."""
        return (indices.unsqueeze(-1) // self.basis) % self.num_levels.long()

    def codes_to_embeddings(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) long -> (..., D): the decoder's view of a code."""
        half = self._half_width()
        return self.project_out((self.digits(indices).float() - half) / half)

    def restart_dead_codes(self, x: torch.Tensor, threshold: float = 0.03, generator=None) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        half = self._half_width()
        bounded = self.bound(self.project_in(x))
        rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through
        indices = ((rounded.detach() + half).round().long() * self.basis).sum(-1)  # (...)
        counts = torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float()
        probs = counts / counts.sum().clamp(min=1)
        zero = x.new_zeros(())
        return QuantizerOutput(
            quantized=self.project_out(rounded / half),
            indices=indices,
            vq_loss=zero,
            commit_loss=zero,
            perplexity=torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum()).detach(),
            used_codes=(counts > 0).sum().detach(),
        )
