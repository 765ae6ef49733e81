"""Throughput runs for `benchmarks.training`: the data they train on, the real jobs, the probe loop (what
DeepSpeed holds per rank) and the GPU run (step time, tokens/s, MFU).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.process_memory import status_kib
from benchmarks.training_memory import ESTIMATE_PRESET, GIB, MIB, TrainWorkerWatch, maskgit_config
from jobs.training.metrics import GPU_PEAK_BF16_TFLOPS  # noqa: F401  (the trainers' table; re-exported)
from jobs.training.metrics import gpu_peak_tflops as datasheet_peak_tflops


# --------------------------------------------------------------------------------------------- data
def write_token_cache(root: Path, *, videos: int, images: int, grid: tuple[int, int, int], codebook_size: int,
                      text_dim: int, text_len: int, digest: str, seed: int = 0) -> str:  # fmt: skip
    """A token cache in `phenaki tokenize`'s layout: random codes, random text embeddings of text_len // 2
    to text_len tokens (padded to text_len by the loader), made in a second (as tests/test_loaders.py does)."""
    from pipelines.shards import shard_name, write_manifest, write_shard

    rng = np.random.default_rng(seed)
    t, h, w = grid
    samples = []
    for i in range(videos + images):
        image = i >= videos
        length = int(rng.integers(max(1, text_len // 2), text_len + 1))
        samples.append({
            "__key__": f"{'i' if image else 'v'}{i:05d}",
            "tokens.npy": rng.integers(0, codebook_size, (1 if image else t, h, w)).astype(np.int16),
            "text.npy": rng.standard_normal((length, text_dim)).astype(np.float16),
            "text_mask.npy": np.ones(length, dtype=bool),
            "txt": f"caption {i}",
            "json": {"kind": "image" if image else "video", "num_frames": 1 if image else 1 + 2 * (t - 1),
                     "tokenizer_digest": digest, "text_encoder": "benchmark"},
        })  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    per_shard = 64
    for s in range(0, len(samples), per_shard):
        write_shard(str(root / shard_name(s // per_shard)), samples[s : s + per_shard])
    write_manifest(str(root), {"kind": "tokens", "tokenizer_digest": digest,
                               "counts": {"video": videos, "image": images}})  # fmt: skip
    return str(root)


def moving_square(index: int, num_frames: int, size: int) -> np.ndarray:
    """(T, size, size, 3) uint8: a coloured square drifting over grey, distinct per index."""
    rng = np.random.default_rng(index)
    colour = rng.integers(40, 255, 3, dtype=np.uint8)
    side = size // 4
    x0, y0 = rng.integers(0, size - side, 2)
    dx, dy = rng.integers(-2, 3, 2)
    frames = np.full((num_frames, size, size, 3), 96, dtype=np.uint8)
    for t in range(num_frames):
        x, y = int(np.clip(x0 + dx * t, 0, size - side)), int(np.clip(y0 + dy * t, 0, size - side))
        frames[t, y : y + side, x : x + side] = colour
    return frames


def write_clip_shards(root: Path, *, videos: int, images: int, num_frames: int, size: int) -> str:
    """Clip shards in `phenaki prepare`'s layout (mp4 / jpg + txt + json), written directly: no Ray Data."""
    from pipelines.media import encode_jpeg, encode_mp4
    from pipelines.shards import shard_name, write_manifest, write_shard

    def meta(kind: str, i: int, frames: int, fps: float) -> dict:
        return {"kind": kind, "source": "benchmark", "source_key": str(i), "fps": fps, "num_frames": frames,
                "height": size, "width": size}  # fmt: skip

    samples = [
        {"__key__": f"v{i:05d}", "mp4": encode_mp4(moving_square(i, num_frames, size), fps=8.0),
         "txt": f"square {i} moving", "json": meta("video", i, num_frames, 8.0)}
        for i in range(videos)
    ] + [
        {"__key__": f"i{i:05d}", "jpg": encode_jpeg(moving_square(10_000 + i, 1, size)[0]),
         "txt": f"square still {i}", "json": meta("image", i, 1, 0.0)}
        for i in range(images)
    ]  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(samples), 16):
        write_shard(str(root / shard_name(s // 16)), samples[s : s + 16])
    write_manifest(str(root), {"kind": "clips", "counts": {"video": videos, "image": images}})
    return str(root)


def make_data(work: Path) -> dict:
    """A debug C-ViViT checkpoint (32x32, 8x8 patches, codebook 64: the debug and demo presets' token grid
    and codebook), a token cache made for it (80-token videos, 16-token stills, MiniLM-wide text) and
    clip shards (9 frames, 32x32)."""
    from jobs.config import load_config
    from modeling.generation import write_debug_checkpoint

    shutil.rmtree(work / "data", ignore_errors=True)
    ckpt = write_debug_checkpoint(work / "data" / "ckpt", num_frames=9) / "tokenizer"
    digest = (ckpt / "digest.txt").read_text().strip()
    demo = load_config("demo")
    text_len = int(demo["text_encoder"]["max_length"])
    cache = write_token_cache(work / "data" / "tokens", videos=96, images=24, grid=(5, 4, 4), codebook_size=64,
                              text_dim=384, text_len=text_len, digest=digest)  # fmt: skip
    clips = write_clip_shards(work / "data" / "clips", videos=40, images=16,
                              num_frames=int(demo["prepare"]["num_frames"]), size=int(demo["prepare"]["size"]))  # fmt: skip
    return {"tokenizer": str(ckpt), "token_cache": cache, "clips": clips, "token_grid": [5, 4, 4],
            "text_length": text_len, "text_dim": 384}  # fmt: skip


# --------------------------------------------------------------------------------------------- probe loop
def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def deepspeed_bytes(engine, zero_stage: int) -> dict[str, int]:
    """What the engine holds on this rank: module parameters (ZeRO-3: this rank's partitions), ZeRO's fp32
    master partition and the optimizer state (Adam's moments). ZeRO-1/2 keep the master partition as a
    copy even when the weights are fp32; ZeRO-3 may use the weight partition itself (then counted once)."""
    import torch

    def nbytes(tensors) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    if zero_stage == 3:
        params = nbytes(p.ds_tensor for p in engine.module.parameters())
    else:
        params = nbytes(engine.module.parameters())
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)  # ZeRO wraps the torch optimizer; stage 0 is the torch one
    if zero_stage == 3:
        held = {t.untyped_storage().data_ptr() for t in getattr(opt, "fp16_partitioned_groups_flat", [])}
        master = nbytes(t for t in getattr(opt, "fp32_partitioned_groups_flat", [])
                        if t.untyped_storage().data_ptr() not in held)  # fmt: skip
    else:
        master = nbytes(getattr(opt, "single_partition_of_fp32_groups", []))
    state = nbytes(t for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"module_parameters": params, "master_partition": master, "optimizer_state": state}


def probe_loop(config: dict) -> None:
    """A Ray Train worker: build the MaskGIT, wrap it with `jobs.training.common.build_engine`, run
    config['train'].steps MVTM steps on random batches, write what it measured to probe-rank<R>.json."""
    import deepspeed  # noqa: F401  (imported here, in the worker, as the jobs do)
    import torch

    from jobs.training.common import (
        build_engine,
        construct_model,
        deepspeed_config,
        engine_dtype,
        setup_worker,
    )
    from modeling.maskgit import MaskGIT
    from modeling.masking import mvtm_loss

    cfg, mg_cfg = config["train"], config["model"]
    text_len, video_fraction = int(config["text_len"]), float(config.get("video_fraction", 0.8))
    worker = setup_worker(cfg)
    cuda = worker.device.type == "cuda"
    mem = {"start": _rss_mib()}
    # As the trainers do: under ZeRO-3 the model is built inside deepspeed.zero.Init, partitioned as it goes.
    model = construct_model(lambda: MaskGIT(mg_cfg), deepspeed_config(cfg, worker.world_size))
    mem["model_built"] = _rss_mib()
    engine = build_engine(model, cfg, worker.world_size)
    mem["engine_built"] = _rss_mib()
    dtype = engine_dtype(engine)
    gen = torch.Generator().manual_seed(cfg.seed + worker.rank)
    b, n = cfg.batch_size, mg_cfg.seq_len
    step_s = []
    for _ in range(cfg.steps):
        tokens = torch.randint(0, mg_cfg.codebook_size, (b, n), generator=gen)
        images = torch.rand(b, generator=gen) >= video_fraction
        num_scored = torch.where(images, mg_cfg.tokens_per_frame, n)
        tokens = tokens.masked_fill(torch.arange(n)[None] >= num_scored[:, None], -1)
        text = torch.randn(b, text_len, mg_cfg.text_dim, generator=gen)
        text_mask = torch.ones(b, text_len, dtype=torch.bool)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _ = mvtm_loss(
            engine, tokens.to(worker.device), text.to(worker.device, dtype), text_mask.to(worker.device),
            num_scored.to(worker.device), generator=gen,
        )  # fmt: skip
        engine.backward(loss)
        engine.step()
        if cuda:
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t0)
    mem["after_steps"] = _rss_mib()
    mem["peak_vmhwm"] = (status_kib(os.getpid(), "VmHWM") or 0) / 1024
    result = {
        "rank": worker.rank,
        "world_size": worker.world_size,
        "device": str(worker.device),
        "zero_stage": cfg.zero_stage,
        "precision": cfg.precision,
        "batch_size": b,
        "step_s": step_s,
        "loss": float(loss.detach()),
        "rss_mib": {k: round(v, 1) for k, v in mem.items()},
        "deepspeed_bytes": deepspeed_bytes(engine, cfg.zero_stage),
        "parameters": sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()
        ),
    }
    if cuda:
        result["cuda"] = {
            "name": torch.cuda.get_device_name(worker.device),
            "max_allocated_gib": round(torch.cuda.max_memory_allocated(worker.device) / GIB, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved(worker.device) / GIB, 2),
        }
    Path(config["out_dir"], f"probe-rank{worker.rank}.json").write_text(json.dumps(result, indent=2))


def run_probe(out: Path, model_cfg, *, zero_stage: int, workers: int, steps: int, batch_size: int,
              text_len: int, precision: str = "fp32", use_gpu: bool | None = False) -> tuple[list[dict], dict]:  # fmt: skip
    """The probe loop on `workers` Ray Train workers; -> (per-rank results, peak RSS seen from outside)."""
    from benchmarks.training_runs import probe_loop as loop  # by module name: Ray pickles it by reference
    from jobs.training.common import TrainConfig, launch

    cfg = TrainConfig(steps=steps, batch_size=batch_size, zero_stage=zero_stage, precision=precision,
                      num_workers=workers, use_gpu=use_gpu, max_failures=0)  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    with TrainWorkerWatch() as watch:
        result = launch(
            loop, {"train": cfg, "model": model_cfg, "text_len": text_len}, cfg, str(out), "probe"
        )
    if result.error is not None:
        raise result.error
    ranks = [json.loads((out / f"probe-rank{r}.json").read_text()) for r in range(workers)]
    return ranks, watch.report()


# --------------------------------------------------------------------------------------------- jobs
def median_step(rows: list[dict], warmup: int) -> dict:
    timed = [float(r["step_s"]) for r in rows[warmup:]] or [float(r["step_s"]) for r in rows[-1:]]
    return {"steps_timed": len(timed), "step_s_median": statistics.median(timed),
            "step_s_min": min(timed), "step_s_max": max(timed)}  # fmt: skip


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_overrides(section: str, *, steps: int, workers: int, zero_stage: int) -> list[str]:
    return [
        f"{section}.steps={steps}", f"{section}.num_workers={workers}", f"{section}.zero_stage={zero_stage}",
        f"{section}.precision=fp32", f"{section}.checkpoint_every=0", f"{section}.time_budget_s=null",
        f"{section}.max_failures=0", f"{section}.log_every=1000", f"{section}.warmup_steps=1",
    ]  # fmt: skip


def transformer_job(preset: str, data: dict, out: Path, *, steps: int, workers: int, zero_stage: int) -> dict:
    from jobs.config import load_config
    from jobs.train_transformer import run

    config = load_config(preset, train_overrides("transformer_train", steps=steps, workers=workers,
                                                 zero_stage=zero_stage))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    with TrainWorkerWatch() as watch:
        start = time.perf_counter()
        run(config, data["token_cache"], data["tokenizer"], str(out))
        seconds = time.perf_counter() - start
    rows = read_metrics(out)
    return {"rows": rows, "job_seconds": seconds, "batch_size": int(config["transformer_train"]["batch_size"]),
            **watch.report()}  # fmt: skip


def tokenizer_job(preset: str, data: dict, out: Path, *, steps: int, workers: int, zero_stage: int) -> dict:
    from jobs.config import load_config
    from jobs.train_tokenizer import run

    overrides = train_overrides("tokenizer_train", steps=steps, workers=workers, zero_stage=zero_stage)
    config = load_config(
        preset, [*overrides, "tokenizer_train.eval_clips=2", "tokenizer_train.restart_every=0"]
    )
    shutil.rmtree(out, ignore_errors=True)
    with TrainWorkerWatch() as watch:
        start = time.perf_counter()
        run(config, data["clips"], str(out))
        seconds = time.perf_counter() - start
    train = config["tokenizer_train"]
    return {"rows": read_metrics(out), "job_seconds": seconds, "batch_size": int(train["batch_size"]),
            "image_batch_size": int(train.get("image_batch_size", 4)), **watch.report()}  # fmt: skip


def throughput_entry(runs: list[dict], *, warmup: int, workers: int, samples_per_step: int,
                     tokens_per_step: int) -> dict:  # fmt: skip
    """Per-worker-count summary: median over runs of each run's median step time after warm-up."""
    per_run = [median_step(r["rows"], warmup) for r in runs]
    step = statistics.median(p["step_s_median"] for p in per_run)
    return {
        "workers": workers,
        "samples_per_step": samples_per_step,
        "tokens_per_step": tokens_per_step,
        "steps_timed_per_run": per_run[0]["steps_timed"],
        "step_s_median": round(step, 4),
        "step_s_median_per_run": [round(p["step_s_median"], 4) for p in per_run],
        "samples_per_s": round(samples_per_step / step, 2),
        "tokens_per_s": round(tokens_per_step / step, 1),
        # The job's own per-step MFU (jobs.training.metrics): 3 x forward FLOPs of modeling.flops per worker
        # over the matmul peak each CPU worker measures when it starts, i.e. in this same run.
        "mfu_median": _median_metric(runs, "mfu", warmup),
        "achieved_tflops_per_worker_median": _median_metric(runs, "achieved_tflops", warmup),
        "job_seconds_median": round(statistics.median(r["job_seconds"] for r in runs), 1),
        "loss_last": runs[-1]["rows"][-1]["loss"],
        "peak_rss_mib_max": max((r["peak_rss_mib_max"] or 0.0) for r in runs) or None,
        "peak_rss_mib_per_worker_last_run": runs[-1]["peak_rss_mib_per_worker"],
    }


def _median_metric(runs: list[dict], key: str, warmup: int) -> float | None:
    """Median over runs of each run's median `key` after warm-up (None when the rows do not have it)."""
    per_run = []
    for r in runs:
        values = [float(row[key]) for row in r["rows"][warmup:] if isinstance(row.get(key), int | float)]
        if values:
            per_run.append(statistics.median(values))
    return round(statistics.median(per_run), 4) if per_run else None


# --------------------------------------------------------------------------------------------- gpu
def gpu_peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--gpu-peak-tflops"
    value = datasheet_peak_tflops(name, "bf16")
    if value is not None:
        return value, f"dense bf16 datasheet peak of {name}"
    return None, "unknown GPU: pass --gpu-peak-tflops"


def gpu_run(work: Path, *, steps: int, batch_size: int, peak_override: float | None) -> dict:
    """The probe loop on the phenaki-1.8b transformer, ZeRO-3, bf16, one GPU worker; MFU from the matmul
    FLOPs of `modeling.flops.maskgit_forward_flops` (x3 for forward + backward)."""
    import torch

    from jobs.config import load_config
    from modeling.flops import maskgit_forward_flops

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    import ray

    if ray.cluster_resources().get("GPU", 0) < 1:
        return {"skipped": "CUDA is visible but the Ray cluster has no GPU resource"}
    config = load_config(ESTIMATE_PRESET)
    mg_cfg = maskgit_config(config)
    text_len = int(config["text_encoder"]["max_length"])
    try:
        ranks, watch = run_probe(work / "gpu", mg_cfg, zero_stage=3, workers=1, steps=steps, batch_size=batch_size,
                                 text_len=text_len, precision="bf16", use_gpu=True)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - an OOM or a driver problem is a result to record, not a crash
        return {"error": f"{type(e).__name__}: {e}"[:2000], "batch_size": batch_size, "steps": steps}
    r = ranks[0]
    timed = r["step_s"][1:] or r["step_s"]
    step = statistics.median(timed)
    flops = 3 * maskgit_forward_flops(mg_cfg, text_len=text_len, batch=batch_size)
    peak, source = gpu_peak_tflops(r["cuda"]["name"], peak_override)
    achieved = flops / step / 1e12
    return {
        "preset": ESTIMATE_PRESET,
        "zero_stage": 3,
        "precision": "bf16",
        "workers": 1,
        "batch_size": batch_size,
        "seq_len": mg_cfg.seq_len,
        "text_length": text_len,
        "parameters": r["parameters"],
        "steps": steps,
        "step_s": [round(s, 4) for s in r["step_s"]],
        "step_s_median_after_first": round(step, 4),
        "samples_per_s": round(batch_size / step, 2),
        "tokens_per_s": round(batch_size * mg_cfg.seq_len / step, 1),
        "model_flops_per_step": flops,
        "achieved_tflops": round(achieved, 1),
        "peak_tflops": peak,
        "peak_source": source,
        "mfu": round(achieved / peak, 4) if peak else None,
        "cuda": r["cuda"],
        "host_rss_mib": r["rss_mib"],
        "host_peak_rss_mib_seen": watch["peak_rss_mib_max"],
        "deepspeed_gib": {k: round(v / GIB, 2) for k, v in r["deepspeed_bytes"].items()},
        "loss_last": r["loss"],
    }
