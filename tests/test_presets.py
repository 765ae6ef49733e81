"""Paper presets: parameter counts (meta device), token shapes, FLOP counts, and preset inheritance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.config import load_config
from jobs.describe import describe
from modeling.flops import maskgit_attention_flops, maskgit_forward_flops
from modeling.maskgit import MaskGIT, maskgit_debug


@pytest.mark.parametrize("preset, target", [("phenaki-1.8b", 1.8e9), ("phenaki-0.9b", 0.9e9)])
def test_paper_transformer_presets_are_within_5_percent_of_the_paper(preset, target):
    report = describe(load_config(preset))
    params = report["transformer"]["parameters"]
    assert abs(params / target - 1) < 0.05, f"{preset}: {params / 1e9:.3f}B vs {target / 1e9}B"
    # table 7's sequence: an 11-frame 128x128 clip is 6 x 16 x 16 = 1536 tokens from an 8192-code book
    assert report["tokenizer"]["token_grid"] == [6, 16, 16]
    assert report["transformer"]["seq_len"] == 1536 and report["tokenizer"]["codebook_size"] == 8192
    assert report["total_parameters"] == params + report["tokenizer"]["parameters"]


def test_paper_presets_match_tables_6_and_7():
    big, small, cvivit = load_config("phenaki-1.8b"), load_config("phenaki-0.9b"), load_config("cvivit-paper")
    assert {k: big["transformer"][k] for k in ("depth", "dim", "heads", "mlp_dim")} == dict(
        depth=24, dim=2048, heads=32, mlp_dim=8192
    )
    assert {k: small["transformer"][k] for k in ("depth", "dim", "heads", "mlp_dim")} == dict(
        depth=20, dim=1536, heads=24, mlp_dim=6144
    )
    tok = cvivit["tokenizer"]
    assert (
        tok["image_size"],
        tok["patch_size"],
        tok["temporal_patch_size"],
        tok["dim"],
        tok["spatial_depth"],
        tok["temporal_depth"],
        tok["heads"],
        tok["mlp_dim"],
        tok["code_dim"],
        tok["codebook_size"],
    ) == (128, 8, 2, 512, 4, 4, 8, 2048, 32, 8192)
    assert big["tokenizer"] == tok  # inherited, not copied
    assert (
        big["sampling"]["guidance_scale"] == 12.0
        and big["sampling"]["steps"] == 48
        and big["sampling"]["temperature"] == 8.0
    )
    for cfg in (big, cvivit):
        train = cfg.get("transformer_train") or cfg["tokenizer_train"]
        assert train["betas"] == [0.9, 0.99] and train["weight_decay"] == 1e-4 and train["grad_clip"] == 10.0
    assert (
        big["transformer_train"]["video_fraction"] == 0.8
        and small["transformer_train"]["video_fraction"] == 0.5
    )


def test_cvivit_paper_preset_is_about_50m_parameters():
    # appendix B.1: the encoder-decoder baselines have ~50M parameters
    params = describe(load_config("cvivit-paper"))["tokenizer"]["parameters"]
    assert 45e6 < params < 56e6


def test_describe_allocates_no_weights():
    # the 1.8B preset in fp32 is 7.4 GB; described on the meta device it needs no storage at all
    import tracemalloc

    tracemalloc.start()
    describe(load_config("phenaki-1.8b"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200e6


def test_describe_cli_prints_json(capsys):
    from jobs.cli import main

    assert main(["describe", "--config", "debug", "--json", "transformer.depth=3"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["config"] == "debug" and report["transformer"]["depth"] == 3
    real = MaskGIT(
        maskgit_debug(depth=3, codebook_size=64, seq_len=80, tokens_per_frame=16)
    )  # FSQ [4, 4, 4] codes
    assert report["transformer"]["parameters"] == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize("code_levels", [None, [4, 4, 4]], ids=["one-softmax", "factorized"])
def test_forward_flops_match_pytorchs_flop_counter(code_levels):
    cfg = maskgit_debug(dim=64, depth=2, heads=4, mlp_dim=128, text_dim=48, code_levels=code_levels)
    model = MaskGIT(cfg).eval()
    b, n, length = 2, cfg.seq_len, 7
    tokens = torch.randint(0, cfg.codebook_size, (b, n))
    text, mask = torch.randn(b, length, cfg.text_dim), torch.ones(b, length, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens, text, mask)
    # FlopCounterMode counts every projection but not the CPU attention kernel, which we add analytically
    counted = counter.get_total_flops() + maskgit_attention_flops(cfg, n, length, batch=b)
    assert counted == maskgit_forward_flops(cfg, n, length, batch=b)


def test_inherit_merges_sections_and_rejects_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("transformer: {dim: 64, depth: 2}\nsampling: {steps: 12}\n")
    (tmp_path / "child.yaml").write_text(f"inherit: {tmp_path / 'base.yaml'}\ntransformer: {{depth: 4}}\n")
    config = load_config(tmp_path / "child.yaml", ["sampling.steps=24"])
    assert config == {"transformer": {"dim": 64, "depth": 4}, "sampling": {"steps": 24}}
    (tmp_path / "a.yaml").write_text(f"inherit: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"inherit: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_config(tmp_path / "a.yaml")


def test_magvit_presets_match_the_paper():
    # table 6: the 3D-VQ of MAGVIT-B has 41M parameters; 16x128x128 -> 4x16x16 tokens from 1024 codes
    b, l_ = describe(load_config("magvit-b")), describe(load_config("magvit-l"))
    assert b["tokenizer"]["family"] == "magvit_vq" and b["tokenizer"]["token_grid"] == [4, 16, 16]
    assert b["tokenizer"]["codebook_size"] == 1024
    assert abs(b["tokenizer"]["parameters"] / 41e6 - 1) < 0.05
    assert l_["tokenizer"]["parameters"] > 3 * b["tokenizer"]["parameters"]


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_describe_runs_on_every_config_and_labels_its_totals(path, capsys):
    from jobs.cli import main

    assert main(["describe", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tokenizer" in out and "parameters" in out and "what a checkpoint holds" in out
    report = describe(load_config(str(path)))
    assert report["total_parameters"] == report["tokenizer"]["parameters"] + report.get(
        "transformer", {}
    ).get("parameters", 0)
    assert report["trained_parameters"] == report["total_parameters"] + report["discriminator_parameters"]
    if report["discriminator_parameters"]:
        assert "with the discriminator" in out


def test_describe_counts_the_commit_transformer_it_trains():
    from modeling.commit_model import CommitTransformer, CommitTransformerConfig

    report = describe(load_config("magvit-commit-debug"))["transformer"]
    assert report["family"] == "commit" and report["seq_len"] == 64 and report["text_dim"] is None
    real = CommitTransformer(CommitTransformerConfig(codebook_size=64, num_classes=4, seq_len=64, grid=(4, 4, 4), dim=32,
                                                     depth=2, heads=4, mlp_dim=64, dropout=0.0))  # fmt: skip
    assert report["parameters"] == sum(p.numel() for p in real.parameters())
    assert report["forward_flops_per_clip"] > 0


def test_typed_configs_coerce_safe_values_and_name_wrong_ones():
    """An override reaches the dataclass as YAML parsed it: `peak_lr=5e-4` is a *string* to PyYAML (YAML 1.1
    wants a dot) and used to fail on the workers, after the cluster started, with a TypeError."""
    from jobs.config import apply_overrides
    from jobs.training.common import TrainConfig
    from modeling.typed_config import build_dataclass

    section = apply_overrides({"t": {}}, ["t.peak_lr=5e-4", "t.steps=1e3", "t.warmup_steps=10"])["t"]
    cfg = build_dataclass(TrainConfig, section)
    assert cfg.peak_lr == 5e-4 and cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert build_dataclass(TrainConfig, {"peak_lr": 1}).peak_lr == 1.0
    from jobs.config import load_yaml

    assert load_yaml("t: {peak_lr: 5e-4, steps: 1e3, name: 1e}") == {
        "t": {"peak_lr": 5e-4, "steps": 1000.0, "name": "1e"}
    }
    for bad, message in (({"peak_lr": "fast"}, "TrainConfig.peak_lr must be float, got 'fast'"),
                         ({"steps": 2.5}, "TrainConfig.steps must be int"),
                         ({"steps": "2.5e0"}, "TrainConfig.steps must be int"),
                         ({"steps": True}, "TrainConfig.steps must be int")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            build_dataclass(TrainConfig, bad)
