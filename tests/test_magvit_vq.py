"""MAGVIT 3D-VQ (modeling/magvit_vq.py): shapes, reflect padding, 2D->3D inflation, and the shared losses.

All at the debug preset (16x32x32 clips -> 4x4x4 tokens); the B/L presets are only built on the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
from modeling.losses import LeCamEMA, TokenizerLossConfig, discriminator_loss, generator_loss
from modeling.magvit_blocks import pad_same
from modeling.magvit_vq import (
    Magvit2DVQ,
    MagvitVQ,
    MagvitVQConfig,
    MagvitVQOutput,
    inflate_2d_to_3d,
    magvit_vq_b,
    magvit_vq_debug,
    magvit_vq_l,
)
from modeling.typed_config import build_dataclass


def clip(b: int = 2, t: int = 16, seed: int = 0, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, size, size, generator=g) * 2 - 1


def static_clip(b: int = 2, t: int = 16, seed: int = 0) -> torch.Tensor:
    """One random frame repeated t times."""
    return clip(b, 1, seed).expand(-1, -1, t, -1, -1).contiguous()


@pytest.fixture
def model() -> MagvitVQ:
    torch.manual_seed(0)
    return MagvitVQ(magvit_vq_debug()).eval()


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- shapes ---------------------------------------------------------------------------------------------------


def test_presets_and_compression():
    debug, b, large = magvit_vq_debug(), magvit_vq_b(), magvit_vq_l()
    assert (b.spatial_compression, b.temporal_compression) == (8, 4)  # 4x8x8 (paper sec. 4.1, Tab. 7)
    assert b.token_grid(16) == (4, 16, 16)  # 16x128x128 -> 1024 tokens
    assert debug.token_grid(16) == (4, 4, 4)
    assert (b.base_channels, large.base_channels, b.codebook_size, b.embedding_dim) == (64, 128, 1024, 256)
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        b.latent_frames(17)
    with pytest.raises(ValueError, match="one flag per pooling step"):
        MagvitVQConfig(temporal_downsample=(True, True))
    with pytest.raises(ValueError, match="padding"):
        MagvitVQConfig(padding="circular")
    # YAML gives lists; the preset loader turns them into the tuple fields
    cfg = build_dataclass(
        MagvitVQConfig,
        {"image_size": 64, "channel_multipliers": [1, 2, 4], "temporal_downsample": [True, True]},
    )
    assert cfg.channel_multipliers == (1, 2, 4) and cfg.token_grid(16) == (4, 16, 16)


def test_forward_shapes_and_round_trip(model):
    x = clip()
    out = model(x)
    assert isinstance(out, MagvitVQOutput) and isinstance(out, tuple)
    assert set(out._fields) == {
        "recon",
        "indices",
        "vq_loss",
        "commit_loss",
        "perplexity",
        "used_codes",
        "latents",
    }
    assert out.recon.shape == x.shape
    assert out.indices.shape == (2, *model.token_grid(16)) == (2, 4, 4, 4)
    assert out.indices.dtype == torch.long and int(out.indices.min()) >= 0 and int(out.indices.max()) < 64
    assert out.latents.shape == (2, 4, 4, 4, 16)
    assert torch.equal(model.encode(x), out.indices)
    assert model.decode(out.indices).shape == x.shape
    assert torch.allclose(model.decode(out.indices), out.recon, atol=1e-5)
    assert (model.latent_frames(16), model.num_frames(4)) == (4, 16)
    with pytest.raises(ValueError, match="multiple of 4 frames"):
        model(clip(t=9))  # C-ViViT's 1 + k*t_p is not MAGVIT's clip length


def test_short_clip_falls_back_to_replicate_in_time(model):
    # 4 frames -> 1 latent frame: the deep levels see T=1, too short to reflect; time is replicated there.
    assert model(clip(t=4)).indices.shape == (2, 1, 4, 4)
    x = torch.arange(2.0).view(1, 1, 1, 1, 2).expand(1, 1, 1, 3, 2)  # T=1, H=3, W=2
    y = pad_same(x, (3, 3, 3), "reflect")
    assert y.shape == (1, 1, 3, 5, 4)
    assert torch.equal(y[:, :, 0], y[:, :, 1]) and torch.equal(y[:, :, 2], y[:, :, 1])  # time: replicated
    assert y[0, 0, 1, 0].tolist() == [1.0, 0.0, 1.0, 0.0]  # space: reflected


def test_gradients_reach_every_parameter(model):
    model.train()
    out = model(clip())
    (out.recon.square().mean() + out.vq_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert isinstance(model.quantizer.codebook, torch.nn.Parameter)  # MAGVIT learns the codebook by loss


def test_ema_codebook_and_dead_code_restart():
    torch.manual_seed(0)
    m = MagvitVQ(magvit_vq_debug(codebook_update="ema")).train()
    assert "quantizer.codebook" not in dict(m.named_parameters())  # a buffer: ours to edit under ZeRO
    assert m.quantizer.entropy_weight > 0  # the entropy loss backpropagates through the codebook distances
    before = m.quantizer.codebook.clone()
    out = m(clip())
    assert not torch.equal(before, m.quantizer.codebook)
    (F.mse_loss(out.recon, clip()) + out.vq_loss).backward()  # the in-place EMA update broke this (issue 12)
    assert all(p.grad is not None for p in m.encoder.parameters() if p.requires_grad)
    restarted = m.quantizer.restart_dead_codes(
        out.latents, threshold=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert 0 < restarted <= 64 and torch.isfinite(m.quantizer.codebook).all()


# ---- reflect padding ---------------------------------------------------------------------------------------


def test_reflect_padding_keeps_a_constant_video_constant(model):
    x = torch.full((1, 3, 16, 32, 32), 0.3)
    first = model.encoder.conv_in(x)  # no bias: border outputs see only the constant too
    assert torch.allclose(first, first[:, :, :1, :1, :1].expand_as(first), atol=1e-6)
    out = model(x)
    assert out.indices.unique().numel() == 1  # the same content gives the same token everywhere
    assert torch.allclose(out.latents, out.latents[:, :1, :1, :1].expand_as(out.latents), atol=1e-5)
    torch.manual_seed(0)
    zeros = MagvitVQ(magvit_vq_debug(padding="zeros"))
    border = zeros.encoder.conv_in(x)
    assert not torch.allclose(border, border[:, :, 8:9, 16:17, 16:17].expand_as(border), atol=1e-3)


# ---- inflation -----------------------------------------------------------------------------------------------


def _trained_looking_2d(cfg: MagvitVQConfig) -> Magvit2DVQ:
    """A 2D-VQ with non-trivial norms/biases and a codebook spread over its own latents (many codes in use)."""
    torch.manual_seed(1)
    m = Magvit2DVQ(cfg).double().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif "norm" in name:
                p.mul_(1 + 0.1 * torch.randn_like(p))
        z = m.encode_latents(clip(4, 4, seed=5).double()).reshape(-1, cfg.embedding_dim)
        m.quantizer.codebook.copy_(z[torch.randperm(z.shape[0])[: cfg.codebook_size]])
    return m


def _inflated(m2d: Magvit2DVQ, mode: str) -> MagvitVQ:
    m3d = MagvitVQ(m2d.cfg).double().eval()
    m3d.load_state_dict(inflate_2d_to_3d(m2d.state_dict(), m3d, mode=mode))
    return m3d


@pytest.mark.parametrize("mode", ["central", "average"])
def test_inflated_3d_model_equals_2d_model_on_a_static_video(mode):
    """Static video: every 3D latent frame == the 2D latents of that frame; same tokens; same decoded frames.

    Exact (to float64 rounding) for both modes because reflect padding keeps a constant-in-time signal
    constant, 3D average pooling of equal frames is 2D pooling, nearest upsampling in time repeats frames, and
    GroupNorm statistics over (T, H, W) of T equal frames are the per-frame ones."""
    m2d = _trained_looking_2d(magvit_vq_debug())
    m3d = _inflated(m2d, mode)
    x = static_clip(2, 16, seed=3).double()
    lat2, lat3 = m2d.encode_latents(x[:, :, :1]), m3d.encode_latents(x)  # (B, 1, 4, 4, D), (B, 4, 4, 4, D)
    assert torch.allclose(lat3, lat2.expand_as(lat3), atol=1e-10, rtol=1e-8)
    idx2, idx3 = m2d.encode(x[:, :, :1]), m3d.encode(x)
    assert idx2.unique().numel() > 4  # a meaningful comparison: many codes in play
    assert torch.equal(idx3, idx2.expand_as(idx3))
    rec2, rec3 = m2d.decode(idx2), m3d.decode(idx3)  # (B, C, 1, H, W), (B, C, 16, H, W)
    assert torch.allclose(rec3, rec2.expand_as(rec3), atol=1e-10, rtol=1e-8)


def test_central_and_average_inflation_on_a_moving_video():
    """First layer, any video: central -> each output frame is the 2D conv of its own frame; average -> the mean
    of the 2D conv over the frame and its two neighbours (reflect-padded in time)."""
    m2d = _trained_looking_2d(magvit_vq_debug())
    x = clip(1, 16, seed=4).double()
    per_frame = m2d.encoder.conv_in(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (1, 16)).transpose(1, 2)
    central = _inflated(m2d, "central").encoder.conv_in(x)
    assert torch.allclose(central, per_frame, atol=1e-12)
    average = _inflated(m2d, "average").encoder.conv_in(x)
    padded = F.pad(per_frame, (0, 0, 0, 0, 1, 1), mode="reflect")
    assert torch.allclose(
        average, (padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]) / 3, atol=1e-12
    )
    assert not torch.allclose(average, central, atol=1e-3)  # the two differ once frames differ


def test_zero_padding_breaks_average_inflation_at_the_clip_ends():
    """Why reflect matters for inflation: with zero temporal padding, average inflation loses a third of the
    first/last frames' response on a static video; central inflation never reads the padded taps."""
    m2d = _trained_looking_2d(magvit_vq_debug(padding="zeros"))
    x = static_clip(1, 16, seed=6).double()
    frame = m2d.encoder.conv_in(x[:, :, 0])
    assert torch.allclose(_inflated(m2d, "central").encoder.conv_in(x)[:, :, 0], frame, atol=1e-12)
    average = _inflated(m2d, "average").encoder.conv_in(x)
    assert torch.allclose(average[:, :, 8], frame, atol=1e-12)
    assert torch.allclose(average[:, :, 0], frame * 2 / 3, atol=1e-12)


def test_inflate_checks_keys_modes_and_also_inflates_the_discriminator():
    m2d, m3d = Magvit2DVQ(magvit_vq_debug()), MagvitVQ(magvit_vq_debug())
    with pytest.raises(ValueError, match="mode"):
        inflate_2d_to_3d(m2d.state_dict(), m3d, mode="tiled")
    with pytest.raises(ValueError, match="differ"):
        inflate_2d_to_3d({k: v for k, v in m2d.state_dict().items() if "decoder" not in k}, m3d)
    with pytest.raises(ValueError, match="cannot inflate"):
        inflate_2d_to_3d(Magvit2DVQ(magvit_vq_debug(embedding_dim=8)).state_dict(), m3d)
    d2 = StyleGANDiscriminator(DiscriminatorConfig(image_size=32, base_channels=8, dims=2))
    d3 = StyleGANDiscriminator(DiscriminatorConfig(image_size=32, base_channels=8, dims=3))
    d3.load_state_dict(inflate_2d_to_3d(d2.state_dict(), d3))
    w2, w3 = d2.blocks[0].conv1.weight, d3.blocks[0].conv1.weight
    assert torch.equal(w3[:, :, 1], w2) and not w3[:, :, 0].any()


# ---- sizes -------------------------------------------------------------------------------------------------


def test_parameter_counts_of_the_paper_presets():
    with torch.device("meta"):
        b, large = MagvitVQ(magvit_vq_b()), MagvitVQ(magvit_vq_l())
        b2d = Magvit2DVQ(magvit_vq_b())
    n_b, n_l = count(b), count(large)
    print(f"MAGVIT 3D-VQ-B {n_b / 1e6:.2f}M, 3D-VQ-L {n_l / 1e6:.2f}M, 2D-VQ-B {count(b2d) / 1e6:.2f}M")
    assert abs(n_b - 41e6) / 41e6 < 0.03  # paper Tab. 6: 3D-VQ "41M" (+ 87M transformer = B's 128M)
    assert 3.5 < n_l / n_b < 4.0  # twice the width everywhere (no paper number for the L tokenizer alone)


# ---- losses and discriminator ---------------------------------------------------------------------------------


def test_generator_and_discriminator_losses_take_magvit_outputs(model):
    model.train()
    disc = StyleGANDiscriminator(DiscriminatorConfig(image_size=32, base_channels=8, dims=3))
    x = clip()
    out = model(x)
    assert disc(out.recon).shape == (2,)  # the 3D-inflated StyleGAN discriminator judges whole clips
    cfg = TokenizerLossConfig(adv_weight=0.1, lecam_weight=0.001, gan_loss="non_saturating")
    loss, metrics = generator_loss(out, x, disc, cfg, step=0)
    assert torch.isfinite(loss) and {"l2", "vq", "psnr", "adv_g", "used_codes"} <= set(metrics)
    loss.backward()
    assert model.encoder.conv_in.weight.grad is not None
    d_loss, d_metrics = discriminator_loss(disc, x, out.recon, cfg, LeCamEMA())
    assert torch.isfinite(d_loss) and "lecam" in d_metrics


def test_fsq_quantizer_option():
    """`quantizer: fsq` (the demo preset's choice, not the paper's): an implicit grid of prod(levels) codes,
    trained by the reconstruction loss alone; levels must multiply to codebook_size."""
    torch.manual_seed(0)
    m = MagvitVQ(magvit_vq_debug(quantizer="fsq", fsq_levels=[4, 4, 4], codebook_size=64)).train()
    out = m(clip())
    assert out.indices.shape == (2, 4, 4, 4) and out.indices.min() >= 0 and out.indices.max() < 64
    F.mse_loss(out.recon, clip()).backward()
    assert m.quantizer.project_in.weight.grad is not None
    ids = torch.randint(0, 64, (1, 4, 4, 4))
    assert m.decode(ids).shape == (1, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="fsq_levels whose product is codebook_size"):
        magvit_vq_debug(quantizer="fsq", fsq_levels=[4, 4], codebook_size=64)
