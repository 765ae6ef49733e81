"""Our Fréchet distance (`modeling.metrics.frechet_distance`) against pytorch-fid's, on FID-sized covariances.

    python -m benchmarks.frechet_distance [--dim 2048 --samples 500 --runs 3] [--out benchmarks/results/frechet_distance.json]

Two sets of `samples` Gaussian feature vectors of `dim` dimensions (fewer samples than dimensions, as in a
small evaluation: both covariances are singular). The exact distance comes from the Gram identity
tr((S1 S2)^{1/2}) = nuclear norm of X1c X2c^T / (N - 1), for centred X1c, X2c. pytorch-fid's
`calculate_frechet_distance` (scipy `sqrtm(S1 S2)`, its eps offset and imaginary-part check) is written out
here (the package is not a dependency). Runs alternate ours / theirs; medians; the machine is recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from benchmarks.machine import describe_machine, measured_on
from modeling.metrics import frechet_distance

DEFAULT_OUT = Path(__file__).parent / "results" / "frechet_distance.json"


def pytorch_fid_distance(mu1, s1, mu2, s2, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance (NaN where it would raise on an imaginary component)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            return float("nan")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def measure(dim: int, samples: int, runs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=(samples, dim))
    x2 = rng.normal(size=(samples, dim)) * 1.1 + 0.05
    (m1, s1), (m2, s2) = ((x.mean(0), np.cov(x, rowvar=False)) for x in (x1, x2))
    nuclear = np.linalg.svd((x1 - m1) @ (x2 - m2).T / (samples - 1), compute_uv=False).sum()
    exact = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuclear)
    ours = {name: torch.tensor(v) for name, v in (("m1", m1), ("s1", s1), ("m2", m2), ("s2", s2))}
    methods = {
        "ours": lambda a, b, c, d: frechet_distance(*(ours[k] for k in (a, b, c, d))),
        "pytorch_fid": lambda a, b, c, d: pytorch_fid_distance(*({"m1": m1, "s1": s1, "m2": m2, "s2": s2}[k] for k in (a, b, c, d))),
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    values: dict[str, float] = {}
    for _ in range(runs):  # interleaved, so a busy machine slows both alike
        for name, fn in methods.items():
            start = time.perf_counter()
            values[name] = fn("m1", "s1", "m2", "s2")
            seconds[name].append(round(time.perf_counter() - start, 3))
    result = {"dim": dim, "samples": samples, "runs": runs, "exact": exact, "methods": {}}
    for name, fn in methods.items():
        result["methods"][name] = {
            "value": values[name],
            "relative_error": abs(values[name] - exact) / exact,
            "distance_to_itself": fn("m1", "s1", "m1", "s1"),  # exactly 0 in exact arithmetic
            "seconds": seconds[name],
            "seconds_median": float(np.median(seconds[name])),
        }
    result["speedup_median"] = (
        result["methods"]["pytorch_fid"]["seconds_median"] / result["methods"]["ours"]["seconds_median"]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frechet_distance", description=__doc__)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 dimensions, 40 samples, 1 run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    dim, samples, runs = (64, 40, 1) if args.quick else (args.dim, args.samples, args.runs)
    report = {"machine": describe_machine(), "date": measured_on(), **measure(dim, samples, runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, m in report["methods"].items():
        print(
            f"{name:>12}: relative error {m['relative_error']:.1e}, distance to itself "
            f"{m['distance_to_itself']:.1e}, {m['seconds_median']:.2f} s (median of {runs})"
        )
    print(f"pytorch-fid / ours time: {report['speedup_median']:.1f}x; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
