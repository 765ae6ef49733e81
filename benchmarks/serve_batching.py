"""Serving throughput and latency: the same burst of concurrent requests against `phenaki serve` with batching
(`max_batch` 8) and without (`max_batch` 1), in one run on one machine.

    python -m benchmarks.serve_batching --runs 3            # demo-sized model, 16 concurrent clips
    python -m benchmarks.serve_batching --quick --out /tmp/s.json

The model has the sizes of configs/demo.yaml (C-ViViT and MaskGIT, random weights: the work per request does
not depend on the values) and the demo's sampling settings. Each run fires `--requests` one-prompt requests at
once at `POST /v1/videos/sync` (different prompts and seeds) from as many client threads, and records the wall
time of the burst and each request's latency. A batched request's video is the one it gets alone (tests check
that byte for byte), so the ratio measures only what merging rows into one sampler call buys. The sampler
replica gets 2 CPUs (the machine's, when it has 2): batching is about the sampler's own threads, not more
replicas.

Writes benchmarks/results/serve_batching.json: per setting, the median over runs of requests per second and of
the median and 95th-percentile latency, the batch sizes seen, and the ratio batched / unbatched.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).parent / "results" / "serve_batching.json"
COLOURS = ("red", "green", "blue", "yellow", "orange", "white", "pink", "cyan")
MOTIONS = ("left", "right", "up", "down")


def demo_checkpoint(directory: Path) -> tuple[Path, dict]:
    """A transformer checkpoint (with its tokenizer) of configs/demo.yaml's sizes, random weights."""
    import torch

    from jobs.config import load_config
    from modeling.checkpoint import GenerationRecord, TokenizerRecord, save_checkpoint
    from modeling.cvivit import CViViT, CViViTConfig
    from modeling.maskgit import MaskGIT, MaskGITConfig, code_sizes
    from modeling.typed_config import build_dataclass

    config = load_config("demo")
    torch.manual_seed(0)
    tok_cfg = build_dataclass(CViViTConfig, config["tokenizer"])
    tok = CViViT(tok_cfg).eval()
    frames = int(config["prepare"]["num_frames"])
    t, h, w = tok.token_grid(frames)
    sizes = {**code_sizes(config["tokenizer"], config["transformer"]), "seq_len": t * h * w,
             "tokens_per_frame": h * w, "text_dim": 384}  # fmt: skip
    mg_cfg = build_dataclass(MaskGITConfig, {**config["transformer"], **sizes})
    record = GenerationRecord(frames, float(config["prepare"]["fps"]), sampling=dict(config["sampling"]))
    save_checkpoint(directory, MaskGIT(mg_cfg).eval(), mg_cfg, record.to_extra())
    save_checkpoint(directory / "tokenizer", tok, tok_cfg, TokenizerRecord(frames, record.fps).to_extra())
    return directory, {"tokens": t * h * w, "frames": frames, "image_size": tok_cfg.image_size,
                       "transformer": {k: config["transformer"][k] for k in ("dim", "depth", "heads")},
                       "sampling": dict(config["sampling"])}  # fmt: skip


def burst(url: str, n: int, offset: int) -> dict:
    import requests

    bodies = [
        {
            "prompt": f"a {COLOURS[i % len(COLOURS)]} circle moving {MOTIONS[i % len(MOTIONS)]}",
            "seed": offset + i,
        }
        for i in range(n)
    ]

    def call(body: dict) -> tuple[float, int]:
        start = time.perf_counter()
        r = requests.post(f"{url}/v1/videos/sync", json=body, timeout=600)
        r.raise_for_status()
        return time.perf_counter() - start, int(r.headers["X-Phenaki-Batch"])

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(call, bodies))
    wall = time.perf_counter() - start
    latencies = sorted(a for a, _ in answers)
    return {
        "wall_s": wall,
        "requests_per_s": n / wall,
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[min(n - 1, round(0.95 * (n - 1)))],
        "batch_sizes": sorted({b for _, b in answers}),
    }


def measure(checkpoint: Path, max_batch: int, n: int, runs: int, num_cpus: float) -> dict:
    from jobs.runtime import free_port
    from jobs.serving.app import ServeArgs, start, stop

    args = ServeArgs(checkpoint=str(checkpoint), num_cpus=num_cpus,
                     limits={"max_batch": max_batch, "batch_wait_s": 0.05, "max_queued": 4 * n})  # fmt: skip
    url = start(args, host="127.0.0.1", port=free_port())
    try:
        burst(url, min(n, 4), offset=10_000)  # warm-up: first calls load kernels and the encoder's caches
        results = [burst(url, n, offset=run * n) for run in range(runs)]
    finally:
        stop()
    return {
        "max_batch": max_batch,
        "runs": results,
        **{
            key: statistics.median(r[key] for r in results)
            for key in ("requests_per_s", "latency_p50_s", "latency_p95_s", "wall_s")
        },  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per burst")
    parser.add_argument("--quick", action="store_true", help="1 run of 4 requests (smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    runs, n = (1, 4) if args.quick else (args.runs, args.requests)

    import os

    from benchmarks.machine import describe_machine
    from jobs.runtime import init_ray

    started = time.perf_counter()
    num_cpus = float(min(2, os.cpu_count() or 1))
    init_ray(None)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, model = demo_checkpoint(Path(tmp) / "transformer")
        batched = measure(checkpoint, 8, n, runs, num_cpus)
        single = measure(checkpoint, 1, n, runs, num_cpus)
    result = {
        "benchmark": "serve_batching",
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe_machine(),
        "model": model,
        "requests_per_burst": n,
        "runs": runs,
        "replica_cpus": num_cpus,
        "batched": batched,
        "unbatched": single,
        "throughput_ratio": batched["requests_per_s"] / single["requests_per_s"],
        "p50_latency_ratio": batched["latency_p50_s"] / single["latency_p50_s"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{n} concurrent requests, median of {runs}: batched {batched['requests_per_s']:.2f} req/s "
        f"(p50 {batched['latency_p50_s']:.2f} s, batches {batched['runs'][-1]['batch_sizes']}), unbatched "
        f"{single['requests_per_s']:.2f} req/s (p50 {single['latency_p50_s']:.2f} s): "
        f"{result['throughput_ratio']:.2f}x throughput -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
