"""MAGVIT 3D-VQ: the convolutional video tokenizer of MAGVIT (Yu et al. 2022, sec. 3.1 "Spatial-Temporal
Tokenization"), as an alternative to C-ViViT.

A 16-frame 128x128 clip becomes 4x16x16 tokens from a 1024-entry codebook (4x8x8 compression, sec. 4.1). The
encoder/decoder are VQGAN's residual CNN inflated to 3D (modeling/magvit_blocks.py): 3D average-pooling in the
shallow levels, 2D in the deep ones, the decoder mirrored; reflect instead of zero padding. Unlike C-ViViT the
model is not causal and there is no separate first frame: T must be a multiple of 4 (not 1 + k*t_p).

Quantizer: MAGVIT's is a plain VQ (VQ-VAE losses with a learned codebook in the 256-d latent space, plus
MaskGIT's entropy loss, commitment 0.25), not Phenaki's factorised l2-normalised one, so `PlainQuantizer` below
is separate from `modeling.quantizer.FactorizedQuantizer`: that one always projects to a small code space and
l2-normalises both sides (cosine lookup), and neither can be switched off without changing the method. It
returns the same `QuantizerOutput` tuple and offers the same EMA / dead-code-restart hooks.

Inflation (sec. 3.1 "Inflation and padding"): `Magvit2DVQ` is the matching per-frame 2D-VQ (same config, same
state-dict keys, Conv2d kernels) and `inflate_2d_to_3d` initialises the 3D model from it: "central" puts each
2D kernel on the temporally central tap of a zero 3D kernel, "average" spreads it evenly over the taps;
all other parameters are copied.

Axes: B batch, C channels, T frames, H/W pixels, t/h/w token grid (T/4, H/8, W/8), D embedding width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from modeling.magvit_blocks import PAD_MODES, Decoder, Encoder
from modeling.quantizer import FiniteScalarQuantizer, QuantizerOutput, check_fsq_levels


@dataclass
class MagvitVQConfig:
    image_size: int = 128  # H = W
    channels: int = 3
    base_channels: int = 64  # "filters": B 64, L 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)  # one level each; 2x spatial pooling between levels
    num_res_blocks: int = 2  # per level in encoder and decoder, and again in each middle stack
    temporal_downsample: tuple[bool, ...] = (True, True, False)  # per pooling step: 3D (True) or 2D
    embedding_dim: int = 256  # D: latent and codebook width
    codebook_size: int = 1024
    commitment_weight: float = 0.25  # beta
    entropy_weight: float = 0.1  # MaskGIT's entropy loss (per-sample entropy - batch entropy); 0 = off
    entropy_temperature: float = 0.01
    codebook_update: str = "loss"  # "loss": learned by ||sg(z) - e||^2 (MAGVIT); "ema": buffers (restartable)
    padding: str = "reflect"  # "reflect" (MAGVIT), "replicate" or "zeros"
    norm_groups: int = 32  # GroupNorm groups (capped at the width)
    # "vq": MAGVIT's plain VQ (above). "fsq": finite scalar quantization (`modeling.quantizer`), not the paper's:
    # the demo preset's choice, because a small learned codebook loses the object's colour (docs/magvit.md).
    quantizer: str = "vq"
    fsq_levels: list[int] | None = None  # quantizer "fsq": levels per dim; codebook_size = their product

    def __post_init__(self):
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per pooling step ({len(self.channel_multipliers) - 1} for "
                f"{len(self.channel_multipliers)} levels), got {tuple(self.temporal_downsample)}"
            )
        if self.padding not in PAD_MODES:
            raise ValueError(f"padding must be one of {PAD_MODES}, got {self.padding!r}")
        if self.codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', got {self.codebook_update!r}")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.quantizer == "fsq":
            check_fsq_levels(self.fsq_levels, self.codebook_size)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def grid(self) -> int:
        if self.image_size % self.spatial_compression:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.spatial_compression}")
        return self.image_size // self.spatial_compression

    def latent_frames(self, num_frames: int) -> int:
        tc = self.temporal_compression
        if num_frames < 1 or num_frames % tc:
            raise ValueError(
                f"MAGVIT 3D-VQ takes a multiple of {tc} frames (no separate first frame, unlike C-ViViT's "
                f"1 + k*t_p); got {num_frames}"
            )
        return num_frames // tc

    def usable_frames(self, num_frames: int) -> int:
        """The longest clip length <= num_frames the 3D model takes: a multiple of its temporal compression."""
        return max(num_frames, 0) // self.temporal_compression * self.temporal_compression

    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        """(t, h, w) tokens of a `num_frames` clip of the 3D model."""
        return self.latent_frames(num_frames), self.grid, self.grid


def magvit_vq_b(**overrides) -> MagvitVQConfig:
    """MAGVIT 3D-VQ-B (UCF-101 / Kinetics at 128x128): base 64, multipliers (1, 2, 2, 4), 2 res blocks.
    For BAIR at 64x64 the release uses channel_multipliers=(1, 2, 4) (still 4x16x16 tokens)."""
    return MagvitVQConfig(**{"base_channels": 64, **overrides})


def magvit_vq_l(**overrides) -> MagvitVQConfig:
    """MAGVIT 3D-VQ-L: as B with base 128."""
    return MagvitVQConfig(**{"base_channels": 128, **overrides})


def magvit_vq_debug(**overrides) -> MagvitVQConfig:
    """Tiny named preset: 16x32x32 clips -> 4x4x4 = 64 tokens, widths 8/16/16/32, one res block per stack,
    64 codes of width 16; real code paths in milliseconds on CPU."""
    values = dict(
        image_size=32, base_channels=8, num_res_blocks=1, embedding_dim=16, codebook_size=64, norm_groups=8,
    )  # fmt: skip
    return MagvitVQConfig(**{**values, **overrides})


class MagvitVQOutput(NamedTuple):
    # The field names of CViViTOutput, so modeling.losses.generator_loss and the trainer take either model.
    # A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 hooks only see tensors inside tuples/lists/dicts.
    recon: torch.Tensor  # (B, C, T, H, W)
    indices: torch.Tensor  # (B, t, h, w)
    vq_loss: torch.Tensor  # codebook term + beta * commitment + entropy_weight * entropy
    commit_loss: torch.Tensor
    perplexity: torch.Tensor
    used_codes: torch.Tensor
    latents: torch.Tensor  # (B, t, h, w, D) pre-quantization encoder output


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def entropy_loss(affinity: torch.Tensor, temperature: float) -> torch.Tensor:
    """MaskGIT/MAGVIT entropy loss on (M, K) affinities (-distances): mean per-sample entropy of the soft code
    assignment (pushed down: confident picks) minus the entropy of the batch-averaged assignment (pushed up:
    use many codes)."""
    logits = affinity.float() / temperature
    probs = logits.softmax(-1)
    sample_entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    avg = probs.mean(0)
    return sample_entropy + (avg * torch.log(avg + 1e-5)).sum()


class PlainQuantizer(nn.Module):
    """Nearest-neighbour VQ in the latent space (squared euclidean, no projection, no normalisation)."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        entropy_temperature: float = 0.01,
        codebook_update: str = "loss",
        ema_decay: float = 0.99,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.codebook_update = codebook_update
        self.ema_decay = ema_decay
        # No projection here; present so code written for FactorizedQuantizer (ZeRO-3 gathers its parameters
        # before a dead-code restart) works unchanged.
        self.project_in = nn.Identity()
        limit = math.sqrt(3.0 / codebook_size)  # the release's variance_scaling(1, fan_in, uniform) on (K, D)
        init = torch.empty(codebook_size, dim).uniform_(-limit, limit)
        if codebook_update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", init.clone())
            self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("usage", torch.zeros(codebook_size))  # averaged picks per step (dead codes)

    @property
    def restartable(self) -> bool:
        return self.codebook_update == "ema"  # a parameter codebook lives in ZeRO's master copy

    def codes_to_embeddings(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) long -> (..., D)."""
        return F.embedding(indices, self.codebook)

    def _distances(self, z: torch.Tensor) -> torch.Tensor:
        # An EMA codebook is rewritten in place by `_update_statistics` in this same forward, while autograd
        # keeps it for the entropy loss's backward: give autograd a copy (K x D, small).
        cb = self.codebook.float() if self.codebook_update == "loss" else self.codebook.float().clone()
        zf = z.float()
        return zf.pow(2).sum(-1, keepdim=True) - 2 * zf @ cb.t() + cb.pow(2).sum(-1)

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        shape = x.shape[:-1]
        z = x.reshape(-1, x.shape[-1])  # (M, D)
        distances = self._distances(z)  # (M, K)
        indices = distances.argmin(-1)
        e = F.embedding(indices, self.codebook).to(z.dtype)
        commit = F.mse_loss(z, e.detach())
        loss = self.commitment_weight * commit
        if self.codebook_update == "loss":
            loss = loss + F.mse_loss(e, z.detach())
        if self.entropy_weight > 0:
            loss = loss + self.entropy_weight * entropy_loss(-distances, self.entropy_temperature)
        if self.training:
            self._update_statistics(z.detach(), indices)
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        probs = counts / counts.sum().clamp(min=1)
        return QuantizerOutput(
            quantized=(z + (e - z).detach()).reshape(*shape, -1),  # straight-through estimator
            indices=indices.reshape(shape),
            vq_loss=loss,
            commit_loss=commit.detach(),
            perplexity=torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum()).detach(),
            used_codes=(counts > 0).sum().detach(),
        )

    @torch.no_grad()
    def _update_statistics(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        one_hot = F.one_hot(indices, self.codebook_size).float()
        counts = _all_reduce_sum(one_hot.sum(0))
        self.usage.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
        if self.codebook_update == "ema":
            sums = _all_reduce_sum(one_hot.t() @ z.float())
            self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            self.codebook.copy_(self.ema_sum / self.ema_count.clamp(min=1e-5).unsqueeze(-1))

    @torch.no_grad()
    def restart_dead_codes(
        self, x: torch.Tensor, threshold: float = 0.03, generator: torch.Generator | None = None
    ) -> int:
        """Re-seed codes whose averaged usage fell below `threshold` with encoder outputs from `x` (..., D),
        drawn in proportion to their squared distance from the nearest live code (as FactorizedQuantizer).
        Only with codebook_update="ema": a codebook *parameter* written here would be undone by ZeRO."""
        dead = self.usage < threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        z = x.detach().reshape(-1, x.shape[-1]).float()
        live = self.codebook[~dead].float()
        if live.shape[0]:
            zf = z.pow(2).sum(-1, keepdim=True) - 2 * z @ live.t() + live.pow(2).sum(-1)
            distance = zf.min(-1).values.clamp(min=0)
        else:
            distance = torch.ones(z.shape[0], device=z.device)
        weights = (distance.square() + 1e-12).cpu()
        pick = torch.multinomial(weights, num_dead, replacement=True, generator=generator).to(z.device)
        scale = z.std().clamp(min=1e-6)
        noise = torch.randn(num_dead, z.shape[-1], generator=generator, device="cpu").to(z.device)
        fresh = z[pick] + 0.01 * scale * noise
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(fresh, src=0)
        self.codebook.data[dead] = fresh.to(self.codebook.dtype)
        if self.codebook_update == "ema":
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0
        self.usage[dead] = 2 * threshold
        return num_dead


class MagvitVQ(nn.Module):
    """The 3D-VQ. `Magvit2DVQ` (below) is the same network with 2D convolutions applied frame by frame."""

    dims = 3

    def __init__(self, cfg: MagvitVQConfig):
        super().__init__()
        self.cfg = cfg
        _ = cfg.grid  # validates image_size
        self.encoder = Encoder(cfg, self.dims)
        if cfg.quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(cfg.embedding_dim, cfg.fsq_levels)
        else:
            self.quantizer = PlainQuantizer(
                cfg.embedding_dim, cfg.codebook_size,
                commitment_weight=cfg.commitment_weight, entropy_weight=cfg.entropy_weight,
                entropy_temperature=cfg.entropy_temperature, codebook_update=cfg.codebook_update,
            )  # fmt: skip
        self.decoder = Decoder(cfg, self.dims)

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        return self.cfg.temporal_compression if self.dims == 3 else 1

    def latent_frames(self, num_frames: int) -> int:
        return self.cfg.latent_frames(num_frames) if self.dims == 3 else num_frames

    def num_frames(self, latent_frames: int) -> int:
        return latent_frames * self.temporal_compression

    def token_grid(self, num_frames: int) -> tuple[int, int, int]:
        return self.latent_frames(num_frames), self.cfg.grid, self.cfg.grid

    def _check(self, video: torch.Tensor) -> None:
        cfg = self.cfg
        if video.dim() != 5 or video.shape[1] != cfg.channels:
            raise ValueError(f"expected video (B, {cfg.channels}, T, H, W), got {tuple(video.shape)}")
        s = cfg.spatial_compression
        if video.shape[-1] % s or video.shape[-2] % s:
            raise ValueError(f"frame size {tuple(video.shape[-2:])} is not a multiple of {s}")
        if video.shape[2] < 1:
            raise ValueError("empty clip")
        self.latent_frames(video.shape[2])

    # ---- encoder ------------------------------------------------------------------------------------------
    def encode_latents(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [-1, 1] -> continuous encoder output (B, t, h, w, D)."""
        self._check(video)
        if self.dims == 2:
            z = self.encoder(rearrange(video, "b c t h w -> (b t) c h w"))
            return rearrange(z, "(b t) d h w -> b t h w d", b=video.shape[0])
        return rearrange(self.encoder(video), "b d t h w -> b t h w d")

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> token ids (B, t, h, w)."""
        return self.quantizer(self.encode_latents(video)).indices

    # ---- decoder ------------------------------------------------------------------------------------------
    def decode_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, t, h, w, D) quantized embeddings -> video (B, C, t * 4, h * 8, w * 8)."""
        if self.dims == 2:
            x = self.decoder(rearrange(emb, "b t h w d -> (b t) d h w"))
            return rearrange(x, "(b t) c h w -> b c t h w", b=emb.shape[0])
        return self.decoder(rearrange(emb, "b t h w d -> b d t h w"))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Token ids (B, t, h, w) -> video (B, C, t * 4, H, W)."""
        return self.decode_embeddings(self.quantizer.codes_to_embeddings(indices))

    def forward(self, video: torch.Tensor) -> MagvitVQOutput:
        latents = self.encode_latents(video)
        q = self.quantizer(latents)
        return MagvitVQOutput(
            recon=self.decode_embeddings(q.quantized),
            indices=q.indices,
            vq_loss=q.vq_loss,
            commit_loss=q.commit_loss,
            perplexity=q.perplexity,
            used_codes=q.used_codes,
            latents=latents,
        )


class Magvit2DVQ(MagvitVQ):
    """The matching 2D-VQ (MAGVIT's inflation source): the same config and state-dict keys, 2D convolutions and
    2D pooling only, applied to each frame independently. Any T; tokens (B, T, H/8, W/8)."""

    dims = 2


def inflate_2d_to_3d(
    state_2d: Mapping[str, torch.Tensor], model_3d: nn.Module, mode: str = "central"
) -> dict[str, torch.Tensor]:
    """A state dict for `model_3d` from the state dict of its 2D counterpart (Magvit2DVQ -> MagvitVQ, or a
    dims=2 -> dims=3 StyleGANDiscriminator): conv kernels (O, I, kh, kw) -> (O, I, kt, kh, kw) by

    - "central": the 2D kernel on tap kt // 2, zeros elsewhere: each output frame is exactly the 2D conv of
      its own input frame, whatever the neighbours;
    - "average": the 2D kernel / kt on every tap: the mean of the 2D conv over kt neighbouring (padded) frames.

    Every other tensor (biases, norms, codebook, linear layers) is copied; keys or shapes that do not
    correspond raise. Load the result with `model_3d.load_state_dict(...)`.
    """
    if mode not in ("central", "average"):
        raise ValueError(f"mode must be 'central' or 'average', got {mode!r}")
    target = model_3d.state_dict()
    missing, unexpected = sorted(set(target) - set(state_2d)), sorted(set(state_2d) - set(target))
    if missing or unexpected:
        raise ValueError(f"2D and 3D state dicts differ: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out: dict[str, torch.Tensor] = {}
    for key, t in target.items():
        s = state_2d[key].detach()
        if s.shape == t.shape:
            out[key] = s.clone()
        elif s.dim() == 4 and t.dim() == 5 and s.shape == t.shape[:2] + t.shape[3:]:
            kt = t.shape[2]
            if mode == "central":
                w = s.new_zeros(t.shape)
                w[:, :, kt // 2] = s
            else:
                w = s.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
            out[key] = w
        else:
            raise ValueError(f"cannot inflate {key}: 2D {tuple(s.shape)} -> 3D {tuple(t.shape)}")
    return out
