"""benchmarks.training runs end to end in --quick mode and writes the report it promises (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from benchmarks import training

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_zero_formulas_and_largest_layer() -> None:
    psi = 1000
    one, eight = training.formula_bytes(psi, 1), training.formula_bytes(psi, 8)
    assert one == {"zero0": 16_000, "zero1": 16_000, "zero2": 16_000, "zero3": 16_000}
    assert eight == {"zero0": 16_000, "zero1": 4000 + 1500, "zero2": 2000 + 1750, "zero3": 2000}
    fp32 = training.expected_fp32_bytes(psi, 2, 3)
    assert fp32 == {"module_parameters": 2000, "master_partition": 2000, "optimizer_state": 4000}

    import torch

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 16))
    assert training.largest_layer(model) == ("1", 8 * 16 + 16)


def test_training_benchmark_quick(tmp_path, ray_local) -> None:
    out = tmp_path / "t.json"
    assert training.main(["--quick", "--skip-gpu", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert ray_local.is_initialized()  # it joined the session's Ray and left it running
    report = json.loads(out.read_text())
    for key in ("machine", "setup", "estimates", "throughput", "memory", "gpu", "notes"):
        assert key in report, key
    assert report["setup"]["quick"] is True and report["setup"]["ray_started_here"] is False

    est = report["estimates"]
    assert est["preset"] == "phenaki-1.8b" and est["transformer_parameters"] > 1.8e9
    assert 0 < est["largest_layer"]["parameters"] < est["transformer_parameters"]
    for setup in ("1x1", "1x8", "8x8"):
        s = est["setups"][setup]
        f = s["formula_gib_per_rank"]
        assert all(_positive(f[k]) for k in ("zero0", "zero1", "zero2", "zero3"))
        assert f["zero0"] >= f["zero1"] >= f["zero2"] >= f["zero3"]
        ds = s["deepspeed"]
        assert _positive(ds["zero2"]["no_offload"]["gpu_gib_per_gpu"])
        assert _positive(ds["zero3"]["offload_optimizer_and_params"]["zero_init"]["cpu_gib_per_node"])
        assert ds["zero3"]["no_offload"]["zero_init"]["gpu_gib_per_gpu"] >= f["zero3"]
    # 18 bytes per parameter on one GPU (DeepSpeed) against the paper's 16
    one = est["setups"]["1x1"]
    assert one["deepspeed"]["zero2"]["no_offload"]["gpu_gib_per_gpu"] > one["formula_gib_per_rank"]["zero2"]

    debug = report["throughput"]["transformer"]["debug"]
    for w in ("1", "2"):
        e = debug[w]
        assert e["workers"] == int(w) and e["steps_timed_per_run"] >= 1
        for k in ("step_s_median", "samples_per_s", "tokens_per_s", "peak_rss_mib_max"):
            assert _positive(e[k]), (w, k)
        assert e["tokens_per_step"] == e["samples_per_step"] * 80  # the debug preset's 5x4x4 grid
    assert _positive(debug["scaling_1_to_2"]) and debug["parameters"] > 0

    mem = report["memory"]
    assert 0 < mem["baseline"]["idle_worker_rss_mib"] < mem["baseline"]["loaded_worker_rss_mib"]
    job = mem["job"]["zero2"]
    assert len(job["peak_rss_mib_per_worker"]) == 2 and _positive(job["peak_rss_mib_max"])
    probe = mem["probe"]["debug"]["zero3"]
    assert mem["probe"]["debug"]["workers"] == len(probe["deepspeed_mib_per_rank"]) == 1
    for held in probe["deepspeed_mib_per_rank"]:
        assert _positive(held["module_parameters"]) and _positive(held["optimizer_state"])
        # what DeepSpeed holds is what the fp32 formula says, to rounding
        for part in ("module_parameters", "master_partition", "optimizer_state"):
            assert held[part] == pytest.approx(probe["expected_mib_per_rank"][part], abs=0.02), part
    assert all(_positive(r["peak_vmhwm"]) for r in probe["rss_mib_per_rank"])
    assert all(_positive(x) for x in probe["peak_over_start_mib_per_rank"])
    assert report["gpu"] == {"skipped": "--skip-gpu"}
