"""Tokenizer encode / decode throughput (clips/s, tokens/s) and achieved FLOP/s against the matmul peak.

    python -m benchmarks.tokenizer_throughput --runs 3          # full run (a few minutes on 2 CPU cores)
    python -m benchmarks.tokenizer_throughput --quick --out /tmp/t.json   # smoke test, well under a minute

Models (random weights: the work per clip does not depend on the values; eval mode, `torch.inference_mode`,
fp32, the preset's clip shape, batch `--batch` or the model's default):

* "cvivit_demo": configs/demo.yaml's C-ViViT on 9-frame 32x32 clips (5x4x4 = 80 tokens);
* "cvivit_paper": configs/cvivit-paper.yaml's C-ViViT (the paper's) on 11-frame 128x128 clips (6x16x16 = 1536);
* "magvit_b": configs/magvit-b.yaml's 3D-VQ-B on 16-frame 128x128 clips (4x16x16 = 1024 tokens).
  --quick swaps it for configs/magvit-debug.yaml (the B model takes seconds per clip on a few cores).

Per model, encode (video -> token ids, `model.encode`) and decode (ids -> video, `model.decode`) are timed
interleaved (encode, decode, encode, ...) after one untimed warm-up of each, medians over --runs. FLOPs of one
encode and one decode are counted with `torch.utils.flop_counter` (convolutions and matmuls; the CPU attention
kernel through `benchmarks.flop_accounting`), so the JSON gives achieved GFLOP/s as a fraction of the fp32
matmul peak measured at the start and end of this same run (the higher of the two).

Writes benchmarks/results/tokenizer_throughput.json with the machine and the date. The figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.flop_accounting import count_flops
from benchmarks.machine import describe_machine, measured_on
from benchmarks.sampling_speed import matmul_peak, summary, timed
from jobs.config import load_config
from modeling.tokenizers import build_tokenizer

DEFAULT_OUT = Path(__file__).parent / "results" / "tokenizer_throughput.json"

# name -> (config preset, default batch); the clip shape is the preset's `prepare` section.
MODELS = {"cvivit_demo": ("demo", 8), "cvivit_paper": ("cvivit-paper", 2), "magvit_b": ("magvit-b", 1)}
QUICK_MODELS = {
    "cvivit_demo": ("demo", 2),
    "cvivit_paper": ("cvivit-paper", 1),
    "magvit_b": ("magvit-debug", 1),
}


def clip_shape(config: dict) -> tuple[int, int, int, int]:
    """(C, T, H, W) of one clip as `prepare` makes it for this preset."""
    channels = int(config["tokenizer"].get("channels", 3))
    size = int(config["prepare"]["size"])
    return channels, int(config["prepare"]["num_frames"]), size, size


def bench_tokenizer(preset: str, batch: int, runs: int) -> dict:
    """Encode and decode of a batch of random clips in [-1, 1]: seconds, clips/s, tokens/s, FLOPs."""
    config = load_config(preset)
    model = build_tokenizer(config["tokenizer"]).eval()
    shape = clip_shape(config)
    video = torch.rand(batch, *shape) * 2 - 1  # (B, C, T, H, W)
    with torch.inference_mode():
        ids = model.encode(video)  # (B, t, h, w); also the warm-up of encode
        model.decode(ids)
        encode_flops, _ = count_flops(lambda: model.encode(video))
        decode_flops, _ = count_flops(lambda: model.decode(ids))
        encode_s, decode_s = [], []
        for _ in range(runs):  # interleaved, so a busy moment on a shared machine hits both alike
            encode_s += timed(lambda: model.encode(video), 1)
            decode_s += timed(lambda: model.decode(ids), 1)
    tokens_per_clip = int(ids[0].numel())

    def rates(seconds: list[float], flops: int) -> dict:
        s = summary(seconds)
        median = s["seconds_median"]
        return {
            **s,
            "clips_per_s": round(batch / median, 3),
            "tokens_per_s": round(batch * tokens_per_clip / median, 1),
            "flops": flops,
            "achieved_gflops": round(flops / median / 1e9, 3),
        }

    return {
        "preset": preset,
        "family": config["tokenizer"].get("family", "cvivit"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "clip_shape": list(shape),
        "batch": batch,
        "token_grid": list(ids.shape[1:]),
        "tokens_per_clip": tokens_per_clip,
        "encode": rates(encode_s, encode_flops),
        "decode": rates(decode_s, decode_flops),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="timed encode/decode pairs (medians reported)")
    parser.add_argument("--quick", action="store_true", help="1 run, small batches, MAGVIT debug for B")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), default=None, help="models to measure")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    finally:  # main() is also called in-process by the smoke test: leave the process as it was
        torch.set_num_threads(threads_before)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["models"].items():
        enc, dec = r["encode"], r["decode"]
        print(
            f"{name:13s} {r['preset']:13s} encode {enc['clips_per_s']:8.2f} clips/s {enc['tokens_per_s']:10.0f} "
            f"tokens/s ({enc['fraction_of_peak']:.0%} of peak)  decode {dec['clips_per_s']:8.2f} clips/s "
            f"({dec['fraction_of_peak']:.0%} of peak)"
        )
    print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> dict:
    begin = time.perf_counter()
    runs = 1 if args.quick else args.runs
    table = QUICK_MODELS if args.quick else MODELS
    peak_n, peak_runs = (1024, 3) if args.quick else (4096, 5)
    peak_start = matmul_peak(peak_n, peak_runs)
    models = {}
    for name, (preset, batch) in table.items():
        if args.only and name not in args.only:
            continue
        print(f"[{time.perf_counter() - begin:6.1f} s] {name} ({preset}, batch {batch})", file=sys.stderr)
        models[name] = bench_tokenizer(preset, batch, runs)
    peak_end = matmul_peak(peak_n, peak_runs)
    # The higher of the two peaks is the denominator, so a busy moment cannot inflate a fraction.
    peak = max(peak_start["gflops"], peak_end["gflops"])
    for r in models.values():
        for part in ("encode", "decode"):
            r[part]["fraction_of_peak"] = round(r[part]["achieved_gflops"] / peak, 4)
    return {
        "benchmark": "tokenizer_throughput",
        "date": measured_on(),
        "machine": describe_machine(("torch", "numpy")),
        "threads": torch.get_num_threads(),
        "setup": {
            "quick": args.quick,
            "runs": runs,
            "dtype": "float32",
            "mode": "eval() + torch.inference_mode()",
            "weights": "random initialisation (timing only)",
            "order": "encode and decode interleaved per run, one untimed warm-up of each",
        },
        "matmul_peak": {"gflops": peak, "start": peak_start, "end": peak_end},
        "models": models,
        "wall_seconds": round(time.perf_counter() - begin, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
