"""Bidirectional MaskGIT transformer with cross-attention to text (Phenaki sec. 2.2, table 7).

Video tokens (B, N) — the (t_z+1) x h_z x w_z grid flattened in raster order — plus one extra id for
[MASK] are embedded, given learned positions, and run through blocks of full (bidirectional)
self-attention, cross-attention to per-token text embeddings (padding masked out), and an MLP. The head
predicts a distribution over the codebook at every position.

Cross-attention keys/values are projected straight from the text encoder's width Dt (after a LayerNorm), as
in a T5-conditioned decoder; there is no separate text-to-D projection. With T5-XXL's Dt = 4096 this is what
makes table 7's shape (24 layers, 2048 wide, MLP 8192) come to the paper's 1.8B parameters
(`phenaki describe --config phenaki-1.8b`; docs/presets.md has the arithmetic).

Classifier-free guidance needs an unconditional model: rows with `drop_text=True` attend to a single learned
null text token (in text space) instead of the prompt. Text keys/values are computed once per request by
`encode_text` and reused at every sampling step; the position table is a plain learned parameter, so nothing
position-related is recomputed per step either.

Axes: B batch, N video tokens, L text tokens, Dt text width, D model width, K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modeling.transformer import Block


@dataclass
class MaskGITConfig:
    codebook_size: int = 8192  # K (from the tokenizer)
    seq_len: int = 1536  # N: tokens of the longest video the model handles
    tokens_per_frame: int = 256  # h_z * w_z: an image sample scores only these
    dim: int = 2048
    depth: int = 24
    heads: int = 32
    mlp_dim: int = 8192
    text_dim: int = 384  # width of the text encoder's per-token embeddings
    dropout: float = 0.0


def maskgit_debug(**overrides) -> MaskGITConfig:
    """The tiny named debug preset: width 32, 2 layers, sized for `cvivit_debug` tokens (80 per clip)."""
    values = dict(codebook_size=64, seq_len=80, tokens_per_frame=16, dim=32, depth=2, heads=4, mlp_dim=64, text_dim=384)
    return MaskGITConfig(**{**values, **overrides})


@dataclass
class TextContext:
    """Per-request text conditioning: cross-attention K/V for every block, computed once."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: k, v each (B, H, L+1, Dh)
    mask: torch.Tensor  # (B, 1, 1, L+1) bool, True = attend

    def repeat(self, times: int) -> TextContext:
        return TextContext([(k.repeat(times, 1, 1, 1), v.repeat(times, 1, 1, 1)) for k, v in self.kv], self.mask.repeat(times, 1, 1, 1))


class MaskGIT(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_token_id = cfg.codebook_size
        self.token_emb = nn.Embedding(cfg.codebook_size + 1, cfg.dim)
        self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, cfg.dim) * 0.02)
        self.text_norm = nn.LayerNorm(cfg.text_dim)
        self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_dim, context_dim=cfg.text_dim, cross_attention=True, dropout=cfg.dropout)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.codebook_size)

    def encode_text(
        self, text: torch.Tensor, text_mask: torch.Tensor, drop_text: torch.Tensor | None = None
    ) -> TextContext:
        """text (B, L, Dt), text_mask (B, L) bool, drop_text (B,) bool -> cached cross-attention K/V.

        The null token is prepended to every row and is the only key an unconditional row may attend to; a
        conditional row attends to its real text tokens only. Prepending (rather than substituting) keeps
        one tensor shape for mixed batches, so conditional and unconditional rows share one forward pass.
        """
        b = text.shape[0]
        if drop_text is None:
            drop_text = torch.zeros(b, dtype=torch.bool, device=text.device)
        ctx = torch.cat([self.null_text.expand(b, 1, -1), self.text_norm(text)], dim=1)  # (B, L+1, Dt)
        keep_text = text_mask.bool() & ~drop_text[:, None]
        # Rows with no real text token left (dropped, or an empty prompt) fall back to the null token.
        use_null = ~keep_text.any(dim=1, keepdim=True)
        mask = torch.cat([use_null, keep_text], dim=1)[:, None, None, :]  # (B, 1, 1, L+1)
        kv = [block.cross.project_kv(ctx) for block in self.blocks]
        return TextContext(kv, mask)

    def forward_with_context(self, tokens: torch.Tensor, context: TextContext) -> torch.Tensor:
        """tokens (B, N) long, with mask_token_id at unknown positions -> logits (B, N, K)."""
        n = tokens.shape[1]
        if n > self.cfg.seq_len:
            raise ValueError(f"{n} tokens exceed the model's seq_len={self.cfg.seq_len}")
        x = self.token_emb(tokens) + self.pos_emb[:n]
        for block, kv in zip(self.blocks, context.kv, strict=True):
            x = block(x, context_kv=kv, context_mask=context.mask)
        return self.head(self.norm(x))

    def forward(
        self,
        tokens: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.forward_with_context(tokens, self.encode_text(text, text_mask, drop_text))
