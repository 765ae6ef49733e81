"""Benchmarks run end to end in their --quick mode and write the report they promise (no timing thresholds)."""

from __future__ import annotations

import json

from benchmarks import sampling_speed


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
