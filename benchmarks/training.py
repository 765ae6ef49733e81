"""Training throughput and memory per rank: Ray Train + DeepSpeed on CPU workers, ZeRO estimates at 1.8B.

    python -m benchmarks.training --steps 20 --runs 1

Four parts, in one report:

estimates   The phenaki-1.8b transformer (parameters counted on the meta device, `jobs.describe`) and its
            largest layer (the most parameters one module holds itself, DeepSpeed's definition), put through
            DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
            `estimate_zero3_model_states_mem_needs`) for 1x1, 1x8 and 8x8 GPUs with and without CPU offload,
            next to the ZeRO paper's formulas for bf16 weights and gradients plus fp32 Adam (K = 12 bytes per
            parameter: master weights, momentum, variance) over N data-parallel ranks:
                ZeRO-0 16Ψ, ZeRO-1 2Ψ + 2Ψ + 12Ψ/N, ZeRO-2 2Ψ + 14Ψ/N, ZeRO-3 16Ψ/N.
            GiB per rank; model states only (no activations, no framework, no fragmentation).
throughput  The real jobs (`jobs.train_transformer.run`, `jobs.train_tokenizer.run`) for the debug and demo
            presets on 1 and 2 workers (ZeRO-2, fp32, the preset's per-worker batch), --steps each, on a
            token cache / clip shards made under --work (80 tokens per clip: the presets' 32x32 9-frame
            clips, a 5x4x4 grid). Median step time (metrics.jsonl step_s) over the steps after the first
            --warmup, -> samples/s, tokens/s (samples x sequence positions the model runs over; for the
            tokenizer, latent tokens: 80 per video, 16 per still) and the 1 -> 2 worker scaling.
memory      An idle Ray worker's RSS, and the same process's after importing torch, DeepSpeed and Ray Train.
            The demo transformer job at ZeRO-1, 2 and 3 on 2 workers (fp32, --steps; ZeRO-2 is the
            throughput job): the peak RSS of each `ray::RayTrainWorker` process (polled every 50 ms, with the
            kernel's VmHWM) and its excess over those two baselines. Then a probe loop (this module's
            `probe_loop`: `jobs.train_common.build_engine` on a MaskGIT, --probe-steps MVTM steps on random
            batches) at ZeRO-1, 2 and 3 on 2 workers reads what DeepSpeed holds per rank (module parameters,
            fp32 master partition, Adam state) next to the fp32 formula, and the worker's own RSS before the
            model, after it, after the engine and at its peak. The probe's model is the demo's widened to
            width 512, 8 layers (~33M parameters), so that ZeRO's savings stand out of the framework's RSS;
            the jobs' own loops do not report what DeepSpeed holds.
gpu         With CUDA: the probe loop on the phenaki-1.8b transformer, ZeRO-3, bf16, one GPU worker, a few
            steps -> step time, tokens/s and MFU (3 x forward matmul FLOPs of `modeling.flops` / step time /
            the GPU's dense bf16 peak). Without CUDA it is skipped with a note.

Medians over --runs (each run a fresh job in a fresh output directory, worker counts interleaved). Writes
benchmarks/results/training.json with the machine described. The figures are wall times: run it alone on
the machine. --quick (debug transformer on 1 and 2 workers for 3 steps, no tokenizer jobs, no extra memory
jobs, a one-worker ZeRO-3 probe of the debug model) is the smoke test. --skip-gpu leaves the GPU part out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine

DEFAULT_OUT = Path(__file__).parent / "results" / "training.json"
DEFAULT_WORK = Path("/tmp/training-bench")
GIB, MIB = 2**30, 2**20
ESTIMATE_PRESET = "phenaki-1.8b"
ESTIMATE_SETUPS = ((1, 1), (1, 8), (8, 8))  # (nodes, GPUs per node); 8x8 = the preset's 64 workers
WORKER_MARKER = "RayTrainWorker"  # Ray Train V2's worker actor class (process title ray::RayTrainWorker...)
WIDE = {"dim": 512, "depth": 8, "heads": 8, "mlp_dim": 2048}  # the "demo-wide" probe model
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


# --------------------------------------------------------------------------------------------- estimates
def maskgit_config(config: dict):
    """The MaskGIT a preset builds, sized as `jobs.describe` sizes it (tokenizer grid, text width)."""
    from jobs.describe import text_width
    from modeling.maskgit import MaskGITConfig
    from modeling.presets import build_dataclass
    from modeling.tokenizers import tokenizer_config_from

    _, tok_cfg = tokenizer_config_from(config["tokenizer"])
    t, h, w = tok_cfg.token_grid(int((config.get("prepare") or {}).get("num_frames", 11)))
    return build_dataclass(MaskGITConfig, {
        **config["transformer"], "codebook_size": tok_cfg.codebook_size, "seq_len": t * h * w,
        "tokens_per_frame": h * w, "text_dim": text_width(config),
    })  # fmt: skip


def largest_layer(model) -> tuple[str, int]:
    """(name, parameters) of the module holding the most parameters itself (not counting children), as
    DeepSpeed's `model_to_params` does for ZeRO-3's gather buffer; works on the meta device."""
    best = ("", 0)
    for name, module in model.named_modules():
        n = sum(p.numel() for p in module.parameters(recurse=False))
        if n > best[1]:
            best = (name or "<root>", n)
    return best


def formula_bytes(
    psi: int, ranks: int, *, weight: int = 2, grad: int = 2, optimizer: int = 12
) -> dict[str, int]:
    """Model-state bytes per rank for ZeRO stages 0-3 (ZeRO paper, sec. 3-5): weights, gradients, optimizer
    states (fp32 master + Adam momentum + variance = 12 bytes per parameter)."""
    n = ranks
    return {
        "zero0": (weight + grad + optimizer) * psi,
        "zero1": weight * psi + grad * psi + optimizer * psi // n,
        "zero2": weight * psi + (grad + optimizer) * psi // n,
        "zero3": (weight + grad + optimizer) * psi // n,
    }


def deepspeed_estimates(psi: int, largest: int, nodes: int, gpus_per_node: int) -> dict:
    """DeepSpeed's estimators (GiB): per GPU, and CPU per node. ZeRO-3 with zero_init True (the weights are
    created partitioned, `deepspeed.zero.Init`) and False (each process first builds the whole model)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    def gib(cpu: int, gpu: int) -> dict:
        return {"gpu_gib_per_gpu": round(gpu / GIB, 2), "cpu_gib_per_node": round(cpu / GIB, 2)}

    hw = {"num_gpus_per_node": gpus_per_node, "num_nodes": nodes}
    z2 = {
        name: gib(*estimate_zero2_model_states_mem_needs(psi, cpu_offload=offload, **hw))
        for name, offload in (("no_offload", False), ("offload_optimizer", True))
    }
    z3 = {}
    for name, offload, offload_params in (
        ("no_offload", False, False),
        ("offload_optimizer", True, False),
        ("offload_optimizer_and_params", True, True),
    ):
        entry = {}
        for zero_init in (True, False):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                psi,
                largest,
                cpu_offload=offload,
                cpu_offload_params=offload_params,
                zero_init=zero_init,
                **hw,
            )
            entry["zero_init" if zero_init else "no_zero_init"] = gib(cpu, gpu)
        z3[name] = entry
    return {"zero2": z2, "zero3": z3}


def estimates(preset: str = ESTIMATE_PRESET) -> dict:
    import torch

    from jobs.describe import describe
    from modeling.maskgit import MaskGIT
    from modeling.presets import load_config

    config = load_config(preset)
    described = describe(config)
    psi = int(described["transformer"]["parameters"])
    mg_cfg = maskgit_config(config)
    with torch.device("meta"):
        model = MaskGIT(mg_cfg)
    unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    if unique != psi:
        raise RuntimeError(f"meta-device MaskGIT has {unique} parameters, describe() says {psi}")
    layer, largest = largest_layer(model)
    setups = {}
    for nodes, per_node in ESTIMATE_SETUPS:
        ranks = nodes * per_node
        formula = {k: round(v / GIB, 2) for k, v in formula_bytes(psi, ranks).items()}
        ds = deepspeed_estimates(psi, largest, nodes, per_node)
        setups[f"{nodes}x{per_node}"] = {
            "nodes": nodes,
            "gpus_per_node": per_node,
            "ranks": ranks,
            "formula_gib_per_rank": formula,
            "deepspeed": ds,
            # DeepSpeed counts 18 bytes/param for what the paper calls 14 (ZeRO-2) or 16 (ZeRO-3): it adds an
            # fp32 gradient partition (4 B/param), and ZeRO-3 adds the gathered largest layer (4 B/param).
            "deepspeed_minus_formula_gib": {
                "zero2": round(ds["zero2"]["no_offload"]["gpu_gib_per_gpu"] - formula["zero2"], 2),
                "zero3": round(
                    ds["zero3"]["no_offload"]["zero_init"]["gpu_gib_per_gpu"] - formula["zero3"], 2
                ),
            },
            "deepspeed_minus_formula_explained_gib": {
                "zero2": round(4 * psi / ranks / GIB, 2),
                "zero3": round((2 * psi / ranks + 4 * largest) / GIB, 2),
            },
        }
    return {
        "preset": preset,
        "transformer_parameters": psi,
        "tokenizer_parameters": described["tokenizer"]["parameters"],
        "largest_layer": {"module": layer, "parameters": largest},
        "precision": "bf16 weights and gradients, fp32 Adam (master copy, momentum, variance)",
        "formulas": {
            "zero0": "16Ψ",
            "zero1": "2Ψ + 2Ψ + 12Ψ/N",
            "zero2": "2Ψ + (2Ψ + 12Ψ)/N",
            "zero3": "16Ψ/N",
            "deepspeed_zero2": "2Ψ + 18Ψ/N on the GPU (offload: 2Ψ; CPU per node Ψ·max(4·GPUs, 16)·1.5)",
            "deepspeed_zero3": "4·largest + 18Ψ/N on the GPU (offload optimizer: 4·largest + 2Ψ/N; and params: 4·largest)",
        },
        "setups": setups,
    }


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
    from modeling.generation import write_debug_checkpoint
    from modeling.presets import load_config

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


# --------------------------------------------------------------------------------------------- memory
def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class TrainWorkerWatch:
    """Peak memory of the Ray Train worker processes of one job: this process's descendants whose title
    holds `marker`, polled every `interval_s` (RSS and the kernel's VmHWM, which also catches peaks
    between polls). A worker of an earlier job still exiting (same title on entry) and processes a worker
    forks (they inherit its title and share its pages) are left out. Ranks
    are not visible from outside, so workers are listed by pid. Workers of a cluster this process did not
    start are not descendants: none are found."""

    def __init__(self, marker: str = WORKER_MARKER, interval_s: float = 0.05) -> None:
        self.marker, self.interval_s = marker, interval_s
        self.peak: dict[int, int] = {}  # bytes
        self.stale: set[int] = set()
        self.forked: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _matching(self):
        import psutil

        try:
            procs = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        titled = {}
        for p in procs:
            try:
                if self.marker in " ".join(p.cmdline()):
                    titled[p.pid] = p
            except psutil.Error:
                continue
        # A process a worker forks (it inherits the title) shares the worker's pages: not another worker.
        out = []
        for pid, p in titled.items():
            try:
                if p.ppid() in titled:
                    self.forked.add(pid)
                    continue
            except psutil.Error:
                continue
            out.append(p)
        return out

    def __enter__(self) -> TrainWorkerWatch:
        self.stale = {p.pid for p in self._matching()}
        self._thread.start()
        return self

    def _poll(self) -> None:
        import psutil

        procs, last_scan = [], 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_scan > 0.5:
                procs, last_scan = [p for p in self._matching() if p.pid not in self.stale], time.monotonic()
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                hwm = (_status_kib(p.pid, "VmHWM") or 0) * 1024
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss, hwm)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        per = {str(pid): round(b / MIB, 1) for pid, b in sorted(self.peak.items())}
        return {
            "peak_rss_mib_per_worker": per,
            "peak_rss_mib_max": max(per.values()) if per else None,
            "forked_children_left_out": len(self.forked),
        }


def worker_baselines() -> dict:
    """RSS of an idle Ray worker, then of the same process after importing what a training worker imports
    (torch, DeepSpeed, Ray Train): the floor under every training worker's RSS on CPU."""
    import ray

    @ray.remote(num_cpus=0)
    class MemoryProbe:
        def rss_mib(self) -> dict:
            import psutil

            return {
                "rss": psutil.Process().memory_info().rss / MIB,
                "hwm": (_status_kib(os.getpid(), "VmHWM") or 0) / 1024,
            }

        def load(self) -> dict:
            import deepspeed  # noqa: F401
            import ray.train.torch  # noqa: F401
            import torch  # noqa: F401

            import jobs.train_common  # noqa: F401
            import modeling.maskgit  # noqa: F401

            return self.rss_mib()

    probe = MemoryProbe.remote()
    try:
        idle = ray.get(probe.rss_mib.remote())
        loaded = ray.get(probe.load.remote())
    finally:
        ray.kill(probe)
    return {
        "idle_worker_rss_mib": round(idle["rss"], 1),
        "loaded_worker_rss_mib": round(loaded["rss"], 1),
        "loaded_imports": "torch, deepspeed, ray.train.torch, jobs.train_common, modeling.maskgit",
    }


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
    """A Ray Train worker: build the MaskGIT, wrap it with `jobs.train_common.build_engine`, run
    config['train'].steps MVTM steps on random batches, write what it measured to probe-rank<R>.json."""
    import deepspeed  # noqa: F401  (imported here, in the worker, as the jobs do)
    import torch

    from jobs.train_common import build_engine, engine_dtype, setup_worker
    from modeling.maskgit import MaskGIT
    from modeling.masking import mvtm_loss

    cfg, mg_cfg = config["train"], config["model"]
    text_len, video_fraction = int(config["text_len"]), float(config.get("video_fraction", 0.8))
    worker = setup_worker(cfg)
    cuda = worker.device.type == "cuda"
    mem = {"start": _rss_mib()}
    model = MaskGIT(mg_cfg)
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
    mem["peak_vmhwm"] = (_status_kib(os.getpid(), "VmHWM") or 0) / 1024
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
    from benchmarks.training import probe_loop as loop  # by module name: Ray pickles it by reference
    from jobs.train_common import TrainConfig, launch

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


def expected_fp32_bytes(psi: int, ranks: int, stage: int) -> dict[str, int]:
    """fp32 training under DeepSpeed ZeRO, per rank: the module's weights (ZeRO-3: a 1/N partition), the
    fp32 master partition (4Ψ/N: a copy even when the weights are fp32; on CPU ZeRO-3 copies too) and Adam's
    two moments (8Ψ/N). Gradients (4Ψ, reduced into 4Ψ/N partitions) and buckets are transient."""
    return {
        "module_parameters": 4 * psi // (ranks if stage == 3 else 1),
        "master_partition": 4 * psi // ranks,
        "optimizer_state": 8 * psi // ranks,
    }


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
    from jobs.train_transformer import run
    from modeling.presets import load_config

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
    from jobs.train_tokenizer import run
    from modeling.presets import load_config

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
        "job_seconds_median": round(statistics.median(r["job_seconds"] for r in runs), 1),
        "loss_last": runs[-1]["rows"][-1]["loss"],
        "peak_rss_mib_max": max((r["peak_rss_mib_max"] or 0.0) for r in runs) or None,
        "peak_rss_mib_per_worker_last_run": runs[-1]["peak_rss_mib_per_worker"],
    }


# --------------------------------------------------------------------------------------------- gpu
def gpu_peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--gpu-peak-tflops"
    for key, value in GPU_PEAK_BF16_TFLOPS.items():  # "H100 PCIe" before "H100": first match wins
        if key in name:
            return value, f"dense bf16 datasheet peak for {key}"
    return None, "unknown GPU: pass --gpu-peak-tflops"


def gpu_run(work: Path, *, steps: int, batch_size: int, peak_override: float | None) -> dict:
    """The probe loop on the phenaki-1.8b transformer, ZeRO-3, bf16, one GPU worker; MFU from the matmul
    FLOPs of `modeling.flops.maskgit_forward_flops` (x3 for forward + backward)."""
    import torch

    from modeling.flops import maskgit_forward_flops
    from modeling.presets import load_config

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


# --------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput job")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the step-time median")
    parser.add_argument("--probe-steps", type=int, default=4, help="steps per memory probe")
    parser.add_argument("--runs", type=int, default=1, help="throughput jobs per preset and worker count")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray started here")
    parser.add_argument("--gpu-steps", type=int, default=6)
    parser.add_argument("--gpu-batch", type=int, default=8, help="per-GPU batch (the 1.8B preset's is 8)")
    parser.add_argument(
        "--gpu-peak-tflops", type=float, default=None, help="dense bf16 peak, if not in the table"
    )
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--quick", action="store_true", help="debug presets, 3 steps, ZeRO-3 probe only")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="data and job outputs (rewritten)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.probe_steps, args.runs = 3, 1, 2, 1
    presets = ("debug",) if args.quick else ("debug", "demo")
    kinds = ("transformer",) if args.quick else ("transformer", "tokenizer")
    workers_list = (1, 2)
    job_stages = (2,) if args.quick else (1, 2, 3)  # ZeRO-2 on 2 workers: the throughput job's
    probe_stages = (3,) if args.quick else (1, 2, 3)
    work = Path(args.work)
    began, load_start = time.perf_counter(), os.getloadavg()
    phases: dict[str, float] = {}
    mark = [began]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - mark[0], 1)
        mark[0] = now
        print(f"[{now - began:6.1f} s] {name} done ({phases[name]} s)", flush=True)

    report: dict = {"machine": describe_machine()}
    report["estimates"] = estimates()
    phase("estimates")

    import ray

    from jobs.runtime import init_ray
    from modeling.presets import load_config

    data = make_data(work)
    phase("data")
    started_ray = not ray.is_initialized()
    init_ray(num_cpus=args.num_cpus)
    report["setup"] = {
        "quick": args.quick,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "probe_steps": args.probe_steps,
        "runs": args.runs,
        "ray_cpus": ray.cluster_resources().get("CPU"),
        "ray_started_here": started_ray,
        "data": {k: v for k, v in data.items() if k not in ("tokenizer", "token_cache", "clips")},
        "precision": "fp32",
        "throughput_zero_stage": 2,
    }
    phase("ray_start")
    outputs = work / "out"
    shutil.rmtree(outputs, ignore_errors=True)
    seq_len = int(np.prod(data["token_grid"]))
    frame_tokens = data["token_grid"][1] * data["token_grid"][2]
    try:
        report["memory"] = {"baseline": worker_baselines()}
        phase("baseline")

        # ---- throughput: the real jobs, interleaved over worker counts
        throughput: dict = {kind: {} for kind in kinds}
        jobs = {"transformer": transformer_job, "tokenizer": tokenizer_job}
        done: dict[tuple[str, int], dict] = {}  # (transformer preset, workers) -> its last ZeRO-2 job
        for kind in kinds:
            job = jobs[kind]
            for preset in presets:
                runs: dict[int, list[dict]] = {w: [] for w in workers_list}
                for run in range(args.runs):
                    for w in workers_list:
                        r = job(preset, data, outputs / f"{kind}-{preset}-w{w}-r{run}", steps=args.steps,
                                workers=w, zero_stage=2)  # fmt: skip
                        runs[w].append(r)
                        m = median_step(r["rows"], args.warmup)
                        print(f"{kind} {preset} workers {w} run {run}: median step {m['step_s_median']:.3f} s, "
                              f"job {r['job_seconds']:.1f} s", flush=True)  # fmt: skip
                section: dict = {}
                for w, rs in runs.items():
                    if kind == "transformer":
                        done[(preset, w)] = rs[-1]
                    if kind == "transformer":
                        per_step = rs[0]["batch_size"] * w
                        tokens = per_step * seq_len
                    else:
                        videos, images = rs[0]["batch_size"] * w, rs[0]["image_batch_size"] * w
                        per_step, tokens = videos + images, videos * seq_len + images * frame_tokens
                    section[str(w)] = throughput_entry(rs, warmup=args.warmup, workers=w,
                                                       samples_per_step=per_step, tokens_per_step=tokens)  # fmt: skip
                lo, hi = str(min(workers_list)), str(max(workers_list))
                section[f"scaling_{lo}_to_{hi}"] = round(
                    section[hi]["samples_per_s"] / section[lo]["samples_per_s"], 3
                )
                section["parameters"] = _parameters(kind, load_config(preset), data)
                throughput[kind][preset] = section
                phase(f"throughput_{kind}_{preset}")
        report["throughput"] = throughput

        # ---- memory: the real transformer job at each ZeRO stage on 2 workers (ZeRO-2: the throughput job)
        base = report["memory"]["baseline"]
        mem_preset = presets[-1]
        job_mem: dict = {"preset": mem_preset, "workers": 2, "steps": args.steps}
        psi = _parameters("transformer", load_config(mem_preset), data)
        for stage in job_stages:
            if stage == 2:
                r = done[(mem_preset, 2)]
            else:
                r = transformer_job(mem_preset, data, outputs / f"memory-zero{stage}", steps=args.steps,
                                    workers=2, zero_stage=stage)  # fmt: skip
            peak = r["peak_rss_mib_max"]
            job_mem[f"zero{stage}"] = {
                "peak_rss_mib_per_worker": r["peak_rss_mib_per_worker"],
                "peak_rss_mib_max": peak,
                "over_idle_worker_mib": round(peak - base["idle_worker_rss_mib"], 1) if peak else None,
                "over_loaded_worker_mib": round(peak - base["loaded_worker_rss_mib"], 1) if peak else None,
                "expected_model_states_mib": _mib(expected_fp32_bytes(psi, 2, stage)),
                "job_seconds": round(r["job_seconds"], 1),
                "step_s_median": round(median_step(r["rows"], args.warmup)["step_s_median"], 4),
            }
            print(f"memory job zero{stage}: peak RSS {peak} MiB per worker max", flush=True)
        report["memory"]["job"] = job_mem
        phase("memory_jobs")

        # ---- memory: what DeepSpeed holds per rank (probe loop), demo model and a wider one
        probe: dict = {}
        text_len = data["text_length"]
        if args.quick:  # the debug model on one worker: the loop's code path, cheaply
            probe_workers, models = 1, {"debug": (_probe_model(load_config("debug"), data, {}), 4)}
        else:  # demo's shape widened until its model states stand out of the framework's RSS
            probe_workers, models = 2, {"demo-wide": (_probe_model(load_config("demo"), data, WIDE), 4)}
        for name, (mg_cfg, batch) in models.items():
            entry: dict = {
                "model": {k: getattr(mg_cfg, k) for k in ("dim", "depth", "heads", "mlp_dim", "seq_len")},
                "batch_size": batch,
                "workers": probe_workers,
                "steps": args.probe_steps,
            }
            for stage in probe_stages:
                ranks, watch = run_probe(outputs / f"probe-{name}-zero{stage}", mg_cfg, zero_stage=stage,
                                         workers=probe_workers, steps=args.probe_steps, batch_size=batch,
                                         text_len=text_len)  # fmt: skip
                entry["parameters"] = ranks[0]["parameters"]
                entry[f"zero{stage}"] = {
                    "deepspeed_mib_per_rank": [_mib(r["deepspeed_bytes"]) for r in ranks],
                    "expected_mib_per_rank": _mib(
                        expected_fp32_bytes(entry["parameters"], probe_workers, stage)
                    ),
                    "rss_mib_per_rank": [r["rss_mib"] for r in ranks],
                    # the peak over the worker's RSS before the model was built: weights, DeepSpeed's copies and
                    # buffers, gradients, activations
                    "peak_over_start_mib_per_rank": [
                        round(r["rss_mib"]["peak_vmhwm"] - r["rss_mib"]["start"], 1) for r in ranks
                    ],
                    "peak_rss_mib_seen_from_outside": watch["peak_rss_mib_per_worker"],
                    "step_s_median": round(
                        statistics.median(s for r in ranks for s in (r["step_s"][1:] or r["step_s"])), 4
                    ),
                }
                print(
                    f"probe {name} zero{stage}: {entry[f'zero{stage}']['deepspeed_mib_per_rank'][0]}",
                    flush=True,
                )
            probe[name] = entry
        report["memory"]["probe"] = probe
        phase("memory_probe")

        report["gpu"] = (
            {"skipped": "--skip-gpu"}
            if args.skip_gpu
            else gpu_run(
                outputs, steps=args.gpu_steps, batch_size=args.gpu_batch, peak_override=args.gpu_peak_tflops
            )
        )
        phase("gpu")
    finally:
        if started_ray:
            ray.shutdown()

    report["setup"]["load_average_start"] = [round(x, 2) for x in load_start]
    report["setup"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["setup"]["benchmark_seconds"] = round(time.perf_counter() - began, 1)
    report["setup"]["phase_seconds"] = phases
    report["notes"] = notes(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(report), flush=True)
    return 0


def _mib(values: dict[str, int]) -> dict[str, float]:
    out = {k: round(v / MIB, 2) for k, v in values.items()}
    out["total"] = round(sum(values.values()) / MIB, 2)
    return out


def _probe_model(config: dict, data: dict, widen: dict):
    from modeling.maskgit import MaskGITConfig
    from modeling.presets import build_dataclass

    t, h, w = data["token_grid"]
    return build_dataclass(MaskGITConfig, {**config["transformer"], **widen, "codebook_size": 64, "seq_len": t * h * w,
                                           "tokens_per_frame": h * w, "text_dim": data["text_dim"]})  # fmt: skip


def _parameters(kind: str, config: dict, data: dict) -> int:
    from modeling.flops import count_parameters
    from modeling.maskgit import MaskGIT
    from modeling.tokenizers import tokenizer_config_from

    if kind == "transformer":
        return count_parameters(MaskGIT, _probe_model(config, data, {}))
    family, tok_cfg = tokenizer_config_from(config["tokenizer"])
    return count_parameters(family.model_cls, tok_cfg)


def notes(report: dict) -> list[str]:
    out = []
    est = report["estimates"]
    one = est["setups"]["1x1"]
    out.append(
        f"{est['preset']}: {est['transformer_parameters'] / 1e9:.3f}B transformer parameters, largest layer "
        f"{est['largest_layer']['module']} ({est['largest_layer']['parameters'] / 1e6:.1f}M). On one GPU the "
        f"model states alone take {one['formula_gib_per_rank']['zero3']:.1f} GiB by the formula (16 bytes per "
        f"parameter), DeepSpeed says {one['deepspeed']['zero3']['no_offload']['zero_init']['gpu_gib_per_gpu']:.1f} "
        "GiB (18 bytes + the largest layer); activations come on top."
    )
    out.append(
        "DeepSpeed's estimators count 18 bytes per parameter where the ZeRO paper counts 14 (ZeRO-2, partitioned) "
        "or 16 (ZeRO-3): they add an fp32 gradient partition; ZeRO-3 adds 4 bytes x the largest layer (its gather "
        "buffer). `build_engine` builds the whole model in every worker before DeepSpeed partitions it (no "
        "deepspeed.zero.Init), so for host memory the ZeRO-3 `no_zero_init` CPU figures apply."
    )
    for kind, presets in report["throughput"].items():
        for preset, s in presets.items():
            w1, w2 = s["1"], s["2"]
            out.append(
                f"{kind} {preset} ({s['parameters'] / 1e6:.2f}M params): {w1['samples_per_s']:.1f} samples/s on 1 "
                f"worker, {w2['samples_per_s']:.1f} on 2 (x{s['scaling_1_to_2']:.2f}); median step "
                f"{w1['step_s_median'] * 1000:.0f} / {w2['step_s_median'] * 1000:.0f} ms for {w1['samples_per_step']} / "
                f"{w2['samples_per_step']} samples."
            )
    out.append(
        "1 -> 2 workers on 2 cores: one worker gets 2 torch threads, two get 1 each (setup_worker), so the ideal "
        "scaling is below 2 by whatever a second thread gave one worker, plus the gradient all-reduce (gloo)."
    )
    mem = report["memory"]
    base = mem["baseline"]
    out.append(
        f"An idle Ray worker is {base['idle_worker_rss_mib']:.0f} MiB RSS, {base['loaded_worker_rss_mib']:.0f} MiB "
        "after importing torch, DeepSpeed and Ray Train: most of a CPU training worker's RSS is this floor, and the "
        "small presets' model states (a few MiB) vanish in it; RSS also counts shared library pages."
    )
    for name, p in mem.get("probe", {}).items():
        stages = [k for k in p if k.startswith("zero")]
        held = ", ".join(f"{k} {p[k]['deepspeed_mib_per_rank'][0]['total']:.1f}" for k in stages)
        grew = ", ".join(f"{k} {max(p[k]['peak_over_start_mib_per_rank']):.0f}" for k in stages)
        out.append(
            f"probe {name} ({p['parameters'] / 1e6:.2f}M params, {p['workers']} rank(s)): DeepSpeed holds per rank "
            f"(MiB) {held}; peak RSS over the worker's RSS before the model was built (MiB) {grew}."
        )
    if "skipped" in report["gpu"] or "error" in report["gpu"]:
        out.append(f"GPU part: {report['gpu'].get('skipped') or report['gpu'].get('error')}.")
    return out


def table(report: dict) -> str:
    lines = [
        f"{'job':<12} {'preset':<7} {'workers':>7} {'step ms':>8} {'samples/s':>10} {'tokens/s':>10} {'RSS MiB':>8}"
    ]
    for kind, presets in report["throughput"].items():
        for preset, s in presets.items():
            for w in ("1", "2"):
                e = s[w]
                lines.append(
                    f"{kind:<12} {preset:<7} {w:>7} {e['step_s_median'] * 1000:>8.1f} {e['samples_per_s']:>10.1f} "
                    f"{e['tokens_per_s']:>10.0f} {e['peak_rss_mib_max'] or float('nan'):>8.0f}"
                )
    lines.append(
        "ZeRO estimates at "
        + report["estimates"]["preset"]
        + " (GiB per rank, formula / DeepSpeed, no offload):"
    )
    for setup, s in report["estimates"]["setups"].items():
        f, ds = s["formula_gib_per_rank"], s["deepspeed"]
        lines.append(
            f"  {setup}: ZeRO-1 {f['zero1']:.1f}, ZeRO-2 {f['zero2']:.1f} / {ds['zero2']['no_offload']['gpu_gib_per_gpu']:.1f}, "
            f"ZeRO-3 {f['zero3']:.1f} / {ds['zero3']['no_offload']['zero_init']['gpu_gib_per_gpu']:.1f}"
        )
    for stage, m in report["memory"]["job"].items():
        if stage.startswith("zero"):
            lines.append(f"memory job {stage}: peak RSS {m['peak_rss_mib_max']} MiB, +{m['over_loaded_worker_mib']} "
                         "over a loaded idle worker")  # fmt: skip
    lines.extend(report["notes"][-3:])
    lines.append(f"{report['setup']['benchmark_seconds']} s in all")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
