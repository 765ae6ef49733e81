"""The comparison against phenaki-pytorch runs offline in CI's environment (the `bench` extra that
scripts/install.sh installs) and writes the report it promises. No skip when the peer is missing: CI installs it,
so a missing peer is a broken install. No timing thresholds."""

from __future__ import annotations

import json
import os

import pytest
import torch

from benchmarks import peer_comparison
from benchmarks.peer import build_peer, check_comparable, import_peer
from modeling.cvivit import CViViTConfig
from modeling.maskgit import MaskGITConfig


def test_peer_comparison_quick_runs_offline_and_both_make_videos_of_one_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the peer must not reach the hub (its T5, its VGG weights)
    out = tmp_path / "peer.json"
    assert peer_comparison.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in (
        "date",
        "machine",
        "torch",
        "peer",
        "threads",
        "configuration",
        "parameters",
        "outputs",
        "rows",
    ):
        assert key in report, key
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert report["peer"]["version"] == "0.5.0"
    assert report["setup"]["quick"] is True and report["threads"]["intra_op"] == 1
    cfg = report["configuration"]
    frames, size = cfg["frames"], cfg["tokenizer"]["image_size"]
    t, h, w = cfg["token_grid"]
    assert t * h * w == cfg["seq_len"] == cfg["transformer"]["seq_len"]
    # Both sampled a video of the same shape, and tokenized and decoded the same batch the same way.
    outputs = report["outputs"]
    assert outputs["ours_video"] == outputs["peer_video"] == [1, 3, frames, size, size]
    batch = cfg["encode_batch"]
    assert outputs["ours_codes"] == outputs["peer_codes"] == [batch, t, h, w]
    assert outputs["ours_decoded"] == outputs["peer_decoded"] == [batch, 3, frames, size, size]
    # Same configuration: parameter counts within a few percent (the designs differ in small parts).
    for part in ("cvivit", "maskgit"):
        ours, peer = report["parameters"]["ours"][part], report["parameters"]["peer"][part]
        assert abs(ours - peer) / ours < 0.1, (part, ours, peer)
    assert set(report["rows"]) == {"sample", "encode", "decode"}
    for row in report["rows"].values():
        for side in ("ours", "peer"):
            assert row[side]["seconds_median"] > 0 and row[side]["clips_per_second"] > 0
        assert row["ours_faster_by"] == pytest.approx(
            row["peer"]["seconds_median"] / row["ours"]["seconds_median"], rel=1e-2
        )
    work = report["work"]
    for side in ("ours", "peer"):
        assert work["guided_maskgit_step_flops"][side] > 0
        assert work["encode"][side]["flops"] > 0 and work["encode"][side]["fraction_of_peak"] > 0
    assert work["matmul_peak"]["gflops"] > 0
    assert report["rows"]["sample"]["goal_faster_by"] == 3.0
    assert report["rows"]["encode"]["goal_faster_by"] == 2.0


def test_peer_imports_with_torchvision_on_a_cpu_torch():
    module = import_peer()
    import torchvision  # the CUDA wheel next to a CPU torch imports once the two op schemas exist

    assert module.CViViT is not None and torchvision.__version__


def test_incomparable_configurations_are_refused_with_the_reason():
    tok = CViViTConfig(image_size=32, patch_size=8, dim=64, heads=4, mlp_dim=128, codebook_size=1000)
    mg = MaskGITConfig(
        codebook_size=1000, seq_len=80, tokens_per_frame=16, dim=64, depth=1, heads=4, mlp_dim=256
    )
    with pytest.raises(ValueError, match="mlp_dim 128 != 4 \\* dim 64") as err:
        check_comparable(tok, mg)
    assert "power of 2" in str(err.value)
    with pytest.raises(ValueError, match="code_levels"):
        build_peer(
            CViViTConfig(image_size=32, patch_size=8, dim=64, heads=4, mlp_dim=256, codebook_size=64),
            MaskGITConfig(codebook_size=64, seq_len=80, tokens_per_frame=16, code_levels=[4, 4, 4]),
            2,
            torch.zeros(1, 4, 384),
            torch.ones(1, 4, dtype=torch.bool),
        )
