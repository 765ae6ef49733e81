"""ZeRO model-state estimates and memory probes for `benchmarks.training`.

The estimates (DeepSpeed's estimators next to the ZeRO paper's formulas), the peak RSS of a job's Ray Train
workers (`TrainWorkerWatch`), an idle / loaded Ray worker's RSS (`worker_baselines`) and the fp32 formula
the probe loop's figures are held against (`expected_fp32_bytes`).
"""

from __future__ import annotations

import os
import threading
import time

from benchmarks.process_memory import descendants, process_title, status_kib

GIB, MIB = 2**30, 2**20
ESTIMATE_PRESET = "phenaki-1.8b"
ESTIMATE_SETUPS = ((1, 1), (1, 8), (8, 8))  # (nodes, GPUs per node); 8x8 = the preset's 64 workers
WORKER_MARKER = "RayTrainWorker"  # Ray Train V2's worker actor class (process title ray::RayTrainWorker...)


# --------------------------------------------------------------------------------------------- estimates
def maskgit_config(config: dict):
    """The MaskGIT a preset builds, sized as `jobs.describe` sizes it (tokenizer grid, text width)."""
    from jobs.describe import text_width
    from modeling.maskgit import MaskGITConfig
    from modeling.tokenizers import tokenizer_config_from
    from modeling.typed_config import build_dataclass

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

    from jobs.config import load_config
    from jobs.describe import describe
    from modeling.maskgit import MaskGIT

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


# --------------------------------------------------------------------------------------------- memory
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

        titled = {p.pid: p for p in descendants() if self.marker in process_title(p)}
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
                hwm = (status_kib(p.pid, "VmHWM") or 0) * 1024
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
                "hwm": (status_kib(os.getpid(), "VmHWM") or 0) / 1024,
            }

        def load(self) -> dict:
            import deepspeed  # noqa: F401
            import ray.train.torch  # noqa: F401
            import torch  # noqa: F401

            import jobs.training.common  # noqa: F401
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
        "loaded_imports": "torch, deepspeed, ray.train.torch, jobs.training.common, modeling.maskgit",
    }


def expected_fp32_bytes(psi: int, ranks: int, stage: int) -> dict[str, int]:
    """fp32 training under DeepSpeed ZeRO, per rank: the module's weights (ZeRO-3: a 1/N partition), the
    fp32 master partition (4Ψ/N: a copy even when the weights are fp32; on CPU ZeRO-3 copies too) and Adam's
    two moments (8Ψ/N). Gradients (4Ψ, reduced into 4Ψ/N partitions) and buckets are transient."""
    return {
        "module_parameters": 4 * psi // (ranks if stage == 3 else 1),
        "master_partition": 4 * psi // ranks,
        "optimizer_state": 8 * psi // ranks,
    }
