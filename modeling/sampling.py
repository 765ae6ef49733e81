"""MaskGIT iterative decoding (MaskGIT sec. 3.2; Phenaki sec. 2.2; MAGVIT Algorithm 1): one parallel-decode
loop, `parallel_decode`, under Phenaki's sampler (`maskgit_sample`, classifier-free guidance), COMMIT's
Algorithm 1 (`modeling.commit.commit_decode`) and the latent-masking baseline
(`modeling.latent_masking.latent_masking_decode`).

All unknown tokens start as [MASK]. At step i of T every masked position gets a sampled token; the
ceil-free count n_i = floor(gamma((i+1)/T) * n_0) of least confident new tokens is re-masked, where
confidence is the sampled token's log-probability plus Gumbel noise whose temperature anneals linearly to
zero ("choice temperature"; Phenaki's showcase uses 8.0). Fixed tokens (story mode, image animation) have
infinite confidence and are never re-masked, so they come back bit-exact.

Guidance: logits = cond + lambda * (cond - uncond), so lambda = 0 is exactly the conditional model. The
conditional and unconditional rows run as one batch of 2B through one forward pass per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from modeling.maskgit import MaskGIT
from modeling.masking import SCHEDULES


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device="cpu").clamp_(1e-20, 1.0)
    return (-torch.log(-torch.log(u))).to(device)


def num_masked_after_step(
    step: int, steps: int, num_unknown: torch.Tensor, schedule: str = "cosine"
) -> torch.Tensor:
    """How many of the n_0 initially unknown tokens stay masked after `step` (0-based) of `steps`.

    Always reveals at least one token per step and ends with none masked.
    """
    if step >= steps - 1:
        return torch.zeros_like(num_unknown)
    ratio = (step + 1) / steps
    n = torch.floor(SCHEDULES[schedule](ratio) * num_unknown).long()
    return torch.clamp(torch.minimum(n, num_unknown - (step + 1)), min=0)


def guided_logits(logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """logits (2B, N, K) = [cond; uncond] -> (B, N, K) guided."""
    cond, uncond = logits.chunk(2, dim=0)
    return cond + guidance_scale * (cond - uncond)


def draw_tokens(
    model: MaskGIT, logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, N, V) -> (ids (B, N), log p(id) (B, N)): Gumbel-max draws at `temperature`.

    A factorized model (`MaskGITConfig.code_levels`) draws each digit from its own softmax; the id's log-prob
    is the sum of its digits' (guidance and temperature act per digit, which is the same as on the product).
    """
    scaled = logits / max(temperature, 1e-6)
    noise = gumbel_noise(tuple(scaled.shape), generator, scaled.device)
    digits = model.digits
    if digits is None:
        log_probs = torch.log_softmax(scaled, dim=-1)  # (B, N, K)
        ids = (log_probs + noise).argmax(dim=-1)
        return ids, log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    chosen, total = [], torch.zeros(scaled.shape[:-1], device=scaled.device)
    for log_probs, part_noise in zip(
        digits.log_softmax(scaled), noise.split(digits.levels, dim=-1), strict=True
    ):
        digit = (log_probs + part_noise).argmax(dim=-1)
        chosen.append(digit)
        total = total + log_probs.gather(-1, digit.unsqueeze(-1)).squeeze(-1)
    return digits.join(torch.stack(chosen, dim=-1)), total


def draw_from_model(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, N, K) -> (ids (B, N), log p(id) (B, N)): Gumbel-max draws from softmax(logits / temperature)
    (argmax at temperature 0), scored under the model's own softmax, as MaskGIT's reference decoder and MAGVIT's
    Algorithm 1 (line 5) score them. The noise is drawn at every temperature, so the random stream does not
    depend on it."""
    noise = gumbel_noise(tuple(logits.shape), generator, logits.device)
    ids = (logits / temperature + noise).argmax(dim=-1) if temperature > 0 else logits.argmax(dim=-1)
    return ids, torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def parallel_decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor,
    unfixed: torch.Tensor,
    hidden_input: torch.Tensor,
    *,
    steps: int,
    num_unfixed_after: Callable[[int], torch.Tensor | int],
    draw: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    temperature: float,
    generator: torch.Generator | None,
    confidence: str = "log_prob",
    stable: bool = False,
) -> torch.Tensor:
    """The one MaskGIT-style decode loop. tokens (B, N) long: the values of the positions fixed from the start
    (anything elsewhere); unfixed (B, N) bool: the positions to generate; hidden_input (B, N) long: what the
    model sees at an unfixed position ([MASK], or COMMIT's condition token). Each step: logits_fn(the input
    (B, N)) -> (B, N, V); `draw(logits)` -> (ids, log p) proposes every unfixed position; their confidence
    (log p, or p with confidence="prob") plus Gumbel noise annealed linearly from `temperature` to 0 ranks
    them, and the `num_unfixed_after(step)` ((B,) or an int) least confident stay unfixed. Fixed positions
    never change. Stops early when nothing is unfixed. -> (B, N) long."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if confidence not in ("prob", "log_prob"):
        raise ValueError(f"confidence must be 'prob' or 'log_prob', got {confidence!r}")
    b, n = tokens.shape
    unfixed = unfixed.bool().clone()
    for step in range(steps):
        if not unfixed.any():
            break
        logits = logits_fn(torch.where(unfixed, hidden_input, tokens)).float()
        ids, score = draw(logits)
        tokens = torch.where(unfixed, ids, tokens)
        if confidence == "prob":
            score = score.exp()
        anneal = temperature * (1 - (step + 1) / steps)
        score = score + anneal * gumbel_noise((b, n), generator, tokens.device)
        score = score.masked_fill(~unfixed, math.inf)  # fixed positions are never unfixed again
        keep = torch.as_tensor(num_unfixed_after(step), device=tokens.device)
        rank = score.argsort(dim=1, stable=stable).argsort(dim=1)
        unfixed = rank < keep.reshape(-1, 1)
    return tokens


@torch.no_grad()
def maskgit_sample(
    model: MaskGIT,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    seq_len: int,
    *,
    steps: int = 12,
    guidance_scale: float = 0.0,
    temperature: float = 4.5,
    sample_temperature: float = 1.0,
    generator: torch.Generator | None = None,
    fixed_tokens: torch.Tensor | None = None,
    schedule: str = "cosine",
) -> torch.Tensor:
    """text (B, L, Dt), text_mask (B, L) -> tokens (B, seq_len) long.

    `fixed_tokens` (B, seq_len) long: values >= 0 are kept as given, -1 marks tokens to generate. Tokens are
    drawn by `draw_tokens` (each digit of a factorized code from its own softmax) and scored under the
    sampling distribution (logits / sample_temperature), the choice the demo's settings were tuned with.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    b = text.shape[0]
    device = text.device
    mask_id = model.mask_token_id
    if fixed_tokens is None:
        fixed_tokens = torch.full((b, seq_len), -1, dtype=torch.long, device=device)
    if fixed_tokens.shape != (b, seq_len):
        raise ValueError(f"fixed_tokens must be {(b, seq_len)}, got {tuple(fixed_tokens.shape)}")
    unknown = fixed_tokens < 0
    num_unknown = unknown.sum(dim=1)

    guided = guidance_scale != 0.0
    if guided:
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
        context = model.encode_text(text.repeat(2, 1, 1), text_mask.repeat(2, 1), drop)
    else:
        context = model.encode_text(text, text_mask)

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        logits = model.forward_with_context(tokens.repeat(2, 1) if guided else tokens, context)
        return guided_logits(logits.float(), guidance_scale) if guided else logits

    return parallel_decode(
        logits_fn,
        torch.where(unknown, torch.full_like(fixed_tokens, mask_id), fixed_tokens),
        unknown,
        torch.full_like(fixed_tokens, mask_id),
        steps=steps,
        num_unfixed_after=lambda step: num_masked_after_step(step, steps, num_unknown, schedule),
        draw=lambda logits: draw_tokens(model, logits, sample_temperature, generator),
        temperature=temperature,
        generator=generator,
    )
