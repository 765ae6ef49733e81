"""Autoregressive decoding of the MaskGIT transformer's weights, with a KV cache: the baseline MaskGIT is
compared against in `benchmarks/sampling_speed.py` ("MaskGIT decoding against autoregressive decoding of
the same transformer at equal sequence length").

Same module, same weights, same cross-attention to the text; only the self-attention becomes causal and the
input is shifted. Convention (teacher forcing, as in any decoder-only LM):

    input at position i  = token_emb(tokens[i-1]) + pos_emb[i]    (i >= 1)
    input at position 0  = token_emb([MASK])      + pos_emb[0]    ([MASK] id = codebook_size is the start token)
    logits at position i = p(tokens[i] | tokens[<i], text)

so N tokens take N forward steps of one token each, in raster order (the (t, h, w) grid flattened). The model
was never trained this way; for timing that does not matter (the work per step is the same for any weights),
and `causal_logits` / the incremental path agree exactly, which `tests/test_ar_decode.py` checks.

The incremental step keeps, per block, a self-attention cache k, v each (R, H, N, Dh) preallocated for the
whole sequence (R rows: B, or 2B with guidance); step i writes slot i and attends to slots [0, i]. The
cross-attention K/V come from `MaskGIT.encode_text` once per request, exactly as in `maskgit_sample`.
Guidance batches the conditional and unconditional rows into one 2B forward per step, as `maskgit_sample` does.

Axes: B batch, R rows per forward (B or 2B), N video tokens, H heads, Dh head width, D model width, K codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from modeling.maskgit import MaskGIT, TextContext
from modeling.sampling import guided_logits, gumbel_noise
from modeling.transformer import Block


def shifted_inputs(model: MaskGIT, tokens: torch.Tensor) -> torch.Tensor:
    """tokens (B, N) -> the AR inputs (B, N): [MASK] then tokens[:, :-1]."""
    start = torch.full_like(tokens[:, :1], model.mask_token_id)
    return torch.cat([start, tokens[:, :-1]], dim=1)


def _one_softmax(model: MaskGIT) -> None:
    if model.digits is not None:
        raise ValueError(
            "AR decoding here reads one softmax over the codes; build the MaskGIT without code_levels"
        )


def causal_logits(model: MaskGIT, tokens: torch.Tensor, context: TextContext) -> torch.Tensor:
    """Full-sequence reference. tokens (B, N) long -> logits (B, N, K); logits[:, i] predicts tokens[:, i].

    Every block runs as in `MaskGIT.forward_with_context` but with `is_causal=True` self-attention
    (query i sees keys 0..i); cross-attention and MLP are unchanged.
    """
    _one_softmax(model)
    n = tokens.shape[1]
    if n > model.cfg.seq_len:
        raise ValueError(f"{n} tokens exceed the model's seq_len={model.cfg.seq_len}")
    x = model.token_emb(shifted_inputs(model, tokens)) + model.positions(n)  # (B, N, D)
    for block, kv in zip(model.blocks, context.kv, strict=True):
        x = block(x, is_causal=True, context_kv=kv, context_mask=context.mask)  # (B, N, D)
    return model.head(model.norm(x))  # (B, N, K)


class KVCache:
    """Per-block self-attention keys/values, k and v each (R, H, N, Dh), filled one slot per step."""

    def __init__(self, model: MaskGIT, rows: int, seq_len: int, device: torch.device, dtype: torch.dtype):
        h = model.cfg.heads
        dh = model.cfg.dim // h
        self.k = [torch.empty(rows, h, seq_len, dh, device=device, dtype=dtype) for _ in model.blocks]
        self.v = [torch.empty(rows, h, seq_len, dh, device=device, dtype=dtype) for _ in model.blocks]


def _block_step(
    block: Block, x: torch.Tensor, pos: int, k_cache: torch.Tensor, v_cache: torch.Tensor,
    context_kv: tuple[torch.Tensor, torch.Tensor], context_mask: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """One block on one new token. x (R, 1, D) -> (R, 1, D); writes slot `pos` of the caches (R, H, N, Dh)."""
    attn = block.attn
    h = block.norm_attn(x)
    q = rearrange(attn.to_q(h), "r 1 (h d) -> r h 1 d", h=attn.heads)  # (R, H, 1, Dh)
    k, v = attn.project_kv(h)  # each (R, H, 1, Dh)
    k_cache[:, :, pos : pos + 1] = k
    v_cache[:, :, pos : pos + 1] = v
    # The single query may see every cached key 0..pos: no mask needed.
    out = F.scaled_dot_product_attention(
        q, k_cache[:, :, : pos + 1], v_cache[:, :, : pos + 1]
    )  # (R, H, 1, Dh)
    x = x + attn.to_out(rearrange(out, "r h 1 d -> r 1 (h d)"))
    x = x + block.cross(block.norm_cross(x), kv=context_kv, attn_mask=context_mask)
    return x + block.mlp(block.norm_mlp(x))


def ar_step(
    model: MaskGIT, prev: torch.Tensor, pos: int, cache: KVCache, context: TextContext
) -> torch.Tensor:
    """Incremental step: prev (R,) = the token at pos-1 ([MASK] at pos 0) -> logits (R, K) for the token at pos."""
    x = (model.token_emb(prev) + model.positions(model.cfg.seq_len)[pos])[:, None]  # (R, 1, D)
    for block, kv, k_cache, v_cache in zip(model.blocks, context.kv, cache.k, cache.v, strict=True):
        x = _block_step(block, x, pos, k_cache, v_cache, kv, context.mask)
    return model.head(model.norm(x))[:, 0]  # (R, K)


def incremental_logits(model: MaskGIT, tokens: torch.Tensor, context: TextContext) -> torch.Tensor:
    """Teacher-forced incremental decoding: tokens (B, N) -> logits (B, N, K), one KV-cached step per position.

    Must equal `causal_logits(model, tokens, context)` (the test of the cache).
    """
    _one_softmax(model)
    b, n = tokens.shape
    inputs = shifted_inputs(model, tokens)
    cache = KVCache(model, b, n, tokens.device, model.token_emb.weight.dtype)
    return torch.stack([ar_step(model, inputs[:, i], i, cache, context) for i in range(n)], dim=1)


@torch.no_grad()
def ar_sample(
    model: MaskGIT,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    seq_len: int,
    *,
    guidance_scale: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """text (B, L, Dt), text_mask (B, L) -> tokens (B, seq_len) long, one token per step in raster order.

    Guidance as in `maskgit_sample`: logits = cond + scale * (cond - uncond), both halves in one 2B forward.
    Tokens are drawn with the Gumbel-max trick at `temperature` (0 = greedy).
    """
    _one_softmax(model)
    if seq_len > model.cfg.seq_len:
        raise ValueError(f"{seq_len} tokens exceed the model's seq_len={model.cfg.seq_len}")
    b = text.shape[0]
    device = text.device
    guided = guidance_scale != 0.0
    if guided:
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)
        context = model.encode_text(text.repeat(2, 1, 1), text_mask.repeat(2, 1), drop)
    else:
        context = model.encode_text(text, text_mask)
    rows = 2 * b if guided else b
    cache = KVCache(model, rows, seq_len, device, model.token_emb.weight.dtype)
    tokens = torch.empty(b, seq_len, dtype=torch.long, device=device)
    prev = torch.full((b,), model.mask_token_id, dtype=torch.long, device=device)
    for i in range(seq_len):
        logits = ar_step(model, prev.repeat(2) if guided else prev, i, cache, context).float()  # (R, K)
        if guided:
            logits = guided_logits(logits, guidance_scale)  # (B, K)
        if temperature > 0:
            noise = gumbel_noise(tuple(logits.shape), generator, device)
            prev = (torch.log_softmax(logits / temperature, dim=-1) + noise).argmax(dim=-1)
        else:
            prev = logits.argmax(dim=-1)
        tokens[:, i] = prev
    return tokens
