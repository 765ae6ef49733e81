"""C-ViViT: the causal video tokenizer of Phenaki (sec. 2.1, appendix B.1).

A video of 1 + t_x frames is cut into w_p x h_p patches for the first frame and t_p x w_p x h_p tubelets for
the rest, each linearly projected to width D (`first_frame: separate`, the paper's layout; with `repeat` the
first frame is repeated t_p times into a static tubelet and shares the tubelet projection both ways, so an image
and a video frame speak one code language: what a still teaches, e.g. a colour seen only in images, is already
in the tokens a video uses). Spatial transformer layers attend all-to-all within each latent
frame, then temporal layers attend *causally* along time at each spatial location, so latent frame t only
sees frames <= t: the first frame is encoded as an image and tokens never depend on the future. No CLS
tokens. The decoder mirrors it: code embeddings -> temporal (causal) -> spatial -> one linear map to pixels.

Axes: B batch, C channels, T frames, H/W pixels, t latent frames (= 1 + T' / t_p), h/w token grid,
D model width. Position embeddings are learned tables indexed by position (never convolutions over
neighbours, which is how a re-implementation leaked future frames into past tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from modeling.quantizer import FactorizedQuantizer, FiniteScalarQuantizer, check_fsq_levels
from modeling.transformer import Stack

FIRST_FRAME_MODES = ("separate", "repeat")
QUANTIZERS = ("vq", "fsq")


@dataclass
class CViViTConfig:
    image_size: int = 128  # h_x = w_x
    patch_size: int = 8  # h_p = w_p
    temporal_patch_size: int = 2  # t_p
    channels: int = 3
    dim: int = 512  # hidden size
    spatial_depth: int = 4
    temporal_depth: int = 4
    heads: int = 8
    mlp_dim: int = 2048
    code_dim: int = 32  # embedding dimension after the factorized projection
    codebook_size: int = 8192
    commitment_weight: float = 0.25
    codebook_update: str = "ema"  # "ema" or "loss" (see modeling/quantizer.py)
    max_latent_frames: int = 64  # temporal position table size: up to 1 + 63 * t_p input frames
    dropout: float = 0.0
    first_frame: str = "separate"  # "separate": own patch projection (paper); "repeat": a static tubelet
    encoder_spatial_depth: int | None = None  # None: spatial_depth; 0 keeps codes local to their patch
    encoder_positions: bool = True  # position tables added before the encoder (off: a code is what it shows)
    quantizer: str = "vq"  # "vq": factorized l2-normalised VQ (paper); "fsq": finite scalar quantization
    fsq_levels: list[int] | None = None  # quantizer "fsq": levels per dim; codebook_size = their product

    def __post_init__(self) -> None:
        if self.first_frame not in FIRST_FRAME_MODES:
            raise ValueError(f"first_frame must be one of {FIRST_FRAME_MODES}, got {self.first_frame!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq":
            check_fsq_levels(self.fsq_levels, self.codebook_size)
        if self.encoder_spatial_depth is not None and self.encoder_spatial_depth < 0:
            raise ValueError(f"encoder_spatial_depth must be >= 0, got {self.encoder_spatial_depth}")

    @property
    def enc_spatial_depth(self) -> int:
        return self.spatial_depth if self.encoder_spatial_depth is None else self.encoder_spatial_depth

    @property
    def grid(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        return self.image_size // self.patch_size

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames t of a 1 + k*t_p frame clip: the first frame alone, then one per tubelet."""
        pt = self.temporal_patch_size
        if num_frames < 1 or (num_frames - 1) % pt:
            raise ValueError(
                f"C-ViViT takes 1 + k*{pt} frames (first frame alone, then tubelets of {pt}); got {num_frames}"
            )
        t = 1 + (num_frames - 1) // pt
        if t > self.max_latent_frames:
            raise ValueError(
                f"{num_frames} frames need {t} latent frames > max_latent_frames={self.max_latent_frames}"
            )
        return t

    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        """(t, h, w) tokens of a `num_frames` clip."""
        return self.latent_frames(num_frames), self.grid, self.grid

    def usable_frames(self, num_frames: int) -> int:
        """The longest clip length <= num_frames this tokenizer takes: 1 + k*t_p (0 for none)."""
        return usable_frames(num_frames, self.temporal_patch_size)


def usable_frames(num_frames: int, temporal_patch: int) -> int:
    """The longest 1 + k*temporal_patch <= num_frames (the first frame alone, then whole tubelets); 0 for none."""
    if num_frames < 1:
        return 0
    return 1 + (num_frames - 1) // temporal_patch * temporal_patch


def cvivit_debug(**overrides) -> CViViTConfig:
    """The tiny named debug preset (torchtitan's `llama3_debugmodel` idea): 32x32, 8x8 patches, 80 tokens per
    9-frame clip, width 32; real code paths in milliseconds. `configs/debug.yaml` holds the same values. It
    makes the demo preset's choices (local FSQ codes, the first frame as a static tubelet), so `phenaki demo
    --fast` runs the demo's code paths; `phenaki describe --config cvivit-paper` is the paper's layout."""
    values = dict(
        image_size=32, patch_size=8, temporal_patch_size=2, dim=32, spatial_depth=1, temporal_depth=1,
        heads=4, mlp_dim=64, code_dim=8, codebook_size=64, max_latent_frames=16, first_frame="repeat",
        encoder_spatial_depth=0, encoder_positions=False, quantizer="fsq", fsq_levels=[4, 4, 4],
    )  # fmt: skip
    return CViViTConfig(**{**values, **overrides})


class CViViTOutput(NamedTuple):
    # A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks only see tensors inside tuples/lists/dicts.
    recon: torch.Tensor  # (B, C, T, H, W)
    indices: torch.Tensor  # (B, t, h, w)
    vq_loss: torch.Tensor
    commit_loss: torch.Tensor
    perplexity: torch.Tensor
    used_codes: torch.Tensor
    latents: torch.Tensor  # (B, t, h, w, D) pre-quantization encoder output (for dead-code restarts)


class CViViT(nn.Module):
    def __init__(self, cfg: CViViTConfig):
        super().__init__()
        self.cfg = cfg
        p, pt, c, d = cfg.patch_size, cfg.temporal_patch_size, cfg.channels, cfg.dim
        g = cfg.grid
        if cfg.first_frame == "separate":
            self.first_frame_in = nn.Linear(c * p * p, d)
        self.tubelet_in = nn.Linear(c * pt * p * p, d)
        if cfg.encoder_positions:
            self.enc_space_pos = nn.Parameter(torch.randn(g * g, d) * 0.02)
            self.enc_time_pos = nn.Parameter(torch.randn(cfg.max_latent_frames, d) * 0.02)
        self.enc_spatial = Stack(d, cfg.enc_spatial_depth, cfg.heads, cfg.mlp_dim, cfg.dropout)
        self.enc_temporal = Stack(d, cfg.temporal_depth, cfg.heads, cfg.mlp_dim, cfg.dropout)
        if cfg.quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(d, cfg.fsq_levels)
        else:
            self.quantizer = FactorizedQuantizer(
                d,
                cfg.code_dim,
                cfg.codebook_size,
                commitment_weight=cfg.commitment_weight,
                codebook_update=cfg.codebook_update,
            )
        self.dec_space_pos = nn.Parameter(torch.randn(g * g, d) * 0.02)
        self.dec_time_pos = nn.Parameter(torch.randn(cfg.max_latent_frames, d) * 0.02)
        self.dec_temporal = Stack(d, cfg.temporal_depth, cfg.heads, cfg.mlp_dim, cfg.dropout)
        self.dec_spatial = Stack(d, cfg.spatial_depth, cfg.heads, cfg.mlp_dim, cfg.dropout)
        if cfg.first_frame == "separate":
            self.first_frame_out = nn.Linear(d, c * p * p)
        self.tubelet_out = nn.Linear(d, c * pt * p * p)

    # ---- shapes -------------------------------------------------------------------------------------------
    def latent_frames(self, num_frames: int) -> int:
        return self.cfg.latent_frames(num_frames)

    def num_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.cfg.temporal_patch_size

    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        return self.cfg.token_grid(num_frames)

    # ---- encoder ------------------------------------------------------------------------------------------
    def _patchify(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, t, h, w, D)."""
        cfg = self.cfg
        if video.shape[-1] != cfg.image_size or video.shape[-2] != cfg.image_size:
            raise ValueError(
                f"expected {cfg.image_size}x{cfg.image_size} frames, got {tuple(video.shape[-2:])}"
            )
        self.latent_frames(video.shape[2])
        p, pt = cfg.patch_size, cfg.temporal_patch_size
        if cfg.first_frame == "repeat":  # (B, C, t_p + T - 1, H, W): frame 0 as a static tubelet
            video = torch.cat([video[:, :, :1].expand(-1, -1, pt, -1, -1), video[:, :, 1:]], dim=2)
            return self.tubelet_in(
                rearrange(video, "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", pt=pt, p1=p, p2=p)
            )
        first = rearrange(video[:, :, :1], "b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=p, p2=p)
        tokens = [self.first_frame_in(first)]
        if video.shape[2] > 1:
            rest = rearrange(
                video[:, :, 1:], "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)", pt=pt, p1=p, p2=p
            )
            tokens.append(self.tubelet_in(rest))
        return torch.cat(tokens, dim=1)

    def _add_positions(self, x: torch.Tensor, space: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        _, t, h, w, _ = x.shape
        return x + space.view(1, 1, h, w, -1) + time[:t].view(1, t, 1, 1, -1)

    def _space_time(
        self, x: torch.Tensor, spatial: Stack, temporal: Stack, spatial_first: bool
    ) -> torch.Tensor:
        """Run the factorised transformer on (B, t, h, w, D)."""
        b, t, h, w, _ = x.shape

        def run_spatial(y: torch.Tensor) -> torch.Tensor:
            y = spatial(rearrange(y, "b t h w d -> (b t) (h w) d"))
            return rearrange(y, "(b t) (h w) d -> b t h w d", b=b, h=h)

        def run_temporal(y: torch.Tensor) -> torch.Tensor:
            y = temporal(rearrange(y, "b t h w d -> (b h w) t d"), is_causal=True)
            return rearrange(y, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

        return run_temporal(run_spatial(x)) if spatial_first else run_spatial(run_temporal(x))

    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [-1, 1] -> continuous encoder output (B, t, h, w, D)."""
        x = self._patchify(video)
        if self.cfg.encoder_positions:
            x = self._add_positions(x, self.enc_space_pos, self.enc_time_pos)
        return self._space_time(x, self.enc_spatial, self.enc_temporal, spatial_first=True)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> token ids (B, t, h, w)."""
        return self.quantizer(self.encode_latents(video)).indices

    # ---- decoder ------------------------------------------------------------------------------------------
    def decode_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, D) quantized embeddings -> video (B, C, T, H, W)."""
        cfg = self.cfg
        p, pt = cfg.patch_size, cfg.temporal_patch_size
        x = self._add_positions(emb, self.dec_space_pos, self.dec_time_pos)
        x = self._space_time(x, self.dec_spatial, self.dec_temporal, spatial_first=False)
        if cfg.first_frame == "repeat":  # latent frame 0 decodes to a static tubelet: keep its last frame
            out = rearrange(
                self.tubelet_out(x), "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", pt=pt, p1=p, p2=p
            )
            return out[:, :, pt - 1 :]
        frames = [
            rearrange(self.first_frame_out(x[:, :1]), "b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=p, p2=p)
        ]
        if x.shape[1] > 1:
            rest = self.tubelet_out(x[:, 1:])
            frames.append(
                rearrange(rest, "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)", pt=pt, p1=p, p2=p)
            )
        return torch.cat(frames, dim=2)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) -> video (B, C, 1 + (t-1)*t_p, H, W)."""
        return self.decode_embeddings(self.quantizer.codes_to_embeddings(indices))

    def forward(self, video: torch.Tensor) -> CViViTOutput:
        latents = self.encode_latents(video)
        q = self.quantizer(latents)
        return CViViTOutput(
            recon=self.decode_embeddings(q.quantized),
            indices=q.indices,
            vq_loss=q.vq_loss,
            commit_loss=q.commit_loss,
            perplexity=q.perplexity,
            used_codes=q.used_codes,
            latents=latents,
        )
