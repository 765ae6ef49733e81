"""Ray Train + DeepSpeed training jobs, end to end on a real local Ray cluster with 2 CPU workers.

Tiny data built here (rendered clips, random token caches), debug-sized models, a few steps each:
the tokenizer under ZeRO-2 with the GAN engine and dead-code restarts, the transformer under ZeRO-3 and
ZeRO-2, and a resumed transformer run checked against an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_loaders import make_clip_shards, make_token_cache, render_clip

from jobs.training.common import TrainConfig, deepspeed_config, worker_range
from modeling.checkpoint import load_checkpoint
from modeling.generation import VideoGenerator
from tests.gcs_emulator import gcs_emulator  # noqa: F401  (a fixture, requested by name)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NUM_FRAMES, SIZE = 5, 32  # 1 + 2 * t_p frames -> a (3, 4, 4) token grid with 8x8 patches
CODEBOOK, TEXT_DIM = 32, 16

TOKENIZER = {
    "image_size": SIZE,
    "patch_size": 8,
    "temporal_patch_size": 2,
    "dim": 32,
    "spatial_depth": 1,
    "temporal_depth": 1,
    "heads": 2,
    "mlp_dim": 64,
    "code_dim": 8,
    "codebook_size": CODEBOOK,
    "max_latent_frames": 8,
}
TRANSFORMER = {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64}
COMMON = {"steps": 4, "warmup_steps": 1, "peak_lr": 1e-3, "num_workers": 2, "log_every": 1, "max_failures": 0}


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_deepspeed_config_sizes_and_optimizer() -> None:
    cfg = TrainConfig(batch_size=3, grad_accum=2, zero_stage=3, precision="bf16", grad_clip=10.0)
    ds = deepspeed_config(cfg, world=2, backwards_per_step=2)
    assert ds["train_batch_size"] == 3 * 2 * 2 * 2
    assert ds["gradient_accumulation_steps"] == 4 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["gradient_clipping"] == 10.0
    params = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "AdamW" and params["torch_adam"] and params["betas"] == [0.9, 0.99]
    assert deepspeed_config(cfg, 2, zero_stage=1)["zero_optimization"]["stage"] == 1
    with pytest.raises(ValueError, match="fp16"):
        TrainConfig(precision="fp16")
    assert ds["bf16"]["check_grad_overflow"]  # a non-finite bf16 step is skipped, not applied


def test_min_workers_makes_an_elastic_worker_range() -> None:
    assert worker_range(TrainConfig(num_workers=4)) == 4
    assert worker_range(TrainConfig(num_workers=4, min_workers=1)) == (1, 4)  # Ray Train V2 ScalingConfig
    for bad in (0, 5):
        with pytest.raises(ValueError, match="min_workers must be in 1..num_workers=4"):
            TrainConfig(num_workers=4, min_workers=bad)


# --------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("clips")
    return make_clip_shards(root / "clips", videos=10, images=6, num_frames=NUM_FRAMES, size=SIZE)


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory, ray_local, clip_shards):
    from jobs.train_tokenizer import run

    root = tmp_path_factory.mktemp("tokenizer")
    clips = clip_shards
    config = {
        "tokenizer": TOKENIZER,
        "tokenizer_train": {
            **COMMON,
            "batch_size": 2,
            "image_batch_size": 2,
            "zero_stage": 2,
            "eval_clips": 2,
            "restart_every": 2,
            "restart_threshold": 0.5,
            "checkpoint_every": 2,
        },
        "tokenizer_loss": {"adv_weight": 0.1, "disc_start": 2, "lecam_weight": 0.001},
        "discriminator": {"base_channels": 8, "max_channels": 16},
    }
    evaluation = run(config, clips, str(root / "out"))
    return root / "out", evaluation


def test_tokenizer_trains_and_exports(tokenizer_run) -> None:
    out, evaluation = tokenizer_run
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["used_codes"] >= 1 and r["perplexity"] >= 1 for r in rows)
    assert "img_l2" in rows[0]  # the image batch trained too
    assert "adv_g" not in rows[1] and "adv_g" in rows[2] and "d_loss" in rows[3]  # GAN from disc_start=2
    assert "lecam" not in rows[1] and all(math.isfinite(r["lecam"]) for r in rows[2:])  # the regulariser ran
    assert "restarted_codes" in rows[1]
    assert evaluation["clips"] == 2 and math.isfinite(evaluation["psnr_db"])
    fidelity = evaluation["fidelity"]  # the detector on reconstructions of 72 fresh clips, with strips
    assert fidelity["clips"] == 72 and all(
        0.0 <= fidelity[k] <= 1.0 for k in ("clean", "colour", "shape", "motion")
    )
    assert fidelity["examples"] and all((out / "fidelity" / e["file"]).exists() for e in fidelity["examples"])
    assert json.loads((out / "eval.json").read_text()) == evaluation
    assert (out / "run_config.yaml").exists()  # kept across the export
    assert len(list((out / "ray" / "tokenizer").glob("checkpoint-*"))) == 2  # steps 2 and 4


def test_tokenizer_export_loads_and_encodes(tokenizer_run) -> None:
    out, _ = tokenizer_run
    loaded = load_checkpoint(out)
    assert loaded.kind == "cvivit" and loaded.extra["num_frames"] == NUM_FRAMES and loaded.extra["fps"] == 8.0
    assert loaded.digest == (out / "digest.txt").read_text().strip()
    video = torch.from_numpy(render_clip(3, NUM_FRAMES, SIZE)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    codes = loaded.model.encode(video)
    assert codes.shape == (1, 3, 4, 4) and int(codes.max()) < CODEBOOK
    assert loaded.model.decode(codes).shape == video.shape


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_tokenizer_zero_stage_checkpoints_and_resumes(
    request, tmp_path, ray_local, clip_shards, zero_stage
) -> None:
    """ZeRO-1 with its checkpoints in gs:// (the storage emulator), ZeRO-3 (built under zero.Init) with
    activation checkpointing: each trains, checkpoints, and a rerun with more steps resumes from the last
    checkpoint rather than from step 0. Every step reports throughput and MFU, also as TensorBoard events."""
    from jobs.train_tokenizer import run
    from jobs.training.metrics import read_tensorboard_scalars

    storage = None
    if zero_stage == 1:
        emulator = request.getfixturevalue("gcs_emulator")
        emulator.make_bucket("phenaki-runs")
        storage = "gs://phenaki-runs/runs"
    train = {
        **COMMON,
        "batch_size": 2,
        "image_batch_size": 2,
        "zero_stage": zero_stage,
        "eval_clips": 2,
        "checkpoint_every": 1,
        "storage_path": storage,
        "activation_checkpointing": zero_stage == 3,
        "fidelity_repeats": 0,
    }  # fmt: skip  (object fidelity is tokenizer_run's check)
    config = {
        "tokenizer": TOKENIZER,
        "tokenizer_train": {**train, "steps": 2},
        "tokenizer_loss": {"adv_weight": 0.1, "disc_start": 0, "lecam_weight": 0.001},
        "discriminator": {"base_channels": 8, "max_channels": 16},
    }
    out = tmp_path / "out"
    run(config, clip_shards, str(out))
    evaluation = run({**config, "tokenizer_train": {**train, "steps": 3}}, clip_shards, str(out))
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]  # the rerun went on from step 2's checkpoint
    assert all(r["mfu"] > 0 and r["tokens_per_s"] > 0 and r["achieved_tflops"] > 0 for r in rows)
    assert all(math.isfinite(r["loss"]) and "d_loss" in r and "lecam" in r for r in rows)
    scalars = read_tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["tokenizer/loss"]] == [1, 2, 3]
    assert [s for s, _ in scalars["tokenizer/mfu"]] == [1, 2, 3]
    if storage:
        fs = emulator.filesystem()
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("phenaki-runs/runs/tokenizer", refresh=True))
        assert [n for n in names if n.startswith("checkpoint-")] == [
            "checkpoint-00000002",
            "checkpoint-00000003",
        ]
        assert not (out / "ray").exists()
    else:
        assert sorted(p.name for p in (out / "ray" / "tokenizer").glob("checkpoint-*")) == [
            "checkpoint-00000002",
            "checkpoint-00000003",
        ]
    assert evaluation["clips"] == 2 and math.isfinite(evaluation["psnr_db"])
    loaded = load_checkpoint(out)
    assert loaded.extra["step"] == 3
    video = torch.from_numpy(render_clip(1, NUM_FRAMES, SIZE)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    assert loaded.model.encode(video).shape == (1, 3, 4, 4)


def test_lecam_anchors_are_checkpointed_and_restored() -> None:
    """The LeCam EMA anchors travel in the checkpoint's client state, one per batch of a step; off unless
    both the GAN and the regulariser are on (the paper presets set lecam_weight, which used to be ignored)."""
    from jobs.training.tokenizer import _client_state, _lecam_anchors, job_from_config

    config = {"tokenizer": TOKENIZER, "tokenizer_loss": {"adv_weight": 0.1, "lecam_weight": 0.001}}
    job = job_from_config(config, "unused")
    anchors = _lecam_anchors(job, 2, {"step": 0})
    anchors[0].update(torch.tensor([2.0]), torch.tensor([-1.0]))
    state = _client_state(7, anchors)
    assert state["step"] == 7 and state["lecam"][1] == [0.0, 0.0] and state["lecam"][0][0] > 0
    restored = _lecam_anchors(job, 2, state)
    assert [a.state() for a in restored] == state["lecam"]
    penalty = restored[0].penalty(torch.tensor([3.0]), torch.tensor([-2.0]))
    assert float(penalty) > 0
    no_gan = job_from_config(
        {**config, "tokenizer_loss": {"adv_weight": 0.0, "lecam_weight": 0.001}}, "unused"
    )
    assert _lecam_anchors(no_gan, 2, {}) is None and _client_state(3, None) == {"step": 3}


# --------------------------------------------------------------------------------------------- transformer
@pytest.fixture(scope="module")
def token_cache(tmp_path_factory, tokenizer_run) -> str:
    out, _ = tokenizer_run
    digest = (out / "digest.txt").read_text().strip()
    return make_token_cache(
        tmp_path_factory.mktemp("tokens"),
        videos=12,
        images=6,
        grid=(3, 4, 4),
        codebook_size=CODEBOOK,
        text_dim=TEXT_DIM,
        digest=digest,
    )


def transformer_config(**train) -> dict:
    return {
        "transformer": TRANSFORMER,
        "transformer_train": {**COMMON, "batch_size": 4, **train},
        "sampling": {"steps": 2, "context_frames": 1},  # stored in the checkpoint as generation defaults
    }


def test_transformer_zero3_trains_and_exports_self_contained(tmp_path, tokenizer_run, token_cache) -> None:
    from jobs.train_transformer import run

    tokenizer_dir, _ = tokenizer_run
    last = run(transformer_config(zero_stage=3), token_cache, str(tokenizer_dir), str(tmp_path / "tf"))
    assert last["step"] == 4 and math.isfinite(last["loss"])
    rows = read_metrics(tmp_path / "tf")
    assert all(math.isfinite(r["loss"]) and 0 <= r["mask_accuracy"] <= 1 for r in rows)

    loaded = load_checkpoint(tmp_path / "tf")
    cfg = loaded.config
    assert loaded.kind == "maskgit"
    assert (cfg.codebook_size, cfg.seq_len, cfg.tokens_per_frame, cfg.text_dim) == (
        CODEBOOK,
        48,
        16,
        TEXT_DIM,
    )
    tokenizer_digest = (tokenizer_dir / "digest.txt").read_text().strip()
    assert loaded.extra["tokenizer_digest"] == tokenizer_digest and loaded.extra["token_grid"] == [3, 4, 4]
    assert loaded.extra["text_encoder"] == "test"
    bundled = load_checkpoint(tmp_path / "tf" / "tokenizer")
    assert bundled.kind == "cvivit" and bundled.digest == tokenizer_digest
    assert not (tmp_path / "tf" / "tokenizer" / "ray").exists()  # serving files only
    generator = VideoGenerator.from_checkpoint(tmp_path / "tf")  # what `phenaki generate` / serve load
    assert (generator.num_frames, generator.fps, generator.text_encoder_name) == (NUM_FRAMES, 8.0, "test")
    assert generator.defaults.steps == 2
    tokens = torch.randint(0, CODEBOOK, (2, 48))
    logits = loaded.model(tokens, torch.randn(2, 5, TEXT_DIM), torch.ones(2, 5, dtype=torch.bool))
    assert logits.shape == (2, 48, CODEBOOK) and torch.isfinite(logits).all()


def test_transformer_refuses_a_cache_from_another_tokenizer(tmp_path, tokenizer_run) -> None:
    from jobs.training.families import transformer_job as job_from_config

    cache = make_token_cache(
        tmp_path / "tokens",
        videos=4,
        images=2,
        grid=(3, 4, 4),
        codebook_size=CODEBOOK,
        text_dim=TEXT_DIM,
        digest="not-this-tokenizer",
    )
    with pytest.raises(ValueError, match="not-this-tokenizer.*phenaki tokenize"):
        job_from_config(transformer_config(), cache, str(tokenizer_run[0]))
