"""FLOP accounting for the sampling benchmarks: PyTorch's FLOP counter with the CPU attention kernel counted,
forward passes counted, achieved GFLOP/s and fractions of a measured peak."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from modeling.maskgit import MaskGIT, MaskGITConfig

# FlopCounterMode has no formula for the CPU flash-attention kernel; the matmuls it performs are these.
ATTN_FLOP_FORMULA = "4 * B * H * Nq * Nk * Dh"


def sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, nq, dh = query_shape
    return 4 * b * h * nq * key_shape[-2] * dh


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flops}
    )


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    with flop_counter() as counter:
        fn()
    by_op = {
        str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()
    }
    return int(counter.get_total_flops()), by_op


def counter_counts_sdpa_natively() -> bool:
    q = torch.randn(1, 2, 8, 4)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() > 0


@contextlib.contextmanager
def counting_forwards(model: MaskGIT) -> Iterator[list[int]]:
    """Counts `forward_with_context` calls (the forward passes a sampler really makes)."""
    calls = [0]
    inner = model.forward_with_context

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    model.forward_with_context = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        del model.forward_with_context


def achieved(flops: int, seconds: float) -> dict:
    return {"achieved_gflops": round(flops / seconds / 1e9, 3)}


def add_fractions(node: object, peak_gflops: float) -> None:
    """Adds fraction_of_peak beside every achieved_gflops in the report tree."""
    if isinstance(node, dict):
        if "achieved_gflops" in node:
            node["fraction_of_peak"] = round(node["achieved_gflops"] / peak_gflops, 4)
        for value in node.values():
            add_fractions(value, peak_gflops)


def full_preset_step_flops(cfg: MaskGITConfig, text_tokens: int) -> int:
    """FLOPs of one guided step (2 rows x N tokens) of a full-size preset, on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = MaskGIT(cfg).eval()
        text = torch.zeros(2, text_tokens, cfg.text_dim)
        context = model.encode_text(
            text, torch.ones(2, text_tokens, dtype=torch.bool), torch.tensor([False, True])
        )
        tokens = torch.zeros(2, cfg.seq_len, dtype=torch.long)
        flops, _ = count_flops(lambda: model.forward_with_context(tokens, context))
    return flops
