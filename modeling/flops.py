"""Parameter and FLOP counts from configs alone, for `phenaki describe`, MFU estimates and the benchmarks.

Counts are exact for our modules: `count_parameters` builds the model on the meta device (no memory is
allocated, so the 1.8B preset is counted on a laptop), and `maskgit_forward_flops` adds up the matmuls of one
MaskGIT forward (a multiply-add is 2 FLOPs; norms, softmax and activations are left out, as in the usual
6·N·D training estimate). Axes: N video tokens, L text tokens (+1 null token), D width, Dt text width, M MLP
width, K codebook size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modeling.maskgit import MaskGITConfig

# Training FLOPs per forward FLOP: the backward pass costs two forwards (gradients w.r.t. activations and
# w.r.t. weights). MFU counts these model FLOPs only: activation-checkpointing recomputation is excluded.
TRAINING_FLOPS_PER_FORWARD = 3


def count_parameters(build: type[nn.Module], cfg: object) -> int:
    """Parameters of `build(cfg)`, constructed on the meta device (shapes only, no storage)."""
    with torch.device("meta"):
        model = build(cfg)
    return sum(p.numel() for p in model.parameters())


def maskgit_attention_flops(
    cfg: MaskGITConfig, seq_len: int | None = None, text_len: int = 64, batch: int = 1
) -> int:
    """The attention-score and value matmuls alone: self 2·N²·D and cross 2·N·(L+1)·D per block.

    Kept separate because torch's FlopCounterMode does not count the CPU flash-attention kernel."""
    n = cfg.seq_len if seq_len is None else seq_len
    return 2 * batch * cfg.depth * (2 * n * n * cfg.dim + 2 * n * (text_len + 1) * cfg.dim)


def maskgit_forward_flops(
    cfg: MaskGITConfig, seq_len: int | None = None, text_len: int = 64, batch: int = 1
) -> int:
    """Matmul FLOPs of one `MaskGIT.forward` over `batch` rows of `seq_len` tokens and `text_len` text tokens.

    Per block: self-attention projections 4·N·D²; cross-attention projections 2·N·D² (q, out) + 2·(L+1)·Dt·D
    (k, v); MLP 2·N·D·M; plus the attention matmuls (`maskgit_attention_flops`) and the head N·D·K (N·D·ΣL
    with factorized `code_levels`: one softmax per digit).
    """
    n = cfg.seq_len if seq_len is None else seq_len
    d, m = cfg.dim, cfg.mlp_dim
    k = sum(cfg.code_levels) if cfg.code_levels else cfg.codebook_size
    length = text_len + 1  # the learned null token is always a key
    per_block = 6 * n * d * d + 2 * length * cfg.text_dim * d + 2 * n * d * m
    projections = 2 * batch * (cfg.depth * per_block + n * d * k)
    return projections + maskgit_attention_flops(cfg, n, text_len, batch)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of `fn()` as counted by `torch.utils.flop_counter` (matmuls and convolutions).

    Attention runs on SDPA's math kernel while counting: FlopCounterMode has no formula for the CPU
    flash-attention kernel, and the math kernel's matmuls are the same FLOPs as any fused kernel's."""
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(counter.get_total_flops())


def meta_forward_flops(build: Callable[[], nn.Module], run: Callable[[nn.Module], object]) -> int:
    """FLOPs of `run(build())` with the model and every tensor created inside on the meta device.

    Nothing is allocated or computed, so this counts the 1.8B preset in milliseconds. `run` must create its
    inputs itself (factory functions default to the meta device here) and avoid data-dependent ops."""
    # fork_rng: counting must not advance the global RNG a training run (or its exact resume) draws from.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build()
        return counted_flops(lambda: run(model))


def tokenizer_forward_flops(build: Callable[[], nn.Module], video_shape: tuple[int, ...]) -> int:
    """Encoder + decoder FLOPs of a tokenizer (C-ViViT or 3D-VQ) on one video (C, T, H, W) or image (C, 1, H, W).

    The quantizer's nearest-code search (N * K * code_dim multiply-adds) is left out: it is data-dependent on
    the meta device and a rounding error next to the encoder and decoder."""
    return meta_forward_flops(
        build, lambda m: m.decode_embeddings(m.encode_latents(torch.zeros(1, *video_shape)))
    )


def module_forward_flops(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> int:
    """FLOPs of `build()(x)` for one float input `x` of `input_shape` (e.g. a discriminator on a batch)."""
    return meta_forward_flops(build, lambda m: m(torch.zeros(*input_shape)))
