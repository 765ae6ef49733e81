"""The COMMIT transformer (MAGVIT, Yu et al. 2022, sec. 4.1) with its training step and generation loop.

"We use the BERT transformer to model the token sequence, which includes 1 task prompt, 1 class token, and
1024 visual tokens": the input is [rho, c, z_bar_1 .. z_bar_N] in one id space (`PrefixLayout`:
[codebook K | MASK | 10 tasks | classes | null class]), embedded, given learned positions for 2 + N slots,
and run through bidirectional pre-LN blocks (`modeling.transformer.Block`, as in our MaskGIT) and a final
LayerNorm. The head predicts the codebook (K entries) at the N visual positions only: prefix slots are never
targets, and MASK / task / class ids are never outputs.

Text (optional, `text_dim` set): "text conditioning [is] available with MAGVIT models too" is taken the way
our MaskGIT does it: per-token text embeddings enter every block by cross-attention, K/V cached per request
(`TextContext`), with a learned null text token that unconditional rows attend to. Text is not a prefix, so
the sequence stays [rho, c, z_bar] and the class slot holds the null class when there is no class. With
`text_dim=None` the blocks have no cross-attention: the paper's class-conditional BERT.

Sizes (`count_parameters` on the meta device, see `tests/test_commit_model.py`):

| preset      | layers | width | heads | MLP  | parameters (UCF-101, 101 classes) | paper                         |
|-------------|--------|-------|-------|------|-----------------------------------|-------------------------------|
| `commit_transformer_b`  | 12     | 768   | 12    | 3072 | 87.48M (85.03M blocks)            | 87M (Table 6: "41M+87M")      |
| `commit_transformer_l`  | 24     | 1024  | 16    | 4096 | 305.50M (302.24M blocks)          | 464M total - 157.81M 3D-VQ-L  |

(our 3D-VQ-L is 157.81M, so the paper's L transformer is about 306.2M.) Blocks have no q/k/v biases and the
head is a plain linear layer (no BERT MLM transform, no weight tying); the embeddings (1137 x D), positions
(1026 x D) and head (D x 1024 + 1024) add about 2.45M at B and 3.26M at L.

Classifier-free guidance (an extension for class and text; the paper's Table 1 numbers are reported without
it): `commit_training_step` drops the condition of a row with probability `class_drop_prob` (class -> null
class, text -> null text token, together), and `logits_fn(..., guidance_scale=s)` returns
cond + s * (cond - uncond) as `modeling.sampling.guided_logits` does, in one forward pass of 2B rows.

Axes: B batch, N visual tokens (t*h*w raster order), K codebook size, V prefix vocabulary, L text tokens,
Dt text width, D model width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from modeling.commit import (
    CLASS_TASKS,
    TASK_IDS,
    CommitConfig,
    PrefixLayout,
    commit_decode,
    commit_inputs,
    commit_loss,
    condition_video,
    infer_stride,
    ispad,
)
from modeling.maskgit import TextContext
from modeling.sampling import guided_logits
from modeling.transformer import Block

__all__ = [
    "CommitTransformerConfig", "commit_transformer_b", "commit_transformer_l", "commit_transformer_debug", "CommitTransformer",
    "commit_prefix", "commit_training_step", "commit_generate",
]  # fmt: skip

_CLASS_TASK_IDS = tuple(TASK_IDS[t] for t in CLASS_TASKS)


@dataclass
class CommitTransformerConfig:
    codebook_size: int = 1024  # K: MAGVIT 3D-VQ
    num_classes: int = 101  # UCF-101; 174 SSv2; 0 = no class labels (only the null class)
    num_tasks: int = len(TASK_IDS)
    seq_len: int = 1024  # N visual tokens: 4 x 16 x 16
    grid: tuple[int, int, int] | None = (
        4,
        16,
        16,
    )  # (t, h, w) of seq_len, for `commit_generate` without a video
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1  # BERT's; set 0 to disable
    text_dim: int | None = None  # None: class-conditional BERT (paper); set: cross-attention to text

    def __post_init__(self):
        if self.grid is not None:
            self.grid = tuple(self.grid)
            if math.prod(self.grid) != self.seq_len:
                raise ValueError(
                    f"grid {self.grid} has {math.prod(self.grid)} tokens, seq_len is {self.seq_len}"
                )

    def layout(self) -> PrefixLayout:
        return PrefixLayout(self.codebook_size, self.num_classes, self.num_tasks)


def commit_transformer_b(**overrides) -> CommitTransformerConfig:
    """MAGVIT-B's transformer: BERT-base (12 layers, 768 wide, 12 heads, MLP 3072)."""
    return CommitTransformerConfig(**{**dict(dim=768, depth=12, heads=12, mlp_dim=3072), **overrides})


def commit_transformer_l(**overrides) -> CommitTransformerConfig:
    """MAGVIT-L's transformer: BERT-large (24 layers, 1024 wide, 16 heads, MLP 4096)."""
    return CommitTransformerConfig(**{**dict(dim=1024, depth=24, heads=16, mlp_dim=4096), **overrides})


def commit_transformer_debug(**overrides) -> CommitTransformerConfig:
    """Tiny named preset: width 32, 2 layers, 64 codes, 4x4x4 = 64 tokens (`magvit_vq_debug`'s grid), 4 classes."""
    values = dict(
        codebook_size=64, num_classes=4, seq_len=64, grid=(4, 4, 4), dim=32, depth=2, heads=4, mlp_dim=64,
        dropout=0.0,
    )  # fmt: skip
    return CommitTransformerConfig(**{**values, **overrides})


def _task_ids(task: str | torch.Tensor, batch: int, device) -> torch.Tensor:
    if isinstance(task, str):
        if task not in TASK_IDS:
            raise ValueError(f"unknown task {task!r}; expected one of {tuple(TASK_IDS)}")
        return torch.full((batch,), TASK_IDS[task], dtype=torch.long, device=device)
    task = torch.as_tensor(task, device=device).long().reshape(-1).expand(batch)
    return task


def commit_prefix(
    layout: PrefixLayout, task: str | torch.Tensor, class_ids: torch.Tensor | None, batch: int, device=None
) -> torch.Tensor:
    """Per-row `PrefixLayout.prefix`: task (B,) long ids (or one name), class_ids (B,) long (-1 = null) or None
    -> (B, 2) [task token, class token]. Rows whose task is not cg/cfp get the null class whatever class_ids
    say, as `PrefixLayout.prefix` does, so the class token only ever conditions the class tasks."""
    tasks = _task_ids(task, batch, device)
    classes = torch.full((batch,), layout.null_class_id, dtype=torch.long, device=device)
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids, device=device).long().reshape(-1).expand(batch)
        uses_class = torch.zeros_like(tasks, dtype=torch.bool)
        for task_id in _CLASS_TASK_IDS:
            uses_class |= tasks == task_id
        classes = torch.where(uses_class & (class_ids >= 0), layout.class_offset + class_ids, classes)
    return torch.stack([layout.task_offset + tasks, classes], dim=1)


class CommitTransformer(nn.Module):
    """BERT over [rho, c, z_bar] -> codebook logits at the visual positions."""

    def __init__(self, cfg: CommitTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = cfg.layout()
        self.mask_token_id = self.layout.mask_id
        self.prefix_len = self.layout.prefix_len
        self.text = cfg.text_dim is not None
        self.token_emb = nn.Embedding(self.layout.vocab_size, cfg.dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = nn.Parameter(torch.randn(self.prefix_len + cfg.seq_len, cfg.dim) * 0.02)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        if self.text:
            self.text_norm = nn.LayerNorm(cfg.text_dim)
            self.null_text = nn.Parameter(torch.randn(1, cfg.text_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(
                cfg.dim,
                cfg.heads,
                cfg.mlp_dim,
                context_dim=cfg.text_dim,
                cross_attention=self.text,
                dropout=cfg.dropout,
            )  # fmt: skip
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.codebook_size)

    # ---- text --------------------------------------------------------------------------------------------
    def _require_text(self) -> None:
        if not self.text:
            raise ValueError("this COMMIT transformer has no text cross-attention (text_dim=None)")

    def encode_text(
        self, text: torch.Tensor, text_mask: torch.Tensor | None = None, drop_text: torch.Tensor | None = None
    ) -> TextContext:
        """text (B, L, Dt), text_mask (B, L) bool (None = all real), drop_text (B,) bool -> cached K/V.

        As `MaskGIT.encode_text`: the null token is prepended to every row and is the only key a dropped row
        (or one with no real token) attends to."""
        self._require_text()
        b, length = text.shape[:2]
        if text_mask is None:
            text_mask = torch.ones(b, length, dtype=torch.bool, device=text.device)
        if drop_text is None:
            drop_text = torch.zeros(b, dtype=torch.bool, device=text.device)
        ctx = torch.cat([self.null_text.expand(b, 1, -1).to(text.dtype), self.text_norm(text)], dim=1)
        keep_text = text_mask.bool() & ~drop_text.to(text.device).bool()[:, None]
        use_null = ~keep_text.any(dim=1, keepdim=True)
        mask = torch.cat([use_null, keep_text], dim=1)[:, None, None, :]  # (B, 1, 1, L+1)
        return TextContext([block.cross.project_kv(ctx) for block in self.blocks], mask)

    def null_context(self, batch: int) -> TextContext:
        """The unconditional context: every row attends to the null text token alone."""
        self._require_text()
        ctx = self.null_text.expand(batch, 1, -1)
        mask = torch.ones(batch, 1, 1, 1, dtype=torch.bool, device=ctx.device)
        return TextContext([block.cross.project_kv(ctx) for block in self.blocks], mask)

    def guidance_context(
        self, text: torch.Tensor | None, text_mask: torch.Tensor | None, batch: int
    ) -> TextContext:
        """[cond; uncond] context of 2B rows for `logits_fn(..., guidance_scale=s)`."""
        if text is None:
            return self.null_context(2 * batch)
        if text_mask is not None:
            text_mask = text_mask.repeat(2, 1)
        drop = torch.arange(2 * batch, device=text.device) >= batch
        return self.encode_text(text.repeat(2, 1, 1), text_mask, drop)

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        task: str | torch.Tensor,
        class_ids: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        *,
        context: TextContext | None = None,
    ) -> torch.Tensor:
        """tokens z_bar (B, N) long (mask id at masked positions), task (B,) long ids or a name, class_ids (B,)
        long (-1 = null/dropped) or None -> logits (B, N, K) at the visual positions.

        Text models take `text` (B, L, Dt) + `text_mask` + `drop_text`, or a precomputed `context`; with
        neither they run unconditionally on the null text token."""
        b, n = tokens.shape
        if n > self.cfg.seq_len:
            raise ValueError(f"{n} tokens exceed the model's seq_len={self.cfg.seq_len}")
        if self.text:
            if context is None:
                context = (
                    self.encode_text(text, text_mask, drop_text) if text is not None else self.null_context(b)
                )
            kvs, mask = context.kv, context.mask
        else:
            if text is not None or context is not None:
                self._require_text()
            kvs, mask = [None] * len(self.blocks), None
        prefix = commit_prefix(self.layout, task, class_ids, b, tokens.device)
        seq = self.layout.sequence(prefix, tokens)
        x = self.emb_dropout(self.token_emb(seq) + self.pos_emb[: self.prefix_len + n])
        for block, kv in zip(self.blocks, kvs, strict=True):
            x = block(x, context_kv=kv, context_mask=mask)
        return self.head(self.norm(x[:, self.prefix_len :]))

    def logits_fn(
        self,
        task: str | torch.Tensor,
        class_ids: torch.Tensor | None = None,
        context: TextContext | None = None,
        *,
        guidance_scale: float = 0.0,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A `commit_decode` logits_fn closing over the prefix [rho, c] and the text context.

        guidance_scale s != 0: cond + s * (cond - uncond), uncond = null class and null text, in one batch of
        2B rows; a text model's `context` must then hold 2B rows [cond; uncond] (`guidance_context`)."""
        guided = guidance_scale != 0.0

        def fn(tokens: torch.Tensor) -> torch.Tensor:
            b = tokens.shape[0]
            if not guided:
                return self(tokens, task, class_ids, context=context)
            tasks = _task_ids(task, b, tokens.device).repeat(2)
            classes = torch.full((b,), -1, dtype=torch.long, device=tokens.device)
            if class_ids is not None:
                classes = torch.as_tensor(class_ids, device=tokens.device).long().reshape(-1).expand(b)
            classes = torch.cat([classes, torch.full_like(classes, -1)])
            ctx = context
            if self.text:
                ctx = context if context is not None else self.null_context(2 * b)
                if ctx.mask.shape[0] != 2 * b:
                    raise ValueError(
                        "guided decoding needs a [cond; uncond] context of 2B rows (guidance_context)"
                    )
            return guided_logits(self(tokens.repeat(2, 1), tasks, classes, context=ctx), guidance_scale)

        return fn


def commit_training_step(
    model: CommitTransformer,
    z: torch.Tensor,
    z_cond: torch.Tensor,
    cond_mask: torch.Tensor,
    task: str | torch.Tensor,
    class_ids: torch.Tensor | None,
    *,
    cfg: CommitConfig,
    generator: torch.Generator | None = None,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    class_drop_prob: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One COMMIT loss (no optimizer step). z (B, N) long targets f_T(V), z_cond (B, N) f_T(V~), cond_mask (B, N)
    ~ispad, task (B,) long ids (or one name), class_ids (B,) long (-1 = none) -> (loss, metrics).

    Eq. 2 corrupts z with `commit_inputs` (mask ratio from `cfg.mask_schedule`), Eq. 3/4 weigh the refine /
    mask / recons parts by `cfg.loss_weights`. Each row's condition (class and text together) is dropped with
    probability `class_drop_prob` so that the same model is also the unconditional one for guidance."""
    b = z.shape[0]
    device = z.device
    inputs, targets, parts = commit_inputs(
        z, z_cond, cond_mask, mask_id=model.mask_token_id, schedule=cfg.mask_schedule, generator=generator
    )
    drop = (torch.rand(b, generator=generator, device="cpu") < class_drop_prob).to(device)
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids, device=device).long().reshape(-1).expand(b)
        class_ids = class_ids.masked_fill(drop, -1)
    logits = model(inputs, task, class_ids, text, text_mask, drop if text is not None else None)
    loss, metrics = commit_loss(logits, targets, parts, cfg.loss_weights)
    metrics["cond_drop_fraction"] = float(drop.float().mean())
    return loss, metrics


@torch.no_grad()
def commit_generate(
    model: CommitTransformer,
    tokenizer_encode: Callable[[torch.Tensor], torch.Tensor] | None,
    video: torch.Tensor | None,
    task: str,
    class_ids: torch.Tensor | None = None,
    *,
    cfg: CommitConfig,
    generator: torch.Generator | None = None,
    text: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    grid: tuple[int, int, int] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One task's generation -> tokens (B, t, h, w) long, for the tokenizer's decoder.

    video (B, C, T, H, W) in [-1, 1] holds the condition in the task's given region (the rest may be anything);
    it is padded into V~ (`condition_video`, `cfg.task_params`), encoded z~ = f_T(V~), and Eq. 2's ispad gives
    the condition tokens. Only V~ is encoded (`tokenize_with_condition` would also encode V, whose tokens are
    not used here). cg has no condition pixels: video may be None (batch from class_ids, grid from `grid` or
    the model config) and every token starts as [MASK]. Decoding is Algorithm 1 (`commit_decode`)."""
    device = next(model.parameters()).device
    if task == "cg":
        if video is not None:
            batch = video.shape[0]
            stride = cfg.tokenizer_stride
            grid = grid or tuple(p // s for p, s in zip(video.shape[-3:], stride, strict=True))
        elif class_ids is not None:
            batch = torch.as_tensor(class_ids).reshape(-1).shape[0]
        elif text is not None:
            batch = text.shape[0]
        else:
            raise ValueError("cg without a video needs class_ids or text for the batch size")
        grid = grid or model.cfg.grid
        if grid is None:
            raise ValueError("cg without a video needs `grid` (or a model config with one)")
        n = math.prod(grid)
        z_cond = torch.zeros(batch, n, dtype=torch.long, device=device)
        cond_mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
    else:
        if video is None or tokenizer_encode is None:
            raise ValueError(f"{task} needs a condition video and a tokenizer")
        batch = video.shape[0]
        cond, pixel_mask = condition_video(
            task, video, cfg.task_params(task, video.shape), pad_value=cfg.pad_value
        )
        z_cond = tokenizer_encode(cond)
        grid = tuple(z_cond.shape[1:])
        cond_mask = ~ispad(pixel_mask, infer_stride(video.shape, grid))
        z_cond = z_cond.reshape(batch, -1).to(device).long()
        cond_mask = cond_mask.reshape(batch, -1).to(device)
    if task in CLASS_TASKS and class_ids is None and not model.text:
        raise ValueError(f"{task} needs class_ids")
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids, device=device).long().reshape(-1)
        if class_ids.ge(model.cfg.num_classes).any():
            raise ValueError(f"class ids must be < num_classes={model.cfg.num_classes}")
    context = None
    if model.text and text is not None:
        text = text.to(device)
        text_mask = None if text_mask is None else text_mask.to(device)
        context = (
            model.guidance_context(text, text_mask, batch)
            if guidance_scale
            else model.encode_text(text, text_mask)
        )
    elif text is not None:
        model._require_text()
    tokens = commit_decode(
        model.logits_fn(task, class_ids, context, guidance_scale=guidance_scale),
        z_cond,
        cond_mask,
        mask_id=model.mask_token_id,
        steps=cfg.steps,
        schedule=cfg.mask_schedule,
        temperature=cfg.temperature,
        sample_temperature=cfg.sample_temperature,
        confidence=cfg.confidence,
        generator=generator,
        on_step=on_step,
    )
    return tokens.reshape(batch, *grid)
