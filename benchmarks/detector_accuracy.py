"""Accuracy of the adherence detector on ground-truth renders after a real H.264 round trip.

    python -m benchmarks.detector_accuracy [--seeds 4] [--out benchmarks/results/detector_accuracy.json]

Every colour x shape x motion triple (6 x 3 x 4 = 72, purple included) is rendered once per seed with
random size, position and speed, encoded with `encode_mp4` and decoded back; the detector reads the
full 24-frame video and a 9-frame clip (what the model generates) at a random offset. A "degraded"
9-frame clip stands in for blurry, noisy model output: 3x3 box blur, Gaussian noise (sigma 8) and
H.264 at crf 35 before decoding. Stills go through a JPEG round trip. Prints a table and writes the figures, the errors, the fit margins per
true shape (how far each class sits from the nearest other shape) and the machine to JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine, measured_on
from pipelines.detector import detect
from pipelines.media import decode_image, decode_video, encode_jpeg, encode_mp4
from pipelines.synth import MOTIONS, PALETTE, SHAPES, render_image, sample_image_params, sample_video

ATTRIBUTES = ("colour", "shape", "motion")
DEFAULT_OUT = Path(__file__).parent / "results" / "detector_accuracy.json"


def machine() -> dict[str, object]:
    return describe_machine(("numpy", "av"))


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the same, 3x3 box-blurred with Gaussian noise (sigma 8) added."""
    h, w = frames.shape[1:3]
    padded = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9
    return np.clip(blurred + rng.normal(0.0, 8.0, frames.shape), 0, 255).astype(np.uint8)


def run(seeds: int, clip_frames: int = 9, num_frames: int = 24, size: int = 64, fps: int = 8) -> dict:
    triples = list(itertools.product(PALETTE, SHAPES, MOTIONS))
    results: dict[str, list[dict]] = {"full": [], "clip": [], "degraded": [], "still": []}
    start, cpu_start = time.perf_counter(), time.process_time()
    for seed, (k, truth) in itertools.product(range(seeds), enumerate(triples)):
        rng = np.random.default_rng([seed, k, 7])
        clean = sample_video(rng, *truth, num_frames=num_frames, size=size)
        frames = decode_video(encode_mp4(clean, fps)).frames
        offset = int(rng.integers(0, num_frames - clip_frames + 1))
        window = slice(offset, offset + clip_frames)
        degraded = decode_video(encode_mp4(degrade(clean[window], rng), fps, crf=35)).frames
        for name, clip in (("full", frames), ("clip", frames[window]), ("degraded", degraded)):
            d = detect(clip)
            results[name].append({"truth": truth, "got": (d.colour, d.shape, d.motion), "fit": d.shape_fit})
    video_seconds, video_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    for seed, (k, (colour, shape)) in itertools.product(
        range(seeds), enumerate(itertools.product(PALETTE, SHAPES))
    ):
        rng = np.random.default_rng([seed, k, 11])
        center, radius = sample_image_params(rng, size=size)
        still = decode_image(
            encode_jpeg(render_image(colour, shape, size=size, center_xy=center, radius=radius))
        )
        d = detect(still)
        results["still"].append({"truth": (colour, shape, None), "got": (d.colour, d.shape, d.motion)})

    report: dict[str, object] = {
        "date": measured_on(),
        "machine": machine(),
        "seeds": seeds,
        "num_videos": len(results["full"]),
    }
    # Per triple: render, encode/decode twice, three detections. Wall time depends on machine load.
    report["seconds_per_video"] = video_seconds / max(len(results["full"]), 1)
    report["cpu_seconds_per_video"] = video_cpu / max(len(results["full"]), 1)
    for name, rows in results.items():
        acc = {
            a: float(np.mean([r["truth"][i] == r["got"][i] for r in rows])) for i, a in enumerate(ATTRIBUTES)
        }
        acc["all"] = float(np.mean([tuple(r["truth"]) == tuple(r["got"]) for r in rows]))
        report[name] = {
            "n": len(rows),
            "accuracy": acc,
            "errors": [
                {"truth": r["truth"], "got": r["got"]} for r in rows if tuple(r["truth"]) != tuple(r["got"])
            ],
        }
    # How far each true shape's fit is from the nearest other shape's (positive: read right, with room).
    report["fit_margins"] = {
        shape: [float(np.min(v)), float(np.max(v))]
        for shape in SHAPES
        if (
            v := [
                min(f for s, f in r["fit"].items() if s != shape) - r["fit"][shape]
                for r in results["full"] + results["clip"]
                if r["truth"][1] == shape
            ]
        )  # fmt: skip
    }
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="renders per triple (72 triples each)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run(args.seeds)
    print(
        f"{report['num_videos']} ground-truth videos, {report['seconds_per_video'] * 1000:.0f} ms wall "
        f"({report['cpu_seconds_per_video'] * 1000:.0f} ms CPU) each"
    )
    print(f"{'':8s}" + "".join(f"{a:>9s}" for a in (*ATTRIBUTES, "all")) + f"{'n':>6s}")
    for name in ("full", "clip", "degraded", "still"):
        acc = report[name]["accuracy"]
        print(
            f"{name:8s}" + "".join(f"{acc[a]:9.4f}" for a in (*ATTRIBUTES, "all")) + f"{report[name]['n']:6d}"
        )
    for shape, (lo, hi) in report["fit_margins"].items():
        print(f"{shape:8s} fit margin to the nearest other shape [{lo:.3f}, {hi:.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
