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
            kernel's VmHWM) and its excess over those two baselines. Then a probe loop
            (`training_runs.probe_loop`: `jobs.training.common.build_engine` on a MaskGIT, --probe-steps MVTM steps on random
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
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine, measured_on
from benchmarks.training_memory import (  # noqa: F401  (re-exported: tests and callers use training.<name>)
    ESTIMATE_PRESET,
    ESTIMATE_SETUPS,
    GIB,
    MIB,
    WORKER_MARKER,
    TrainWorkerWatch,
    deepspeed_estimates,
    estimates,
    expected_fp32_bytes,
    formula_bytes,
    largest_layer,
    maskgit_config,
    worker_baselines,
)
from benchmarks.training_runs import (  # noqa: F401  (re-exported)
    GPU_PEAK_BF16_TFLOPS,
    deepspeed_bytes,
    gpu_peak_tflops,
    gpu_run,
    make_data,
    median_step,
    moving_square,
    probe_loop,
    read_metrics,
    run_probe,
    throughput_entry,
    tokenizer_job,
    train_overrides,
    transformer_job,
    write_clip_shards,
    write_token_cache,
)

DEFAULT_OUT = Path(__file__).parent / "results" / "training.json"
DEFAULT_WORK = Path("/tmp/training-bench")
WIDE = {"dim": 512, "depth": 8, "heads": 8, "mlp_dim": 2048}  # the "demo-wide" probe model


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

    report: dict = {"date": measured_on(), "machine": describe_machine()}
    report["estimates"] = estimates()
    phase("estimates")

    import ray

    from jobs.config import load_config
    from jobs.runtime import init_ray

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
    from modeling.typed_config import build_dataclass

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
        "buffer). Under ZeRO-3 `build_engine` builds the model inside deepspeed.zero.Init (partitioned as it is "
        "built), so for host memory the ZeRO-3 `zero_init` CPU figures apply."
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
