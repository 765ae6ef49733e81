"""Benchmarks run end to end in their --quick mode and write the report they promise (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from benchmarks import sampling_speed, tokenizer_throughput


def test_sampling_speed_quick(tmp_path):
    out = tmp_path / "s.json"
    # One thread: a tiny model's many small ops under OpenMP slow down badly when the cores are shared.
    assert sampling_speed.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in (
        "machine",
        "torch",
        "threads",
        "setup",
        "flop_counting",
        "matmul_peak",
        "models",
        "full_preset_estimate",
    ):
        assert key in report, key
    assert report["setup"]["quick"] is True and report["threads"]["intra_op"] == 1
    assert report["matmul_peak"]["gflops"] > 0
    assert set(report["models"]) == {"demo", "paper_shaped_128"}
    for name, model in report["models"].items():
        n = model["seq_len"]
        assert n == model["token_grid"][0] * model["token_grid"][1] * model["token_grid"][2]
        assert n == model["maskgit_config"]["seq_len"]
        steps = model["sampling_vs_steps"]
        assert list(steps) == [str(k) for k in sampling_speed.QUICK_STEPS]
        for k, r in steps.items():
            assert r["seconds_median"] > 0 and all(s > 0 for s in r["seconds"])
            assert 1 <= r["forward_passes"] <= int(k)
        assert model["decode"]["seconds_median"] > 0
        ar = model["autoregressive"]
        assert ar["seconds_median"] > 0 and ar["forward_passes"] == ar["tokens"] == n
        for r in model["ar_vs_maskgit"].values():
            assert r["ar_seconds_over_maskgit_seconds"] > 0
        flops = model["flops"]
        for part in ("maskgit_step", "ar_step"):
            assert flops[part]["flops"] > 0 and flops[part]["seconds_median"] > 0
            assert flops[part]["achieved_gflops"] > 0 and flops[part]["fraction_of_peak"] > 0
        # Attention is counted (the FLOP counter has no CPU SDPA formula of its own; the benchmark adds one).
        assert any("attention" in op for op in flops["maskgit_step"]["flops_by_op"]), name
    assert report["models"]["paper_shaped_128"]["seq_len"] == 1536
    assert report["full_preset_estimate"]["guided_step_flops"] > 0


def test_tokenizer_throughput_quick(tmp_path):
    out = tmp_path / "t.json"
    # The two cheap models (the paper-shaped C-ViViT takes seconds per clip even in quick mode).
    argv = ["--quick", "--threads", "1", "--only", "cvivit_demo", "magvit_b", "--out", str(out)]
    assert tokenizer_throughput.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["quick"] is True and report["threads"] == 1 and report["date"]
    assert set(report["models"]) == {"cvivit_demo", "magvit_b"}
    assert report["models"]["magvit_b"]["preset"] == "magvit-debug"  # quick mode swaps B for the debug preset
    for model in report["models"].values():
        c, t, h, w = model["clip_shape"]
        assert (
            model["tokens_per_clip"]
            == model["token_grid"][0] * model["token_grid"][1] * model["token_grid"][2]
        )
        for part in ("encode", "decode"):
            r = model[part]
            assert r["seconds_median"] > 0 and r["flops"] > 0 and r["fraction_of_peak"] > 0
            assert r["clips_per_s"] * model["tokens_per_clip"] == pytest.approx(r["tokens_per_s"], rel=0.01)
