"""Prepare and tokenize throughput against the decode-only limit, 1 -> 2 worker scaling, peak memory per worker.

    python -m benchmarks.prepare_throughput --videos 300 --web-videos 60 --runs 3

Two corpora, made once under --work and reused by later runs with the same settings:
  synthetic  `pipelines.synth` mp4s (64x64, 24 frames at 8 fps) in a WebVid CSV, prepared as the demo preset
             does (size 32, 9 frames at 8 fps);
  web_like   longer, larger H.264 videos (320x240, 10 s at 24 fps, crf 23: a panning noise texture under a
             drifting colour gradient plus sensor noise, so x264 cannot squeeze them to nothing) in a WebVid
             CSV, prepared as the cvivit-paper preset does (size 128, 11 frames at 8 fps).

Per corpus and worker count (1 and 2), in the same run on the same cores:
  decode-only  a spawn `multiprocessing.Pool` of that many processes, warmed up, reads each file and makes
               the `decode_video(data, fps=, max_frames=, start_sec=0)` call that decodes the frames prepare
               keeps, at the source size -> clips/s; once at nice 0 and once at the niceness Ray gives its
               workers (15), which matters only when other work shares the machine;
  prepare      `pipelines.prepare.prepare` into a fresh directory with `num_workers` = that many, on a local
               Ray started once (`init_ray(num_cpus=2)` unless one is already connected; it is shut down
               only if it was started here): Ray Data scheduling, fetch, probe, decode with resize in the
               decoder's scaler, H.264 re-encode (or with --video-format npy none) and tar write, all
               included -> clips/s, and the shards' bytes per clip.
The report gives prepare / decode-only per worker count (the goal is >= 0.7), the 1 -> 2 scaling of both,
and one record's cost split in-process (fetch, probe, decode, resize, encode, tar write), so a ratio below
the goal comes with where the time goes. Then `pipelines.tokenize.tokenize` over the synthetic clips with
the debug tokenizer (`write_debug_checkpoint`) and a randomly initialised demo-sized C-ViViT, both with the
bundled MiniLM text encoder -> clips/s end to end (actor start included) and per clip in-process.

Peak memory: the RSS high-water mark of each Ray worker process that ran a prepare task / tokenize actor
(polled from a background thread, and the kernel's VmHWM after resetting it through clear_refs at the start
of the phase) and of each decode-only process (getrusage). RSS counts shared library pages too.

Medians over --runs; every prepare and tokenize run writes a fresh directory, so nothing is resumed.
Writes benchmarks/results/prepare_throughput.json with the machine described. The figures are wall times:
run it alone on the machine. --quick (a few tiny videos, one run, debug tokenizer only) is the smoke test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

# Kept light on purpose: the decode-only processes import benchmarks.prepare_measure; Ray, torch and the
# pipelines that pull them in are imported inside the functions that need them.
from benchmarks.machine import describe_machine, measured_on
from benchmarks.prepare_corpora import (  # noqa: F401  (re-exported: callers use prepare_throughput.<name>)
    listed_paths,
    make_synthetic,
    make_web_like,
    web_like_frames,
)
from benchmarks.prepare_measure import (  # noqa: F401  (re-exported)
    MIB,
    RAY_WORKER_NICENESS,
    WorkerWatch,
    decode_only_run,
    demo_tokenizer_checkpoint,
    prepare_config,
    prepare_run,
    record_breakdown,
    tokenize_breakdown,
    tokenize_run,
)

DEFAULT_OUT = Path(__file__).parent / "results" / "prepare_throughput.json"
DEFAULT_WORK = Path("/tmp/prepare-throughput-bench")
GOAL_RATIO = 0.7


# --------------------------------------------------------------------------------------------- driver
def median_of(runs: list[dict], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in runs)


def summarise(runs: list[dict], extra_keys: tuple[str, ...] = ()) -> dict:
    seconds = median_of(runs)
    clips = runs[0]["clips"]
    out = {
        "clips": clips,
        "seconds": [round(r["seconds"], 3) for r in runs],
        "seconds_median": round(seconds, 3),
        "clips_per_s": round(clips / seconds, 2),
    }
    for k in extra_keys:
        out[k] = runs[-1][k]
    return out


def cpu_median(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r["cpu_s"][k] for r in runs), 3) for k in runs[0]["cpu_s"]}


def peak_over_runs(runs: list[dict], key: str) -> float | None:
    values = [v for r in runs for v in r[key].values()]
    return max(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=300, help="synthetic videos (pipelines.synth)")
    parser.add_argument("--web-videos", type=int, default=60, help="web-like videos (320x240, 10 s, 24 fps)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker / process counts")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray started here")
    parser.add_argument("--shards", type=int, default=8, help="shards per corpus (balanced over the workers)")
    parser.add_argument("--breakdown-records", type=int, default=24)
    parser.add_argument(
        "--video-format", choices=("mp4", "npy"), default="mp4",
        help="how prepare stores video clips (PrepareConfig.video_format): H.264 mp4, or raw frames.npy",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="a few tiny videos, one run, debug tokenizer only"
    )
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="corpora (reused) and outputs")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.web_videos, args.runs, args.shards, args.breakdown_records = 8, 4, 1, 2, 4
    web = {"width": 160, "height": 120, "seconds": 3.0, "fps": 24.0} if args.quick else \
        {"width": 320, "height": 240, "seconds": 10.0, "fps": 24.0}  # fmt: skip
    work = Path(args.work)
    began, load_start = time.perf_counter(), os.getloadavg()
    phases: dict[str, float] = {}
    mark = [began]

    def phase(name: str) -> None:  # wall time of each part of the benchmark itself, for planning reruns
        now = time.perf_counter()
        phases[name] = round(now - mark[0], 1)
        mark[0] = now
        print(f"[{now - began:6.1f} s] {name} done ({phases[name]} s)", flush=True)

    import ray

    from jobs.runtime import init_ray

    corpora = {
        "synthetic": make_synthetic(work / "corpus" / "synthetic", args.videos),
        "web_like": make_web_like(work / "corpus" / "web_like", args.web_videos, processes=2, **web),
    }
    presets = {"synthetic": "demo", "web_like": "cvivit-paper"}
    phase("corpora")
    started_ray = not ray.is_initialized()
    init_ray(num_cpus=args.num_cpus)
    phase("ray_start")
    outputs = work / "out"
    shutil.rmtree(outputs, ignore_errors=True)
    report: dict = {
        "date": measured_on(),
        "machine": describe_machine(),
        "setup": {
            "quick": args.quick,
            "runs": args.runs,
            "workers": args.workers,
            "ray_cpus": ray.cluster_resources().get("CPU"),
            "ray_started_here": started_ray,
            "shards_per_corpus": args.shards,
            "goal_ratio": GOAL_RATIO,
            "corpora": corpora,
            "presets": presets,
            "video_format": args.video_format,
        },
        "prepare": {},
        "tokenize": {},
    }
    try:
        # Ray workers start and import the pipeline once, here: not part of any timed run.
        cfg = prepare_config("demo", samples_per_shard=2, num_workers=max(args.workers))
        outputs.mkdir(parents=True)
        synthetic_csv = Path(corpora["synthetic"]["webvid_csv"])
        rows = synthetic_csv.read_text().splitlines(keepends=True)
        (outputs / "warmup.csv").write_text("".join(rows[: 1 + 2 * max(args.workers)]))
        # the warm-up listing sits in outputs/ but names the corpus's videos: allow their folder by name
        cfg = dataclasses.replace(cfg, fetch=cfg.fetch.with_roots([str(synthetic_csv.parent.resolve())]))
        prepare_run(str(outputs / "warmup.csv"), outputs / "warmup", cfg)
        phase("warmup")
        for name, corpus in corpora.items():
            per_shard = math.ceil(corpus["params"]["num_videos"] / args.shards)
            paths = listed_paths(corpus["webvid_csv"])
            section: dict = {"preset": presets[name], "records": len(paths), "samples_per_shard": per_shard}
            decode_runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            nice_runs: dict[int, list[dict]] = {w: [] for w in args.workers}  # at Ray's worker niceness
            prep_runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            for run in range(args.runs):
                for w in args.workers:  # interleaved, so drifting machine load hits both alike
                    cfg = prepare_config(
                        presets[name],
                        samples_per_shard=per_shard,
                        num_workers=w,
                        video_format=args.video_format,
                    )
                    decode_runs[w].append(decode_only_run(paths, cfg.fps, cfg.num_frames, w))
                    nice_runs[w].append(
                        decode_only_run(paths, cfg.fps, cfg.num_frames, w, niceness=RAY_WORKER_NICENESS)
                    )
                    prep_runs[w].append(
                        prepare_run(corpus["webvid_csv"], outputs / f"{name}-w{w}-r{run}", cfg)
                    )
                    print(
                        f"{name} run {run} workers {w}: decode-only {decode_runs[w][-1]['seconds']:.2f} s "
                        f"(at nice {RAY_WORKER_NICENESS}: {nice_runs[w][-1]['seconds']:.2f} s), "
                        f"prepare {prep_runs[w][-1]['seconds']:.2f} s",
                        flush=True,
                    )
            section["config"] = {
                k: getattr(cfg, k)
                for k in (
                    "size",
                    "num_frames",
                    "fps",
                    "video_format",
                    "crf",
                    "x264_preset",
                    "samples_per_shard",
                )
            }
            section["decode_only"] = {
                str(w): {**summarise(r), "frames": r[0]["frames"],
                         "peak_rss_mib_max": peak_over_runs(r, "peak_rss_mib_per_process"),
                         "peak_rss_mib_per_process_last_run": r[-1]["peak_rss_mib_per_process"]}
                for w, r in decode_runs.items()
            }  # fmt: skip
            section["prepare"] = {
                str(w): {**summarise(r, ("shards", "worker_titles", "shard_bytes_per_clip")),
                         "peak_rss_mib_max": max((x["peak_rss_mib_max"] or 0.0) for x in r) or None,
                         "peak_rss_mib_per_worker_last_run": r[-1]["peak_rss_mib_per_worker"],
                         "cpu_s_median": cpu_median(r),
                         "mean_busy_workers_median": statistics.median(x["mean_busy_workers"] or 0.0 for x in r)}
                for w, r in prep_runs.items()
            }  # fmt: skip
            section["ratio_prepare_over_decode_only"] = {
                str(w): round(
                    section["prepare"][str(w)]["clips_per_s"] / section["decode_only"][str(w)]["clips_per_s"],
                    3,
                )
                for w in args.workers
            }
            # the same decode-only pool at the niceness Ray gives its workers (see RAY_WORKER_NICENESS)
            section["decode_only_at_ray_niceness"] = {
                str(w): {**summarise(r), "niceness": RAY_WORKER_NICENESS} for w, r in nice_runs.items()
            }
            section["ratio_prepare_over_decode_only_at_ray_niceness"] = {
                str(w): round(
                    section["prepare"][str(w)]["clips_per_s"]
                    / section["decode_only_at_ray_niceness"][str(w)]["clips_per_s"],
                    3,
                )
                for w in args.workers
            }
            section["meets_goal"] = {
                w: r >= GOAL_RATIO for w, r in section["ratio_prepare_over_decode_only"].items()
            }
            if len(args.workers) > 1:
                lo, hi = str(min(args.workers)), str(max(args.workers))
                section[f"scaling_{lo}_to_{hi}"] = {
                    kind: round(section[kind][hi]["clips_per_s"] / section[kind][lo]["clips_per_s"], 3)
                    for kind in ("decode_only", "prepare")
                }
            section["breakdown_in_process"] = record_breakdown(
                corpus["webvid_csv"], cfg, args.breakdown_records, outputs
            )
            # Work the pipeline must do (in-process per-record time) over the workers vs the measured wall.
            for w in args.workers:
                work_s = section["breakdown_in_process"]["record_samples_ms"] / 1000 * len(paths) / w
                section["prepare"][str(w)]["in_process_work_s_per_worker"] = round(work_s, 3)
                section["prepare"][str(w)]["other_s"] = round(
                    section["prepare"][str(w)]["seconds_median"] - work_s, 3
                )
            report["prepare"][name] = section
            phase(f"prepare_{name}")

        clips = outputs / f"synthetic-w{max(args.workers)}-r{args.runs - 1}"
        from jobs.config import load_config
        from modeling.generation import write_debug_checkpoint
        from pipelines.tokenize import TokenizeConfig

        demo = load_config("demo")
        tok_cfg = TokenizeConfig(text_encoder=demo["text_encoder"]["name"],
                                 max_text_length=int(demo["text_encoder"]["max_length"]), num_workers=1)  # fmt: skip
        checkpoints = {"debug": write_debug_checkpoint(work / "ckpt" / "debug") / "tokenizer"}
        if not args.quick:
            checkpoints["demo_random"] = demo_tokenizer_checkpoint(work / "ckpt" / "demo")
        for name, ckpt in checkpoints.items():
            runs = []
            for run in range(args.runs):
                runs.append(tokenize_run(ckpt, clips, outputs / f"tokens-{name}-r{run}", tok_cfg))
                print(f"tokenize {name} run {run}: {runs[-1]['seconds']:.2f} s", flush=True)
            entry = {**summarise(runs, ("worker_titles",)),
                     "actors": tok_cfg.num_workers,
                     "peak_rss_mib_max": max((x["peak_rss_mib_max"] or 0.0) for x in runs) or None,
                     "peak_rss_mib_per_worker_last_run": runs[-1]["peak_rss_mib_per_worker"],
                     "cpu_s_median": cpu_median(runs),
                     "breakdown_in_process": tokenize_breakdown(ckpt, clips, tok_cfg, 8 if args.quick else 64)}  # fmt: skip
            # End to end vs the in-process rate: the difference is actor start (torch, model and MiniLM load),
            # Ray Data scheduling and the shard read / write.
            entry["steady_state_seconds"] = round(
                entry["clips"] / entry["breakdown_in_process"]["clips_per_s_one_thread"], 3
            )
            report["tokenize"][name] = entry
            phase(f"tokenize_{name}")
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


def notes(report: dict) -> list[str]:
    out = []
    for name, s in report["prepare"].items():
        b = s["breakdown_in_process"]
        top = max(b["share"], key=b["share"].get)
        ratios = ", ".join(f"{w} worker(s) {r:.2f}" for w, r in s["ratio_prepare_over_decode_only"].items())
        nice = ", ".join(
            f"{w} worker(s) {r:.2f}" for w, r in s["ratio_prepare_over_decode_only_at_ray_niceness"].items()
        )
        out.append(
            f"{name}: prepare / decode-only = {ratios} (goal {GOAL_RATIO}); in-process the largest stage is {top} "
            f"({b['share'][top]:.0%} of {b['per_record_ms']['total']:.1f} ms/record; encode {b['share']['encode']:.0%}, "
            f"decode {b['share']['decode']:.0%}), so without Ray or tar costs the ratio could reach at most "
            f"{b['ratio_ceiling']:.2f}. Against decode-only processes at the niceness Ray gives its workers "
            f"({RAY_WORKER_NICENESS}, which matters only on a machine shared with other work): {nice}."
        )
        for w, p in s["prepare"].items():
            cpu = p["cpu_s_median"]
            out.append(
                f"{name}, {w} worker(s): {p['seconds_median']:.2f} s wall, in-process work {p['in_process_work_s_per_worker']:.2f} s "
                f"per worker; on average {p['mean_busy_workers_median']:.2f} tasks ran at once; CPU s: workers "
                f"{cpu['busy_workers']:.2f}, driver {cpu['driver']:.2f}, other Ray processes {cpu['other_ray']:.2f}."
            )
    for name, t in report["tokenize"].items():
        out.append(
            f"tokenize {name}: {t['clips_per_s']:.1f} clips/s end to end ({t['seconds_median']:.1f} s for {t['clips']} "
            f"clips) vs {t['breakdown_in_process']['clips_per_s_one_thread']:.1f} clips/s in-process on one thread: "
            "the rest is actor start (torch, checkpoint, MiniLM), Ray Data scheduling and shard I/O."
        )
    out.append(
        "Peak RSS includes shared library pages (torch, Ray, PyAV), so it overstates each worker's own memory."
    )
    return out


def table(report: dict) -> str:
    lines = [
        f"{'corpus':<10} {'workers':>7} {'decode-only clips/s':>20} {'prepare clips/s':>16} {'ratio':>6} "
        f"{'busy':>5} {'prep RSS MiB':>12} {'dec RSS MiB':>11}"
    ]
    for name, s in report["prepare"].items():
        for w, r in s["ratio_prepare_over_decode_only"].items():
            d, p = s["decode_only"][w], s["prepare"][w]
            lines.append(
                f"{name:<10} {w:>7} {d['clips_per_s']:>20.1f} {p['clips_per_s']:>16.1f} {r:>6.2f} "
                f"{p['mean_busy_workers_median']:>5.2f} "
                f"{p['peak_rss_mib_max'] or float('nan'):>12.0f} {d['peak_rss_mib_max'] or float('nan'):>11.0f}"
            )
        nice = s["ratio_prepare_over_decode_only_at_ray_niceness"]
        lines.append(
            f"{name:<10} ratio against decode-only at Ray's worker niceness: "
            + ", ".join(f"{w} worker(s) {r:.2f}" for w, r in nice.items())
        )
        for key, v in s.items():
            if key.startswith("scaling_"):
                lines.append(
                    f"{name:<10} {key}: decode-only x{v['decode_only']:.2f}, prepare x{v['prepare']:.2f}"
                )
        b = s["breakdown_in_process"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in b["per_record_ms"].items())
        lines.append(
            f"{name:<10} ms/record in-process: {parts} (decode share = ratio ceiling {b['ratio_ceiling']:.2f})"
        )
    for name, t in report["tokenize"].items():
        b = t["breakdown_in_process"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in b["per_clip_ms"].items())
        lines.append(
            f"tokenize {name}: {t['clips_per_s']:.1f} clips/s end to end, {b['clips_per_s_one_thread']:.1f} in-process; "
            f"ms/clip {parts}; peak RSS {t['peak_rss_mib_max'] or float('nan'):.0f} MiB"
        )
    lines.append(
        f"load average start {report['setup']['load_average_start']}, end {report['setup']['load_average_end']}; "
        f"{report['setup']['benchmark_seconds']} s in all"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
