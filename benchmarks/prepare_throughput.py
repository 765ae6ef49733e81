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
               exactly the `decode_video(data, fps=, max_frames=, start_sec=0)` call prepare makes -> clips/s;
  prepare      `pipelines.prepare.prepare` into a fresh directory with `num_workers` = that many, on a local
               Ray started once (`init_ray(num_cpus=2)` unless one is already connected; it is shut down
               only if it was started here): Ray Data scheduling, fetch, probe, decode, resize, H.264
               re-encode and tar write, all included -> clips/s.
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
import csv
import json
import math
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

# Kept light on purpose: the decode-only processes import this module; Ray, torch and the pipelines that
# pull them in are imported inside the functions that need them.
from benchmarks.machine import describe_machine
from pipelines.media import decode_video, encode_mp4

DEFAULT_OUT = Path(__file__).parent / "results" / "prepare_throughput.json"
DEFAULT_WORK = Path("/tmp/prepare-throughput-bench")
GOAL_RATIO = 0.7
MIB = 2**20


# --------------------------------------------------------------------------------------------- corpora
def web_like_frames(index: int, *, width: int, height: int, seconds: float, fps: float) -> np.ndarray:
    """(T, H, W, 3) uint8: a camera panning over a noise texture, a drifting colour gradient, sensor noise."""
    rng = np.random.default_rng([20240, index])
    n = round(seconds * fps)
    vx, vy = rng.uniform(0.5, 1.5), rng.uniform(0.0, 0.6)  # pixels per frame
    tex_w, tex_h = width + math.ceil(vx * n) + 2, height + math.ceil(vy * n) + 2
    # Texture: coarse blobs (bicubic-upsampled low-res noise) plus fine grain.
    from PIL import Image

    coarse = rng.integers(0, 256, (max(2, tex_h // 12), max(2, tex_w // 12), 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((tex_w, tex_h), Image.Resampling.BICUBIC), np.float32)
    texture += rng.normal(0.0, 10.0, texture.shape).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = rng.uniform(0.01, 0.04, 3).astype(np.float32)
    speed = rng.uniform(0.05, 0.2, 3).astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        ox, oy = int(t * vx), int(t * vy)
        frame = 0.6 * texture[oy : oy + height, ox : ox + width]
        for c in range(3):
            frame[..., c] += 50.0 * np.sin(freq[c] * (xx + 0.7 * yy) + speed[c] * t) + 50.0
        frame += rng.normal(0.0, 3.0, frame.shape).astype(np.float32)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _write_web_like(task: tuple[int, str, int, int, float, float]) -> tuple[int, str, int]:
    index, path, width, height, seconds, fps = task
    frames = web_like_frames(index, width=width, height=height, seconds=seconds, fps=fps)
    data = encode_mp4(frames, fps, crf=23)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return index, path, len(data)


def make_web_like(
    root: Path, num: int, *, width: int, height: int, seconds: float, fps: float, processes: int
) -> dict:
    """`num` web-like mp4s under root/videos and root/webvid.csv; reused when root/corpus.json matches."""
    from pipelines.synth import WEBVID_COLUMNS, iso_duration

    params = {"num_videos": num, "width": width, "height": height, "seconds": seconds, "fps": fps, "crf": 23}
    marker = root / "corpus.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "videos").mkdir(parents=True)
    tasks = [
        (i, str(root / "videos" / f"{2_000_000 + i}.mp4"), width, height, seconds, fps) for i in range(num)
    ]
    start = time.perf_counter()
    if processes > 1 and num > 4:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            written = pool.map(_write_web_like, tasks, chunksize=1)
    else:
        written = [_write_web_like(t) for t in tasks]
    with (root / "webvid.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(WEBVID_COLUMNS)
        for i, path, _ in sorted(written):
            writer.writerow(
                [
                    2_000_000 + i,
                    Path(path).as_uri(),
                    iso_duration(seconds),
                    "000001_000050",
                    f"a web-like test video number {i} panning over a textured scene",
                ]
            )
    sizes = [n for _, _, n in written]
    info = {
        "params": params,
        "webvid_csv": str(root / "webvid.csv"),
        "mean_file_kib": round(statistics.mean(sizes) / 1024, 1),
        "mean_kbit_per_s": round(statistics.mean(sizes) * 8 / 1000 / seconds, 1),
        "made_in_s": round(time.perf_counter() - start, 1),
    }
    marker.write_text(json.dumps(info, indent=2))
    return info


def make_synthetic(root: Path, num: int) -> dict:
    from pipelines.synth import synthesize

    params = {"num_videos": num, "num_images": 0, "seed": 0}
    marker = root / "corpus.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    summary = synthesize(root, num_videos=num, num_images=0, seed=0)
    sizes = [p.stat().st_size for p in summary.videos_dir.glob("*.mp4")]
    info = {
        "params": {**params},
        "webvid_csv": str(summary.webvid_csv),
        "video": "64x64, 24 frames at 8 fps (pipelines.synth defaults)",
        "mean_file_kib": round(statistics.mean(sizes) / 1024, 1),
        "made_in_s": round(time.perf_counter() - start, 1),
    }
    marker.write_text(json.dumps(info, indent=2))
    return info


def listed_paths(webvid_csv: str) -> list[str]:
    """The local files a WebVid CSV lists (its contentUrl column, file:// URIs)."""
    with open(webvid_csv, newline="") as f:
        return [unquote(urlsplit(row["contentUrl"]).path) for row in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------- memory
def _vm_hwm_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class WorkerWatch:
    """Peak RSS of this process's descendants whose title names `marker` (Ray sets `ray::<task or actor>`),
    and the CPU seconds this process, those workers and the other descendants (raylet, GCS, idle workers)
    use meanwhile.

    Ray workers outlive a phase (idle ones are reused), so on entry each existing descendant's kernel
    high-water mark is reset (`echo 5 > /proc/PID/clear_refs`); on exit the peak is the larger of the polled
    RSS and VmHWM. A worker busy only between two polls (50 ms) is missed. Workers of a cluster this process
    did not start are not descendants: none are found.
    """

    def __init__(self, marker: str, interval_s: float = 0.05, rescan_s: float = 1.0) -> None:
        self.marker, self.interval_s, self.rescan_s = marker, interval_s, rescan_s
        self.peak: dict[int, int] = {}
        self.titles: dict[int, str] = {}
        self.busy: set[int] = set()
        self.reset: set[int] = set()
        self.existing: set[int] = set()
        self.stale: set[int] = set()
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.concurrency: list[int] = []  # workers running a task, per poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _descendants(self):
        import psutil

        try:
            return psutil.Process().children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def _title(p) -> str:
        import psutil

        try:
            return " ".join(p.cmdline()).strip()  # Ray pads its process titles
        except psutil.Error:
            return ""

    @staticmethod
    def _cpu(p) -> float | None:
        import psutil

        try:
            t = p.cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def __enter__(self) -> WorkerWatch:
        import psutil

        procs = self._descendants()
        self.existing = {p.pid for p in procs}
        # An actor of the previous phase may still be shutting down under the same title: not this phase's.
        self.stale = {p.pid for p in procs if self.marker in self._title(p)}
        self.cpu_start = {p.pid: c for p in procs if (c := self._cpu(p)) is not None}
        self.driver_cpu_start = self._cpu(psutil.Process()) or 0.0
        for pid in self.existing:
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                self.reset.add(pid)
            except OSError:
                pass
        self._thread.start()
        return self

    def _poll(self) -> None:
        import psutil

        procs, last_scan = [], 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_scan > self.rescan_s:
                procs, last_scan = self._descendants(), time.monotonic()
            running = 0
            for p in procs:
                try:
                    title = self._title(p)
                    rss = p.memory_info().rss
                    cpu = p.cpu_times()
                except psutil.Error:
                    continue
                self.cpu_last[p.pid] = cpu.user + cpu.system
                if not title.startswith("ray::") or p.pid in self.stale:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
                if self.marker in title:
                    self.busy.add(p.pid)
                    self.titles[p.pid] = title
                    running += 1
            self.concurrency.append(running)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        import psutil

        self.driver_cpu = (self._cpu(psutil.Process()) or 0.0) - self.driver_cpu_start
        self._stop.set()
        self._thread.join()
        for p in self._descendants():
            if (c := self._cpu(p)) is not None:
                self.cpu_last[p.pid] = c
        for pid in self.busy:
            hwm = _vm_hwm_bytes(pid)
            # VmHWM is this phase's peak when it was reset on entry, or when the process started during the phase.
            if hwm is not None and (pid in self.reset or pid not in self.existing):
                self.peak[pid] = max(self.peak[pid], hwm)

    def report(self) -> dict:
        per = {str(pid): round(self.peak[pid] / MIB, 1) for pid in sorted(self.busy)}
        used = {pid: c - self.cpu_start.get(pid, 0.0) for pid, c in self.cpu_last.items()}
        return {
            "peak_rss_mib_per_worker": per,
            "peak_rss_mib_max": max(per.values()) if per else None,
            "worker_titles": sorted(set(self.titles.values())),
            # Tasks running at once, averaged over the phase's polls (Ray Data may start fewer than allowed).
            "mean_busy_workers": round(statistics.mean(self.concurrency), 3) if self.concurrency else None,
            "cpu_s": {
                "driver": round(self.driver_cpu, 3),  # this process: Ray Data's executor, the polling thread
                "busy_workers": round(sum(c for pid, c in used.items() if pid in self.busy), 3),
                "other_ray": round(sum(c for pid, c in used.items() if pid not in self.busy), 3),
            },
        }


# --------------------------------------------------------------------------------------------- decode-only
def _warm(_: int) -> int:
    time.sleep(0.2)  # hold the process so each of the pool's processes gets one
    return os.getpid()


def _decode_only(task: tuple[str, float, int]) -> tuple[int, int, int]:
    """Read the file and make prepare's decode call; -> (pid, peak RSS bytes so far, frames).

    The peak is VmHWM, which starts afresh at exec; getrusage's ru_maxrss would carry over the parent's.
    """
    path, fps, max_frames = task
    data = Path(path).read_bytes()
    frames = decode_video(data, fps=fps, max_frames=max_frames, start_sec=0.0).frames
    return os.getpid(), _vm_hwm_bytes(os.getpid()) or 0, int(frames.shape[0])


def decode_only_run(paths: list[str], fps: float, num_frames: int, processes: int) -> dict:
    tasks = [(p, fps, num_frames) for p in paths]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, range(processes), chunksize=1)  # start-up and imports are not decoding
        start = time.perf_counter()
        # Chunks of a few files: little dispatch cost per file, still about 8 chunks per process to balance.
        results = pool.map(_decode_only, tasks, chunksize=max(1, len(tasks) // (8 * processes)))
        seconds = time.perf_counter() - start
    peak: dict[int, int] = {}
    for pid, hwm, _ in results:
        peak[pid] = max(peak.get(pid, 0), hwm)
    return {
        "seconds": seconds,
        "clips": len(results),
        "frames": sum(r[2] for r in results),
        "peak_rss_mib_per_process": {str(pid): round(b / MIB, 1) for pid, b in sorted(peak.items())},
    }


# --------------------------------------------------------------------------------------------- prepare
def prepare_config(preset: str, *, samples_per_shard: int, num_workers: int):
    from modeling.presets import load_config
    from pipelines.prepare import PrepareConfig

    section = load_config(preset)["prepare"]
    return PrepareConfig(
        size=int(section["size"]), num_frames=int(section["num_frames"]), fps=float(section["fps"]),
        samples_per_shard=samples_per_shard, num_workers=num_workers,
    )  # fmt: skip


def prepare_run(webvid_csv: str, out: Path, cfg) -> dict:
    from pipelines.prepare import prepare

    shutil.rmtree(out, ignore_errors=True)
    with WorkerWatch("make_shard") as mem:
        start = time.perf_counter()
        manifest = prepare([webvid_csv], str(out), cfg)
        seconds = time.perf_counter() - start
    if manifest["skips"]:
        raise RuntimeError(f"prepare skipped inputs: {manifest['skips']}")
    return {
        "seconds": seconds,
        "clips": manifest["num_samples"],
        "shards": len(manifest["shards"]),
        **mem.report(),
    }


def record_breakdown(webvid_csv: str, cfg, count: int, scratch: Path) -> dict:
    """One record's cost, stage by stage, in this process (one core), over the first `count` records."""
    from pipelines.clip_samples import cut_clips, fetch_record_bytes, record_samples
    from pipelines.media import check_video_filters, clip_starts, probe_video, resize_center_crop
    from pipelines.prepare import dedupe_records
    from pipelines.shards import write_shard
    from pipelines.sources import read_sources_with_stats

    records, _ = dedupe_records(read_sources_with_stats([webvid_csv])[0])
    records = records[:count]
    record_samples(records[0], cfg)  # first-call costs (codec set-up, lazy imports) are not per record
    stages = {"fetch": 0.0, "probe": 0.0, "decode": 0.0, "resize": 0.0, "encode": 0.0, "tar_write": 0.0}
    samples = []
    for r in records:
        t0 = time.perf_counter()
        data = fetch_record_bytes(r, cfg)
        t1 = time.perf_counter()
        info = probe_video(data, cfg.limits)
        check_video_filters(
            info,
            min_duration_s=cfg.min_duration_s,
            max_duration_s=cfg.max_duration_s,
            min_side=cfg.min_side,
            max_aspect=cfg.max_aspect,
        )
        (start,) = clip_starts(info.duration_s or 0.0, cfg.num_frames / cfg.fps, 1, mode=cfg.clip_mode)
        t2 = time.perf_counter()
        decoded = decode_video(
            data, fps=cfg.fps, max_frames=cfg.num_frames, start_sec=start, limits=cfg.limits
        )
        t3 = time.perf_counter()
        frames = resize_center_crop(cut_clips(decoded.frames, cfg), cfg.size)
        t4 = time.perf_counter()
        mp4 = encode_mp4(frames, cfg.fps, cfg.crf)
        t5 = time.perf_counter()
        for k, dt in zip(
            ("fetch", "probe", "decode", "resize", "encode"),
            (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
            strict=True,
        ):
            stages[k] += dt
        samples.append({"__key__": r.key, "mp4": mp4, "txt": r.caption, "json": {"start_sec": start}})
    t0 = time.perf_counter()
    write_shard(str(scratch / "breakdown.tar"), samples)
    stages["tar_write"] = time.perf_counter() - t0
    (scratch / "breakdown.tar").unlink(missing_ok=True)
    t0 = time.perf_counter()
    for r in records:
        record_samples(r, cfg)
    whole = time.perf_counter() - t0
    n = len(records)
    ms = {k: round(v / n * 1000, 3) for k, v in stages.items()}
    total = sum(stages.values()) / n * 1000
    return {
        "records": n,
        "per_record_ms": {**ms, "total": round(total, 3)},
        "share": {k: round(v / n * 1000 / total, 3) for k, v in stages.items()},
        "record_samples_ms": round(whole / n * 1000, 3),  # the pipeline's own per-record function, end to end
        # What prepare / decode-only could reach if Ray and tar I/O were free: decode's share of the work.
        "ratio_ceiling": round(stages["decode"] / sum(stages.values()), 3),
    }


# --------------------------------------------------------------------------------------------- tokenize
def demo_tokenizer_checkpoint(directory: Path) -> Path:
    """A randomly initialised C-ViViT of the demo preset's shape, saved as write_debug_checkpoint does."""
    import torch

    from modeling.checkpoint import save_checkpoint
    from modeling.cvivit import CViViT, CViViTConfig
    from modeling.presets import build_dataclass, load_config

    config = load_config("demo")
    torch.manual_seed(0)
    tok_cfg = build_dataclass(CViViTConfig, config["tokenizer"])
    fps, num_frames = float(config["prepare"]["fps"]), int(config["prepare"]["num_frames"])
    save_checkpoint(
        directory / "tokenizer", CViViT(tok_cfg).eval(), tok_cfg, {"num_frames": num_frames, "fps": fps}
    )
    return directory / "tokenizer"


def tokenize_run(ckpt: Path, clips: Path, out: Path, cfg) -> dict:
    from pipelines.tokenize import tokenize

    shutil.rmtree(out, ignore_errors=True)
    with WorkerWatch("TokenizeWorker") as mem:
        start = time.perf_counter()
        manifest = tokenize(str(ckpt), str(clips), str(out), cfg)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "clips": manifest["num_samples"], **mem.report()}


def tokenize_breakdown(ckpt: Path, clips: Path, cfg, count: int) -> dict:
    """Per clip in this process on one thread (a Ray actor with num_cpus=1 gets one): decode, tokenizer, text."""
    import torch

    from modeling.checkpoint import load_checkpoint
    from modeling.text_encoder import load_text_encoder
    from pipelines.shards import list_shards, read_shard
    from pipelines.tokenize import decode_clip, to_video_tensor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = load_checkpoint(ckpt)
        model, mcfg = loaded.model.eval(), loaded.config
        text = load_text_encoder(cfg.text_encoder, cfg.max_text_length)
        samples = []
        for shard in list_shards(str(clips)):
            samples.extend(read_shard(shard))
            if len(samples) >= count:
                break
        samples = samples[:count]
        t0 = time.perf_counter()
        decoded = [decode_clip(s, mcfg.image_size, mcfg.temporal_patch_size, cfg.num_frames) for s in samples]
        t1 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(decoded), cfg.batch_size):
                model.encode(to_video_tensor(np.stack([c.frames for c in decoded[s : s + cfg.batch_size]])))
            t2 = time.perf_counter()
            for s in range(0, len(decoded), cfg.batch_size):
                text.encode([c.caption for c in decoded[s : s + cfg.batch_size]])
            t3 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    n = len(decoded)
    ms = {
        "decode": (t1 - t0) / n * 1000,
        "tokenizer": (t2 - t1) / n * 1000,
        "text_encoder": (t3 - t2) / n * 1000,
    }
    total = sum(ms.values())
    return {
        "clips": n,
        "batch_size": cfg.batch_size,
        "per_clip_ms": {**{k: round(v, 3) for k, v in ms.items()}, "total": round(total, 3)},
        "share": {k: round(v / total, 3) for k, v in ms.items()},
        "clips_per_s_one_thread": round(1000 / total, 1),
        "tokenizer_params": sum(p.numel() for p in model.parameters()),
    }


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
        },
        "prepare": {},
        "tokenize": {},
    }
    try:
        # Ray workers start and import the pipeline once, here: not part of any timed run.
        cfg = prepare_config("demo", samples_per_shard=2, num_workers=max(args.workers))
        outputs.mkdir(parents=True)
        rows = Path(corpora["synthetic"]["webvid_csv"]).read_text().splitlines(keepends=True)
        (outputs / "warmup.csv").write_text("".join(rows[: 1 + 2 * max(args.workers)]))
        prepare_run(str(outputs / "warmup.csv"), outputs / "warmup", cfg)
        phase("warmup")
        for name, corpus in corpora.items():
            per_shard = math.ceil(corpus["params"]["num_videos"] / args.shards)
            paths = listed_paths(corpus["webvid_csv"])
            section: dict = {"preset": presets[name], "records": len(paths), "samples_per_shard": per_shard}
            decode_runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            prep_runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            for run in range(args.runs):
                for w in args.workers:  # interleaved, so drifting machine load hits both alike
                    cfg = prepare_config(presets[name], samples_per_shard=per_shard, num_workers=w)
                    decode_runs[w].append(decode_only_run(paths, cfg.fps, cfg.num_frames, w))
                    prep_runs[w].append(
                        prepare_run(corpus["webvid_csv"], outputs / f"{name}-w{w}-r{run}", cfg)
                    )
                    print(
                        f"{name} run {run} workers {w}: decode-only {decode_runs[w][-1]['seconds']:.2f} s, "
                        f"prepare {prep_runs[w][-1]['seconds']:.2f} s",
                        flush=True,
                    )
            section["config"] = {
                k: getattr(cfg, k) for k in ("size", "num_frames", "fps", "crf", "samples_per_shard")
            }
            section["decode_only"] = {
                str(w): {**summarise(r), "frames": r[0]["frames"],
                         "peak_rss_mib_max": peak_over_runs(r, "peak_rss_mib_per_process"),
                         "peak_rss_mib_per_process_last_run": r[-1]["peak_rss_mib_per_process"]}
                for w, r in decode_runs.items()
            }  # fmt: skip
            section["prepare"] = {
                str(w): {**summarise(r, ("shards", "worker_titles")),
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
        from modeling.generation import write_debug_checkpoint
        from modeling.presets import load_config
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
        out.append(
            f"{name}: prepare / decode-only = {ratios} (goal {GOAL_RATIO}); in-process the largest stage is {top} "
            f"({b['share'][top]:.0%} of {b['per_record_ms']['total']:.1f} ms/record; encode {b['share']['encode']:.0%}, "
            f"decode {b['share']['decode']:.0%}), so without Ray or tar costs the ratio could reach at most "
            f"{b['ratio_ceiling']:.2f}."
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
