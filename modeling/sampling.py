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
from collections.abc import Callable, Sequence

import torch

from modeling.maskgit import MaskGIT
from modeling.masking import SCHEDULES

Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or one per row
PerRow = float | torch.Tensor  # one value for the batch, or a (B,) tensor of per-row values


def gumbel_noise(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise of `shape` (B, ...). A sequence of B generators draws row b from generator b, so a
    row's noise does not depend on the batch it came in (row b equals a batch of one with generator b)."""
    if generator is None or isinstance(generator, torch.Generator):
        u = torch.rand(shape, generator=generator, device="cpu")
    else:
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        u = torch.stack([torch.rand(shape[1:], generator=g, device="cpu") for g in generator])
    return (-torch.log(-torch.log(u.clamp_(1e-20, 1.0)))).to(device)


def per_row(value: PerRow, batch: int, device: torch.device, dims: int) -> PerRow:
    """A float stays a float; a (B,) tensor becomes (B, 1, ...) with `dims` dimensions in all, to broadcast."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.shape != (batch,):
        raise ValueError(f"per-row values must be ({batch},), got {tuple(value.shape)}")
    return value.to(device=device, dtype=torch.float32).reshape(batch, *([1] * (dims - 1)))


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


def guided_logits(logits: torch.Tensor, guidance_scale: PerRow) -> torch.Tensor:
    """logits (2B, N, K) = [cond; uncond] -> (B, N, K) guided; guidance_scale a float or (B,) per row."""
    cond, uncond = logits.chunk(2, dim=0)
    return cond + per_row(guidance_scale, cond.shape[0], cond.device, 3) * (cond - uncond)


def draw_tokens(
    model: MaskGIT, logits: torch.Tensor, temperature: PerRow, generator: Generators
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, N, V) -> (ids (B, N), log p(id) (B, N)): Gumbel-max draws at `temperature` (or (B,) per row).

    A factorized model (`MaskGITConfig.code_levels`) draws each digit from its own softmax; the id's log-prob
    is the sum of its digits' (guidance and temperature act per digit, which is the same as on the product).
    """
    if isinstance(temperature, torch.Tensor):
        scaled = logits / per_row(temperature.clamp(min=1e-6), logits.shape[0], logits.device, 3)
    else:
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
    logits: torch.Tensor, temperature: float, generator: Generators
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
    temperature: PerRow,
    generator: Generators,
    confidence: str = "log_prob",
    stable: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The one MaskGIT-style decode loop. tokens (B, N) long: the values of the positions fixed from the start
    (anything elsewhere); unfixed (B, N) bool: the positions to generate; hidden_input (B, N) long: what the
    model sees at an unfixed position ([MASK], or COMMIT's condition token). Each step: logits_fn(the input
    (B, N)) -> (B, N, V); `draw(logits)` -> (ids, log p) proposes every unfixed position; their confidence
    (log p, or p with confidence="prob") plus Gumbel noise annealed linearly from `temperature` to 0 ranks
    them, and the `num_unfixed_after(step)` ((B,) or an int) least confident stay unfixed. Fixed positions
    never change. Stops early when nothing is unfixed. `temperature` may be (B,) (one per row) and `generator`
    one per row (`gumbel_noise`). `on_step(steps done)` runs after every step: a server reports progress from
    it, and cancels by raising. -> (B, N) long."""
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
        anneal = per_row(temperature, b, tokens.device, 2) * (1 - (step + 1) / steps)
        score = score + anneal * gumbel_noise((b, n), generator, tokens.device)
        score = score.masked_fill(~unfixed, math.inf)  # fixed positions are never unfixed again
        keep = torch.as_tensor(num_unfixed_after(step), device=tokens.device)
        rank = score.argsort(dim=1, stable=stable).argsort(dim=1)
        unfixed = rank < keep.reshape(-1, 1)
        if on_step is not None:
            on_step(step + 1)
    return tokens


@torch.no_grad()
def maskgit_sample(
    model: MaskGIT,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    seq_len: int,
    *,
    steps: int = 12,
    guidance_scale: PerRow = 0.0,
    temperature: PerRow = 4.5,
    sample_temperature: PerRow = 1.0,
    generator: Generators = None,
    fixed_tokens: torch.Tensor | None = None,
    schedule: str = "cosine",
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """text (B, L, Dt), text_mask (B, L) -> tokens (B, seq_len) long.

    `fixed_tokens` (B, seq_len) long: values >= 0 are kept as given, -1 marks tokens to generate. Tokens are
    drawn by `draw_tokens` (each digit of a factorized code from its own softmax) and scored under the
    sampling distribution (logits / sample_temperature), the choice the demo's settings were tuned with.
    Rows may differ in guidance and both temperatures ((B,) tensors) and draw from their own generators (a list
    of B), which is how a server batches different requests: row b then equals sampling it alone.
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

    guided = bool((torch.as_tensor(guidance_scale) != 0).any())
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
        on_step=on_step,
    )
