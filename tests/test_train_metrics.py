"""Training observability (`jobs.training.metrics`) and the FLOP counts MFU divides by (`modeling.flops`)."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.training.common import Worker, run_storage
from jobs.training.metrics import (
    MetricsLog,
    Throughput,
    gpu_peak_tflops,
    peak_tflops,
    read_tensorboard_scalars,
)
from modeling.cvivit import CViViT, cvivit_debug
from modeling.discriminator import DiscriminatorConfig, StyleGANDiscriminator
from modeling.flops import (
    TRAINING_FLOPS_PER_FORWARD,
    counted_flops,
    maskgit_forward_flops,
    meta_forward_flops,
    module_forward_flops,
    tokenizer_forward_flops,
)
from modeling.magvit_vq import MagvitVQ, magvit_vq_debug
from modeling.maskgit import MaskGIT, maskgit_debug


def test_throughput_metrics_are_per_step_work_over_step_time() -> None:
    t = Throughput(samples_per_step=4, tokens_per_step=320, forward_flops_per_step=10**12, peak_tflops=6.0,
                   world_size=2)  # fmt: skip
    m = t.metrics(0.5)
    assert m["step_s"] == 0.5
    assert m["samples_per_s"] == 4 * 2 / 0.5 and m["tokens_per_s"] == 320 * 2 / 0.5
    assert m["achieved_tflops"] == pytest.approx(TRAINING_FLOPS_PER_FORWARD * 1.0 / 0.5)  # per worker
    assert m["mfu"] == pytest.approx(6.0 / 6.0)


def test_gpu_peaks_match_the_datasheets_and_the_precision() -> None:
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0  # before the "H100" entry
    assert gpu_peak_tflops("NVIDIA H200", "fp32") == 494.7  # fp32 matmuls run as TF32
    assert gpu_peak_tflops("NVIDIA A100-SXM4-40GB") == 312.0
    assert gpu_peak_tflops("Some Future GPU") is None


def test_cpu_peak_is_measured_unless_given() -> None:
    value, source = peak_tflops(torch.device("cpu"), "fp32")
    assert 0 < value < 100 and "measured" in source
    assert peak_tflops(torch.device("cpu"), "fp32", override=2.5) == (2.5, "TrainConfig.peak_tflops")


def test_metrics_log_writes_json_lines_and_tensorboard_events(tmp_path) -> None:
    log = MetricsLog(str(tmp_path), Worker(0, 2, torch.device("cpu")), log_every=10, total_steps=3, run="tok")
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step, "mfu": 0.25, "bad": float("nan")})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["loss"] == 0.5 and rows[0]["run"] == "tok"
    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["tok/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert scalars["tok/mfu"] == [(1, 0.25), (2, 0.25), (3, 0.25)]
    assert "tok/bad" not in scalars  # non-finite values stay in the JSON lines only


def test_metrics_log_is_silent_on_other_ranks(tmp_path) -> None:
    log = MetricsLog(str(tmp_path), Worker(1, 2, torch.device("cpu")), log_every=1, total_steps=1, run="tok")
    log.write(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_meta_flops_equal_the_analytic_count_and_a_real_forward() -> None:
    cfg = maskgit_debug(text_dim=16)

    def forward(model: MaskGIT) -> torch.Tensor:
        tokens = torch.zeros(2, cfg.seq_len, dtype=torch.long)
        return model(tokens, torch.zeros(2, 7, 16), torch.ones(2, 7, dtype=torch.bool))

    meta = meta_forward_flops(lambda: MaskGIT(cfg), forward)
    assert meta == maskgit_forward_flops(cfg, text_len=7, batch=2)
    assert meta == counted_flops(lambda: forward(MaskGIT(cfg)))  # the same count on real CPU tensors


@pytest.mark.parametrize("family", ["cvivit", "magvit_vq"])
def test_tokenizer_flops_on_meta_match_a_real_forward(family: str) -> None:
    if family == "cvivit":
        cfg, frames = cvivit_debug(), 5
        build = lambda: CViViT(cfg)  # noqa: E731
    else:
        cfg, frames = magvit_vq_debug(), 8
        build = lambda: MagvitVQ(cfg)  # noqa: E731
    shape = (3, frames, cfg.image_size, cfg.image_size)
    model = build()
    video = torch.zeros(1, *shape)
    real = counted_flops(lambda: model.decode_embeddings(model.encode_latents(video)))
    assert tokenizer_forward_flops(build, shape) == real > 0


def test_discriminator_flops_scale_with_the_batch() -> None:
    cfg = DiscriminatorConfig(image_size=32, base_channels=8, max_channels=16, dims=3)
    one = module_forward_flops(lambda: StyleGANDiscriminator(cfg), (1, 3, 4, 32, 32))
    assert one > 0 and module_forward_flops(lambda: StyleGANDiscriminator(cfg), (2, 3, 4, 32, 32)) == 2 * one


def test_run_storage_defaults_under_the_output_and_resolves_local_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_storage(None, tmp_path / "out") == (str(tmp_path / "out" / "ray"), None)
    assert run_storage("ckpts", tmp_path / "out") == (str(tmp_path / "ckpts"), None)
    assert run_storage(f"file://{tmp_path}/x", tmp_path / "out") == (str(tmp_path / "x"), None)


def test_counting_and_measuring_leave_the_global_rng_alone() -> None:
    """The trainers count FLOPs and probe the peak after restoring a checkpoint's RNG states: an exact
    resume needs both to draw nothing from the global generators."""
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    meta_forward_flops(lambda: MaskGIT(maskgit_debug()), lambda m: m.positions(80).sum())
    tokenizer_forward_flops(lambda: CViViT(cvivit_debug()), (3, 5, 32, 32))
    peak_tflops(torch.device("cpu"), "fp32")
    assert torch.equal(torch.rand(3), expected)
