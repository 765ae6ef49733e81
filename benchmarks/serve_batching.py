"""Serving: latency and throughput of `phenaki serve`, batched against unbatched, load shedding and
autoscaling, all in one run on one machine.

    python -m benchmarks.serve_batching --runs 3
    python -m benchmarks.serve_batching --quick --out /tmp/s.json     # smoke test (about a minute)

The model has the sizes of configs/demo.yaml (C-ViViT and MaskGIT, random weights: the work per request does
not depend on the values) and the demo's sampling settings. A burst is N one-prompt requests sent at once to
`POST /v1/videos/sync` (different prompts and seeds) from N client threads; its wall time gives requests per
second and its requests' latencies the p50 and p95. A batched request's video is the one it gets alone (the
tests check that byte for byte), so batched / unbatched measures only what merging rows into one sampler call
buys. What is measured, medians over --runs bursts:

1. batched (`max_batch` 8), one replica: p50 / p95 latency and requests/s at concurrency 1, 4, 8 and 32;
2. unbatched (`max_batch` 1): the same at concurrency 8, and the throughput ratio batched / unbatched there;
3. load shedding: with the sampler busy and `max_queued` jobs waiting, the time until a further request is
   answered 503 (median of 5);
4. autoscaling (`max_replicas` 2, one CPU each, upscale after 2 s, downscale after 10 s): sustained load of 16
   client threads, the seconds until Serve runs 2 sampler replicas, then idle, the seconds until it is back to 1.

Writes benchmarks/results/serve_batching.json with the machine described.
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


def serve(checkpoint: Path, **fields) -> str:
    from jobs.runtime import free_port
    from jobs.serving.app import ServeArgs, start

    return start(ServeArgs(checkpoint=str(checkpoint), **fields), host="127.0.0.1", port=free_port())


def medians(results: list[dict]) -> dict:
    keys = ("requests_per_s", "latency_p50_s", "latency_p95_s", "wall_s")
    return {"runs": results, **{k: statistics.median(r[k] for r in results) for k in keys}}


def latency_and_throughput(url: str, levels: list[int], runs: int) -> dict:
    burst(url, 4, offset=10_000)  # warm-up: first calls load kernels and the encoder's caches
    return {
        str(n): medians([burst(url, n, offset=1000 * n + run * n) for run in range(runs)]) for n in levels
    }


def shedding(url: str, max_queued: int) -> dict:
    """Fill the sampler and its queue with stories, then time requests that must be refused."""
    import requests

    story = {"prompts": [f"a red circle moving left, part {i}" for i in range(8)], "steps": 12}
    ids = [requests.post(f"{url}/v1/videos", json=story, timeout=60).json()["id"]]
    while requests.get(f"{url}/v1/videos/{ids[0]}", timeout=60).json()["status"] != "running":
        time.sleep(0.05)
    ids += [requests.post(f"{url}/v1/videos", json=story, timeout=60).json()["id"] for _ in range(max_queued)]
    seconds, statuses = [], []
    for _ in range(5):
        start = time.perf_counter()
        r = requests.post(f"{url}/v1/videos", json=story, timeout=60)
        seconds.append(time.perf_counter() - start)
        statuses.append(r.status_code)
    for job_id in ids:
        requests.delete(f"{url}/v1/videos/{job_id}", timeout=60)
    return {"statuses": statuses, "seconds": seconds, "median_s": statistics.median(seconds)}


def sampler_replicas() -> int:
    from ray import serve

    from jobs.serving.app import APP_NAME

    states = serve.status().applications[APP_NAME].deployments["sampler"].replica_states
    return int(states.get("RUNNING", 0))


def autoscaling(url: str, load_s: float, idle_s: float) -> dict:
    """16 client threads looping requests until 2 sampler replicas run (or `load_s`), then none until 1 runs."""
    import threading

    import requests

    stop, served = threading.Event(), [0]

    def client(i: int) -> None:
        while not stop.is_set():
            r = requests.post(
                f"{url}/v1/videos/sync", json={"prompt": f"a blue square {i}", "seed": i}, timeout=600
            )
            served[0] += r.status_code == 200

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    up = None
    while time.perf_counter() - start < load_s:
        if sampler_replicas() >= 2:
            up = time.perf_counter() - start
            break
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    idle_start, down = time.perf_counter(), None
    while time.perf_counter() - idle_start < idle_s:
        if sampler_replicas() <= 1:
            down = time.perf_counter() - idle_start
            break
        time.sleep(0.5)
    return {"to_2_replicas_s": up, "back_to_1_replica_s": down, "requests_served": served[0], "load_clients": 16,
            "upscale_delay_s": 2, "downscale_delay_s": 10}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run, concurrency 1 and 4, short autoscaling")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    runs, levels = (1, [1, 4]) if args.quick else (args.runs, [1, 4, 8, 32])
    ratio_at = levels[-1] if args.quick else 8

    import os

    from benchmarks.machine import describe_machine, measured_on
    from jobs.runtime import init_ray
    from jobs.serving.app import stop

    started = time.perf_counter()
    num_cpus = float(min(2, os.cpu_count() or 1))
    init_ray(None)
    result: dict = {
        "benchmark": "serve_batching",
        "date": measured_on(),
        "machine": describe_machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, result["model"] = demo_checkpoint(Path(tmp) / "transformer")
        try:
            url = serve(checkpoint, num_cpus=num_cpus, limits={"max_batch": 8, "max_queued": 64})
            result["batched"] = latency_and_throughput(url, levels, runs)
            stop()
            url = serve(checkpoint, num_cpus=num_cpus, limits={"max_batch": 1, "max_queued": 16})
            result["unbatched"] = latency_and_throughput(url, [ratio_at], runs)
            result["shedding"] = shedding(url, 16)
            stop()
            url = serve(checkpoint, num_cpus=1.0, max_replicas=2, upscale_delay_s=2, downscale_delay_s=10,
                        limits={"max_batch": 8, "max_queued": 64})  # fmt: skip
            result["autoscaling"] = autoscaling(url, 30 if args.quick else 90, 30 if args.quick else 60)
        finally:
            stop()
    batched, unbatched = result["batched"][str(ratio_at)], result["unbatched"][str(ratio_at)]
    result.update(
        runs=runs, replica_cpus=num_cpus, ratio_concurrency=ratio_at,
        throughput_ratio=batched["requests_per_s"] / unbatched["requests_per_s"],
        p50_latency_ratio=batched["latency_p50_s"] / unbatched["latency_p50_s"],
        wall_seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for n, row in result["batched"].items():
        print(f"batched, concurrency {n}: {row['requests_per_s']:.2f} req/s, p50 {row['latency_p50_s']:.2f} s, "
              f"p95 {row['latency_p95_s']:.2f} s")  # fmt: skip
    print(
        f"concurrency {ratio_at}: batched {batched['requests_per_s']:.2f} vs unbatched "
        f"{unbatched['requests_per_s']:.2f} req/s = {result['throughput_ratio']:.2f}x; 503 in "
        f"{result['shedding']['median_s'] * 1000:.0f} ms; replicas 1 -> 2 in {result['autoscaling']['to_2_replicas_s']} s, "
        f"back in {result['autoscaling']['back_to_1_replica_s']} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
