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

import math
from dataclasses import dataclass

import torch
from torch import nn

from modeling.transformer import Block

POSITION_EMBEDDINGS = ("learned", "axial")


class CodeDigits(nn.Module):
    """Mixed-radix digits of code ids (digit 0 least significant, as `FiniteScalarQuantizer` numbers them) and
    the factorized distribution over them: p(id) = prod_i p_i(digit_i), one softmax per digit."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.levels = [int(v) for v in levels]
        self.width = sum(self.levels)
        base = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        offset = [sum(self.levels[:i]) for i in range(len(self.levels))]
        self.register_buffer("base", torch.tensor(base), persistent=False)
        self.register_buffer("offset", torch.tensor(offset), persistent=False)
        self.register_buffer("size", torch.tensor(self.levels), persistent=False)

    def split(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., d) digits."""
        return (ids.unsqueeze(-1) // self.base) % self.size

    def join(self, digits: torch.Tensor) -> torch.Tensor:
        """(..., d) digits -> (...) ids."""
        return (digits * self.base).sum(-1)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., d) rows of the digit tables laid back to back."""
        return self.split(ids) + self.offset

    def log_softmax(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """(..., sum L) -> per digit (..., L_i) log-probabilities."""
        return [torch.log_softmax(part, dim=-1) for part in logits.split(self.levels, dim=-1)]

    def log_likelihood(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        digits = self.split(ids)
        parts = self.log_softmax(logits)
        return sum(lp.gather(-1, digits[..., i : i + 1]).squeeze(-1) for i, lp in enumerate(parts))

    def most_likely(self, logits: torch.Tensor) -> torch.Tensor:
        digits = torch.stack([part.argmax(-1) for part in logits.split(self.levels, dim=-1)], dim=-1)
        return self.join(digits)


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
    # "learned": one table over the raster (MaskGIT, the paper presets); "axial": t_emb[t] + h_emb[h] + w_emb[w]
    # over the (t_z, h_z, w_z) grid, so tokens in the same frame, row or column share part of their position
    # from the first step (a tiny model on a CPU budget learned ~20% lower loss at equal steps with it).
    position_embedding: str = "learned"
    # An FSQ tokenizer's levels (`modeling.quantizer.FiniteScalarQuantizer`): a code is embedded as the sum of
    # its digits' embeddings and predicted as one softmax per digit, so what the model learns about "one level
    # brighter" or "one level further right" is shared by every code (None: K unrelated ids, one softmax).
    code_levels: list[int] | None = None

    def __post_init__(self) -> None:
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}"
            )
        if self.position_embedding == "axial":
            _ = self.grid  # raises for frames that are not square grids
        if self.code_levels is not None and math.prod(self.code_levels) != self.codebook_size:
            raise ValueError(
                f"code_levels {self.code_levels} make {math.prod(self.code_levels)} codes, not codebook_size "
                f"{self.codebook_size}: take both from the FSQ tokenizer"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t_z, h_z, w_z) of the longest video: square frames of tokens_per_frame tokens."""
        side = math.isqrt(self.tokens_per_frame)
        if side * side != self.tokens_per_frame or self.seq_len % self.tokens_per_frame:
            raise ValueError(
                f"axial positions need square frames and whole latent frames: tokens_per_frame "
                f"{self.tokens_per_frame}, seq_len {self.seq_len}"
            )
        return self.seq_len // self.tokens_per_frame, side, side


def code_sizes(tokenizer: dict, transformer: dict) -> dict:
    """The transformer's code-dependent sizes from a tokenizer config dict: `codebook_size`, and for an FSQ
    tokenizer its levels as `code_levels` (factorized codes) unless the `transformer` section sets
    `code_levels` itself (`null`: one softmax over the K ids)."""
    sizes: dict = {"codebook_size": int(tokenizer["codebook_size"])}
    if tokenizer.get("quantizer") == "fsq" and "code_levels" not in transformer:
        sizes["code_levels"] = [int(v) for v in tokenizer["fsq_levels"]]
    return sizes


def maskgit_debug(**overrides) -> MaskGITConfig:
    """The tiny named debug preset: width 32, 2 layers, sized for `cvivit_debug` tokens (80 per clip, FSQ
    levels [4, 4, 4]: factorized codes and axial positions, as the demo preset)."""
    values = dict(codebook_size=64, seq_len=80, tokens_per_frame=16, dim=32, depth=2, heads=4, mlp_dim=64, text_dim=384,
                  position_embedding="axial", code_levels=[4, 4, 4])  # fmt: skip
    return MaskGITConfig(**{**values, **overrides})


@dataclass
class TextContext:
    """Per-request text conditioning: cross-attention K/V for every block, computed once."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: k, v each (B, H, L+1, Dh)
    mask: torch.Tensor  # (B, 1, 1, L+1) bool, True = attend

    def repeat(self, times: int) -> TextContext:
        return TextContext(
            [(k.repeat(times, 1, 1, 1), v.repeat(times, 1, 1, 1)) for k, v in self.kv],
            self.mask.repeat(times, 1, 1, 1),
        )


class MaskGIT(nn.Module):
    def __init__(self, cfg: MaskGITConfig):
        super().__init__()
        self.cfg = cfg
        self.mask_token_id = cfg.codebook_size
        self.digits = CodeDigits(cfg.code_levels) if cfg.code_levels else None
        # Factorized: the digit tables back to back, then [MASK]; else one row per code, then [MASK].
        vocab = self.digits.width if self.digits else cfg.codebook_size
        self.token_emb = nn.Embedding(vocab + 1, cfg.dim)
        if cfg.position_embedding == "axial":
            t, h, w = cfg.grid
            self.pos_t = nn.Parameter(torch.randn(t, cfg.dim) * 0.02)
            self.pos_h = nn.Parameter(torch.randn(h, cfg.dim) * 0.02)
            self.pos_w = nn.Parameter(torch.randn(w, cfg.dim) * 0.02)
        else:
            self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, cfg.dim) * 0.02)
        self.text_norm = nn.LayerNorm(cfg.text_dim)
        self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.heads,
                cfg.mlp_dim,
                context_dim=cfg.text_dim,
                cross_attention=True,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, vocab)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) ids, mask_token_id for [MASK] -> (B, N, D)."""
        if self.digits is None:
            return self.token_emb(tokens)
        is_mask = tokens == self.mask_token_id
        rows = self.digits.rows(tokens.clamp(max=self.cfg.codebook_size - 1))  # (B, N, d)
        x = self.token_emb(rows).sum(dim=-2)
        return torch.where(is_mask[..., None], self.token_emb.weight[-1].to(x.dtype), x)

    def log_likelihood(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """logits (B, N, V) from `forward`, tokens (B, N) ids in [0, K) -> log p(token) (B, N)."""
        if self.digits is None:
            return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return self.digits.log_likelihood(logits.float(), tokens)

    def most_likely(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, N, V) -> (B, N) the most likely id (per digit when factorized: the same thing)."""
        if self.digits is None:
            return logits.argmax(-1)
        return self.digits.most_likely(logits)

    def positions(self, n: int) -> torch.Tensor:
        """(n, D) position embeddings of the first n raster positions."""
        if self.cfg.position_embedding == "learned":
            return self.pos_emb[:n]
        table = (
            self.pos_t[:, None, None] + self.pos_h[None, :, None] + self.pos_w[None, None, :]
        )  # (t, h, w, D)
        return table.reshape(-1, self.cfg.dim)[:n]

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
        """tokens (B, N) long, with mask_token_id at unknown positions -> logits (B, N, V): one per code
        (V = K), or with `code_levels` one per digit level (V = sum of levels, one softmax per digit)."""
        n = tokens.shape[1]
        if n > self.cfg.seq_len:
            raise ValueError(f"{n} tokens exceed the model's seq_len={self.cfg.seq_len}")
        x = self.embed(tokens) + self.positions(n)
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
