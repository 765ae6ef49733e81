"""The papers' video and image metrics as pure functions: Fréchet distance (FVD, FID), Inception Score, PSNR,
SSIM, and the FVD input protocol. Feature networks live in their own modules (`modeling.i3d`, and the
Inception / LPIPS / CLIP modules); this file is the maths on their outputs, in float64 where it matters.

Shapes: features (N, D); class probabilities (N, C); images (B, C, H, W); videos as frames (B, T, H, W, 3)
uint8, as elsewhere in the code (`modeling.pixels`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------- Fréchet distance


class RunningStats:
    """Mean and covariance of features streamed in batches, so a large set never sits in memory at once.

    Batches are merged with Chan et al.'s pairwise update (mean and centred second moment M2), in float64:
    unlike sum(x x^T) - n mu mu^T, it does not cancel catastrophically when features have large means.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64)  # sum of (x - mean)(x - mean)^T

    def update(self, features: torch.Tensor | np.ndarray) -> RunningStats:
        """Add a batch of features (N, D); returns self."""
        x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
        x = x.detach().to("cpu", torch.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return self
        batch_mean = x.mean(0)
        centred = x - batch_mean
        batch_m2 = centred.T @ centred
        total = self.count + n
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total
        return self

    def covariance(self) -> torch.Tensor:
        """(D, D) unbiased covariance (divides by N - 1, as numpy.cov and pytorch-fid)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        return self.m2 / (self.count - 1)


def _rank_floor(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with those indistinguishable from 0 set to 0: below
    D x eps x the largest (numpy.linalg.matrix_rank's tolerance). A rank-deficient covariance (fewer samples
    than dimensions) has rounding-level eigenvalues of either sign there, whose square roots (~1e-8 each)
    would otherwise add up to a visible bias."""
    tol = values.abs().max() * values.shape[0] * torch.finfo(values.dtype).eps
    return torch.where(values > tol, values, torch.zeros_like(values))


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite (D, D) matrix by eigendecomposition, eigenvalues at
    rounding level (or a rounding error below zero) taken as 0 (`_rank_floor`)."""
    sym = (matrix + matrix.T) / 2
    values, vectors = torch.linalg.eigh(sym)
    return (vectors * _rank_floor(values).sqrt()) @ vectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), means (D,), covariances (D, D):
        ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    tr((S1 S2)^{1/2}) is computed as tr((R S2 R)^{1/2}) with R = S1^{1/2}: R S2 R is similar to S1 S2 and
    symmetric PSD, so its eigenvalues are real and >= 0 (clamped against rounding). scipy's sqrtm of S1 S2
    (pytorch-fid) is unstable when S1 S2 is near-singular, e.g. fewer samples than feature dimensions, where it
    returns complex parts or needs an eps offset; this form needs neither.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"means {tuple(mu1.shape)}, {tuple(mu2.shape)} and covariances {tuple(s1.shape)}, "
            f"{tuple(s2.shape)} do not describe two Gaussians of the same dimension"
        )
    root1 = psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    trace_sqrt = _rank_floor(torch.linalg.eigvalsh((middle + middle.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt)


def frechet_distance_of(a: RunningStats, b: RunningStats) -> float:
    """Fréchet distance between the Gaussians fitted to two streamed feature sets (FVD, FID)."""
    if a.dim != b.dim:
        raise ValueError(f"feature sets of different dimensions: {a.dim} and {b.dim}")
    return frechet_distance(a.mean, a.covariance(), b.mean, b.covariance())


# ---------------------------------------------------------------------------------------------- FVD protocol

FVD_FRAMES = 16  # Unterthiner et al. 2018: I3D on 16-frame clips
FVD_SIZE = 224  # frames resized to 224 x 224 (bilinear), then scaled to [-1, 1]


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size), TensorFlow 1's `tf.image.resize_bilinear` (align_corners=False,
    no half-pixel centres: source = destination * in / out, no antialiasing), the resize of the original FVD
    code. torch's bilinear samples at half-pixel centres, which shifts the image by up to half a source pixel.
    """

    def taps(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        low = src.floor().long().clamp(max=n_in - 1)
        high = (low + 1).clamp(max=n_in - 1)
        return low, high, (src - low).to(images.dtype)

    h_low, h_high, h_frac = taps(images.shape[-2])
    w_low, w_high, w_frac = taps(images.shape[-1])
    rows = images[..., h_low, :] + (images[..., h_high, :] - images[..., h_low, :]) * h_frac[:, None]
    return rows[..., w_low] + (rows[..., w_high] - rows[..., w_low]) * w_frac


def fvd_preprocess(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos as the original FVD feeds I3D: (B, T, H, W, 3) uint8 -> (B, 3, 16, 224, 224) float32 in [-1, 1].

    The first 16 frames of each clip are kept; every frame is resized to 224 x 224 with TF1 bilinear
    (`resize_bilinear_tf1`) and scaled by 2 x / 255 - 1, in that order, as `frechet_video_distance.preprocess`.
    """
    x = torch.as_tensor(np.ascontiguousarray(frames))
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected videos (B, T, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames (0..255), got {x.dtype}")
    if x.shape[1] < FVD_FRAMES:
        raise ValueError(
            f"FVD takes clips of {FVD_FRAMES} frames (Unterthiner et al.), these have {x.shape[1]}: "
            f"evaluate clips of at least {FVD_FRAMES} frames"
        )
    b = x.shape[0]
    clip = x[:, :FVD_FRAMES].permute(0, 1, 4, 2, 3).flatten(0, 1).float()  # (B*16, 3, H, W)
    resized = resize_bilinear_tf1(clip, FVD_SIZE)
    scaled = 2.0 * resized / 255.0 - 1.0
    return scaled.unflatten(0, (b, FVD_FRAMES)).transpose(1, 2).contiguous()  # (B, 3, 16, 224, 224)


# -------------------------------------------------------------------------------------------- Inception Score


def inception_score(probs: torch.Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts of (N, C) class probabilities (Salimans et al.
    2016, 10 splits); returns (mean, std) over the splits, std as numpy's (population)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] < splits:
        raise ValueError(f"expected (N, C) probabilities with N >= splits ({splits}), got {tuple(p.shape)}")
    if not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=torch.float64), atol=1e-3):
        raise ValueError("each row must be a probability distribution (softmax of the classifier's logits)")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(0, keepdim=True)
        # 0 * log 0 = 0: xlogy keeps confident (one-hot) rows finite
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(math.exp(float(kl.mean())))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


# -------------------------------------------------------------------------------------------- PSNR and SSIM


def psnr_db(a: torch.Tensor, b: torch.Tensor, data_range: float, min_mse: float = 1e-10) -> torch.Tensor:
    """PSNR in dB of each item: (B, ...) -> (B,), 10 log10(range^2 / MSE) with MSE over everything but B.
    The MSE is floored at min_mse x range^2, so identical items score 100 dB instead of infinity."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR of tensors of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=min_mse * data_range**2))


SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size,) float64 Gaussian weights summing to 1; SSIM's 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """SSIM of each image (Wang et al. 2004): (B, C, H, W) pairs -> (B,) float64.

    The 11 x 11 Gaussian window (sigma 1.5) slides over the valid region only (as the authors' `ssim.m` with
    filter2 'valid'), local statistics are the window-weighted moments (no N/(N-1) correction), K1 = 0.01,
    K2 = 0.03, and the map is averaged over positions and channels. Unlike `ssim.m`, images are not
    downsampled first (that step only applies from 512 px on); H and W must be at least 11.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"SSIM needs two (B, C, H, W) batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window needs images of at least that size, got {tuple(a.shape[-2:])}"
        )
    x, y = a.double(), b.double()
    channels = x.shape[1]
    g = gaussian_window()
    kernel = torch.outer(g, g).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def video_pair_metrics(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR (over each whole clip) and SSIM (per frame, averaged over frames) of two sets of videos
    (B, T, H, W, 3) uint8 -> {"psnr_db": (B,), "ssim": (B,)} float64."""
    if a.shape != b.shape or a.ndim != 5:
        raise ValueError(f"expected two (B, T, H, W, 3) video sets of one shape, got {a.shape} and {b.shape}")
    x, y = torch.as_tensor(np.ascontiguousarray(a)), torch.as_tensor(np.ascontiguousarray(b))
    frames_x = x.flatten(0, 1).permute(0, 3, 1, 2)  # (B*T, 3, H, W)
    frames_y = y.flatten(0, 1).permute(0, 3, 1, 2)
    per_frame = ssim(frames_x, frames_y, 255.0).view(a.shape[0], a.shape[1])
    return {"psnr_db": psnr_db(x, y, 255.0).numpy(), "ssim": per_frame.mean(1).numpy()}
