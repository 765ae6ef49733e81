"""The metrics' maths (`modeling.metrics`) against closed forms and independent computations; no weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from modeling.losses import psnr
from modeling.metrics import (
    RunningStats,
    frechet_distance,
    frechet_distance_of,
    fvd_preprocess,
    gaussian_window,
    inception_score,
    psnr_db,
    resize_bilinear_tf1,
    ssim,
    video_pair_metrics,
)


def _stats(x: np.ndarray, batch: int = 7) -> RunningStats:
    stats = RunningStats(x.shape[1])
    for i in range(0, len(x), batch):
        stats.update(x[i : i + batch])
    return stats


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_streamed_statistics_match_numpy_on_features_with_a_large_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(101, 5)) * [1, 2, 3, 4, 5] + 1e4  # a mean far above the spread
    stats = _stats(x)
    assert stats.count == 101
    np.testing.assert_allclose(stats.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(1).normal(size=(64, 16))
    assert abs(frechet_distance_of(_stats(x), _stats(x))) < 1e-9


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # 5 + 4 + 1 + 0
    got = frechet_distance(
        torch.tensor(mu1), torch.diag(torch.tensor(a)), torch.tensor(mu2), torch.diag(torch.tensor(b))
    )
    assert got == pytest.approx(expected, abs=1e-10) and expected == pytest.approx(10.0)


def test_frechet_distance_of_non_commuting_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = frechet_distance(*(torch.tensor(v) for v in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(reference, rel=1e-9)


def test_frechet_distance_is_stable_on_rank_deficient_covariances():
    """Fewer samples (N=20) than dimensions (D=64): both covariances are singular. The exact value follows
    from the Gram-matrix identity: tr((S1 S2)^{1/2}) is the nuclear norm of X1c^T X2c / (N - 1)."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    nuclear = np.linalg.svd(c1 @ c2.T / 19, compute_uv=False).sum()
    exact = ((x1.mean(0) - x2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear
    got = frechet_distance_of(_stats(x1), _stats(x2))
    assert math.isfinite(got) and got == pytest.approx(exact, rel=1e-6)
    itself = frechet_distance_of(_stats(x1), _stats(x1))
    assert math.isfinite(itself) and -1e-6 <= itself < 1e-6


def test_frechet_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        RunningStats(3).update(np.zeros((1, 3))).covariance()


def test_inception_score_of_a_uniform_classifier_is_one():
    mean, std = inception_score(torch.full((100, 7), 1 / 7))
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_a_confident_balanced_classifier_is_the_number_of_classes():
    classes = 8
    probs = torch.eye(classes).repeat(10, 1)  # each of the 10 splits holds every class once, one-hot
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(classes) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_refuses_rows_that_are_not_distributions():
    with pytest.raises(ValueError, match="probability distribution"):
        inception_score(torch.rand(20, 5))


def test_psnr_matches_its_definition_and_the_training_psnr():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 over data range 2 -> 10 log10(4 / 0.01)
    b[1] += 0.2
    expected = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)]
    np.testing.assert_allclose(psnr_db(a, b, 2.0).numpy(), expected, rtol=1e-6)  # 0.1 in float32
    assert float(psnr(a, b)) == pytest.approx(np.mean(expected), rel=1e-6)
    assert float(psnr_db(a, a, 255.0)[0]) == pytest.approx(100.0)  # identical: the floor, not infinity


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 3, 16, 16) * 255
    np.testing.assert_allclose(ssim(x, x, 255.0).numpy(), 1.0, rtol=1e-12)


def test_ssim_of_constant_images_has_the_luminance_closed_form():
    """Flat images have no variance, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1)."""
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    got = ssim(torch.full((1, 1, 12, 12), a), torch.full((1, 1, 12, 12), b), 255.0)
    assert float(got[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)


def _numpy_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Wang et al.'s ssim.m for one grey image, written out independently (scipy's 'valid' correlation)."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()

    def filt(im):
        return scipy.signal.correlate2d(im, w, mode="valid")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


def test_ssim_matches_an_independent_numpy_computation():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 255, size=(20, 17))
    y = np.clip(x + rng.normal(0, 30, size=x.shape), 0, 255)
    got = ssim(torch.tensor(x)[None, None], torch.tensor(y)[None, None], 255.0)
    assert float(got[0]) == pytest.approx(_numpy_ssim(x, y, 255.0), rel=1e-10)
    assert 0 < float(got[0]) < 1
    assert gaussian_window().sum().item() == pytest.approx(1.0)


def test_video_ssim_averages_frames_and_colour_channels():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(2, 3, 12, 12, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, size=a.shape), 0, 255).astype(np.uint8)
    out = video_pair_metrics(a, b)
    per_frame = [
        np.mean(
            [
                _numpy_ssim(a[i, t, :, :, c].astype(float), b[i, t, :, :, c].astype(float), 255.0)
                for c in range(3)
            ]
        )
        for i in range(2)
        for t in range(3)
    ]
    np.testing.assert_allclose(out["ssim"], np.reshape(per_frame, (2, 3)).mean(1), rtol=1e-10)
    assert out["psnr_db"].shape == (2,) and np.all(np.isfinite(out["psnr_db"]))
    with pytest.raises(ValueError, match="at least that size"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), 1.0)


def test_fvd_preprocess_gives_16_frames_at_224_in_minus_one_to_one():
    frames = np.zeros((2, 20, 32, 48, 3), np.uint8)
    frames[:, :, :, :, 0] = 255
    frames[:, 17:] = 7  # frames past the 16th are dropped
    out = fvd_preprocess(frames)
    assert out.shape == (2, 3, 16, 224, 224) and out.dtype == torch.float32
    assert torch.all(out[:, 0] == 1.0) and torch.all(out[:, 1:] == -1.0)
    with pytest.raises(ValueError, match="16 frames"):
        fvd_preprocess(np.zeros((1, 15, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fvd_preprocess(np.zeros((1, 16, 32, 32, 3), np.float32))


def test_tf1_bilinear_resize_samples_at_destination_times_scale():
    """TF1 (align_corners=False, no half-pixel centres): out[i] = lerp at source i * in / out, the last
    source pixel repeated past the edge."""
    row = torch.tensor([[[[0.0, 10.0, 20.0, 30.0]]]]).expand(1, 1, 4, 4)
    out = resize_bilinear_tf1(row, 8)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 5, 10, 15, 20, 25, 30, 30])
    down = resize_bilinear_tf1(row, 2)
    np.testing.assert_allclose(down[0, 0, 0].numpy(), [0, 20])  # sources 0 and 2: no averaging


def test_frechet_benchmark_quick_writes_both_methods(tmp_path):
    from benchmarks import frechet_distance as bench

    out = tmp_path / "f.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dim"] == 64 and report["samples"] == 40 and "machine" in report
    ours = report["methods"]["ours"]
    assert ours["relative_error"] < 1e-9 and abs(ours["distance_to_itself"]) < 1e-9
    assert math.isfinite(report["methods"]["pytorch_fid"]["value"])
