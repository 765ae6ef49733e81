"""The MAGVIT quality benchmark: its pure metric helpers, and --quick end to end (< 60 s on 2 cores, no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import magvit_quality
from benchmarks.magvit_metrics import agreement, clip_psnr, motion_class_ids, ratio, render_clips, summary
from modeling.commit import TASKS


def test_render_clips_is_seeded_and_disjoint():
    a, motions = render_clips(3, seed=1, num_frames=5, size=32)
    b, _ = render_clips(3, seed=1, num_frames=5, size=32)
    c, _ = render_clips(3, seed=2, num_frames=5, size=32)
    assert a.shape == (3, 5, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert motion_class_ids(motions).tolist() == [("left", "right", "up", "down").index(m) for m in motions]


def test_clip_psnr_regions():
    truth = torch.zeros(2, 3, 4, 8, 8)
    guess = truth.clone()
    guess[:, :, :, :, 4:] = 1.0  # right half off by 0.5 on the [0, 1] scale: MSE 0.25 there -> 6.02 dB
    left = torch.zeros(2, 1, 4, 8, 8, dtype=torch.bool)
    left[..., :4] = True
    assert np.allclose(clip_psnr(guess, truth, ~left), 10 * math.log10(4))
    assert np.allclose(clip_psnr(guess, truth), 10 * math.log10(8))  # half the pixels: MSE 0.125
    assert np.all(clip_psnr(guess, truth, left) >= 99)  # exact: capped at 100 dB by the 1e-10 floor
    empty = torch.zeros_like(left)
    empty[0] = True
    assert np.isnan(clip_psnr(guess, truth, empty)[1])


def test_agreement_summary_ratio():
    assert agreement(["left", None, "up"], ["left", None, "down"]) == pytest.approx(1 / 3)  # None disagrees
    with pytest.raises(ValueError):
        agreement([], [])
    assert summary([1.0, float("nan"), 3.0]) == {"mean": 2.0, "median": 2.0, "n": 2}
    assert summary([]) == {"mean": None, "median": None, "n": 0}
    assert ratio(3.0, 2.0) == 1.5 and ratio(None, 2.0) is None and ratio(1.0, 0.0) is None


def test_quick_needs_an_out_path():
    with pytest.raises(SystemExit):
        magvit_quality.main(["--quick"])  # quick numbers must never land in benchmarks/results/


def _finite(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x)


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "magvit_quality.json"
    # One thread: tiny models' many small ops under OpenMP slow down badly when the cores are shared.
    assert magvit_quality.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "magvit_quality" and report["quick"] is True and report["threads"] == 1
    assert report["machine"]["cpu_count"] >= 1
    toks = report["tokenizers"]
    assert set(toks) == {"magvit_vq", "cvivit_debug", "cvivit_demo"}
    assert toks["magvit_vq"]["tokens_per_clip"] == 64 and toks["magvit_vq"]["token_grid"] == [4, 4, 4]
    assert toks["cvivit_demo"]["tokens_per_clip"] == 144  # 17 frames: 1 + 8 tubelets, 4x4 each
    for t in toks.values():
        assert _finite(t["psnr_db"]["mean"]) and t["psnr_db"]["n"] == magvit_quality.QUICK.eval_clips
        assert 0 <= t["motion_agreement"] <= 1 and t["steps"] == magvit_quality.QUICK.tokenizer_steps
    assert _finite(report["tokenizer_psnr_ratio_magvit_over_cvivit_demo"])

    assert list(report["commit_per_task"]) == list(TASKS)
    for task, m in report["commit_per_task"].items():
        assert _finite(m["psnr_generated_db"]), task
        assert 0 <= m["motion_agreement"] <= 1, task
        if task == "cg":  # nothing given: no condition region, no condition tokens
            assert m["psnr_condition_db"] is None and m["condition_tokens_kept"] is None
        else:
            assert _finite(m["psnr_condition_db"]) and 0 <= m["condition_tokens_kept"] <= 1, task
    assert set(report["tokenizer_ceiling_per_task"]) == set(TASKS)

    compared = report["commit_vs_latent_masking"]
    assert list(compared["tasks"]) == list(TASKS)
    for task, row in compared["tasks"].items():
        for key in (
            "commit_psnr_generated_db",
            "latent_masking_psnr_generated_db",
            "ratio_commit_over_latent_masking",
        ):
            assert _finite(row[key]), (task, key)
        assert row["delta_db"] == pytest.approx(
            row["commit_psnr_generated_db"] - row["latent_masking_psnr_generated_db"], abs=1e-3
        )
    for means in compared["mean_psnr_generated_db"].values():
        assert _finite(means["commit"]) and _finite(means["latent_masking"])
    arms = report["arms"]
    assert set(arms) == {"commit", "latent_masking"}
    for arm in arms.values():
        assert len(arm["runs"]) == magvit_quality.QUICK.seeds
        assert all(_finite(r["train"]["final_loss"]) for r in arm["runs"])
        # the baseline never resamples its condition tokens; COMMIT may
        assert set(arm["per_task_median"]["psnr_generated_db"]) == set(TASKS)
    kept = arms["latent_masking"]["per_task_median"]["condition_tokens_kept"]
    assert all(v == 1.0 for t, v in kept.items() if t != "cg")
    assert report["seconds"]["total"] > 0
