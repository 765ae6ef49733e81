"""Transformer building blocks shared by C-ViViT and MaskGIT.

Pre-LayerNorm blocks on top of `F.scaled_dot_product_attention`, so the fused (flash / memory-efficient)
kernels are used on GPU and the math kernel on CPU. Axes: B batch, N sequence, L text length, D model width,
H heads, Dh head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from modeling.activation_checkpointing import Checkpointable


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None, cross-attention otherwise."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, Dc) -> k, v each (B, H, L, Dh). Split out so cross-attention K/V can be cached per request."""
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return rearrange(k, "b l (h d) -> b h l d", h=self.heads), rearrange(
            v, "b l (h d) -> b h l d", h=self.heads
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Block(Checkpointable):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP (checkpointable, see
    `modeling.activation_checkpointing`)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        *,
        context_dim: int | None = None,
        cross_attention: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def _forward(
        self,
        x: torch.Tensor,
        *,
        is_causal: bool = False,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), is_causal=is_causal)
        if self.cross is not None:
            if context_kv is None:
                raise ValueError("this block cross-attends: pass context_kv (see MaskGIT.encode_text)")
            x = x + self.cross(self.norm_cross(x), kv=context_kv, attn_mask=context_mask)
        return x + self.mlp(self.norm_mlp(x))


class Stack(nn.Module):
    """A plain stack of self-attention blocks with a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim) if depth else nn.Identity()

    def forward(self, x: torch.Tensor, *, is_causal: bool = False) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, is_causal=is_causal)
        return self.norm(x)
