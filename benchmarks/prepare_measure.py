"""Measurements for `benchmarks.prepare_throughput`: peak RSS and CPU of the Ray workers (`WorkerWatch`),
the decode-only limit (a spawn process pool), prepare and tokenize runs, and their in-process breakdowns.

Kept light on purpose: the decode-only processes import this module; Ray, torch and the pipelines that
pull them in are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.process_memory import descendants, process_title, vm_hwm_bytes
from pipelines.media import decode_video, encode_mp4

MIB = 2**20


# --------------------------------------------------------------------------------------------- memory
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

        procs = descendants()
        self.existing = {p.pid for p in procs}
        # An actor of the previous phase may still be shutting down under the same title: not this phase's.
        self.stale = {p.pid for p in procs if self.marker in process_title(p)}
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
                procs, last_scan = descendants(), time.monotonic()
            running = 0
            for p in procs:
                try:
                    title = process_title(p)
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
        for p in descendants():
            if (c := self._cpu(p)) is not None:
                self.cpu_last[p.pid] = c
        for pid in self.busy:
            hwm = vm_hwm_bytes(pid)
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
# Ray starts its worker processes at this niceness (its `worker_niceness` setting, 15 unless RAY_worker_niceness
# says otherwise), so its raylet and GCS stay responsive. On an idle machine it changes nothing; on one shared
# with other work a nice-15 worker gets a small share of a core next to nice-0 processes, so a decode-only pool
# at nice 0 would be measured on more CPU than prepare's tasks get. Both niceness values are measured.
RAY_WORKER_NICENESS = int(os.environ.get("RAY_worker_niceness", "15"))  # noqa: SIM112 (Ray's name)


def _warm(niceness: int) -> int:
    os.nice(max(0, niceness - os.nice(0)))  # raising one's own niceness needs no privilege
    time.sleep(0.2)  # hold the process so each of the pool's processes gets one
    return os.getpid()


def _decode_only(task: tuple[str, float, int]) -> tuple[int, int, int]:
    """Read the file and make prepare's decode call; -> (pid, peak RSS bytes so far, frames).

    The peak is VmHWM, which starts afresh at exec; getrusage's ru_maxrss would carry over the parent's.
    """
    path, fps, max_frames = task
    data = Path(path).read_bytes()
    frames = decode_video(data, fps=fps, max_frames=max_frames, start_sec=0.0).frames
    return os.getpid(), vm_hwm_bytes(os.getpid()) or 0, int(frames.shape[0])


def decode_only_run(paths: list[str], fps: float, num_frames: int, processes: int, niceness: int = 0) -> dict:
    """`processes` spawn processes at `niceness` (0, or RAY_WORKER_NICENESS to match Ray's workers) decode
    every file as prepare's decode call does; -> seconds, clips, frames, peak RSS per process."""
    tasks = [(p, fps, num_frames) for p in paths]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, [niceness] * processes, chunksize=1)  # start-up and imports are not decoding
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
def prepare_config(preset: str, *, samples_per_shard: int, num_workers: int, video_format: str = "mp4"):
    from jobs.config import load_config
    from pipelines.prepare import PrepareConfig

    section = load_config(preset)["prepare"]
    return PrepareConfig(
        size=int(section["size"]), num_frames=int(section["num_frames"]), fps=float(section["fps"]),
        samples_per_shard=samples_per_shard, num_workers=num_workers, video_format=video_format,
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
        # tar bytes (headers, captions and json included) per clip
        "shard_bytes_per_clip": round(
            sum(p.stat().st_size for p in out.glob("*.tar")) / manifest["num_samples"]
        ),
        **mem.report(),
    }


def record_breakdown(webvid_csv: str, cfg, count: int, scratch: Path) -> dict:
    """One record's cost, stage by stage, in this process (one core), over the first `count` records.

    decode = the decode-only call (`decode_video` at the source size from the clip start, fps resample
    included); resize = what prepare's own call (`decode_video_clips`: header, filters and clip plan, then the
    clip scaled and cropped in the decoder's scaler) costs on top of it, from the two calls' totals (alternating
    which runs first); encode = what makes the stored clip: `encode_mp4` with prepare's crf and x264 preset,
    or for video_format="npy" the .npy serialisation. probe = opening the container and reading the header
    alone: both decode calls include it, so it is reported but not added to the total.
    """
    from pipelines.clip_samples import clip_plan, cut_clips, fetch_record_bytes, record_samples
    from pipelines.media import decode_video_clips
    from pipelines.prepare import dedupe_records
    from pipelines.shards import RAW_CLIP_KEY, npy_bytes, write_shard
    from pipelines.sources import listing_policy, read_sources_with_stats

    # as prepare() does: the listing's own folder is where its local media may be read from
    cfg = dataclasses.replace(cfg, fetch=listing_policy(cfg.fetch, [webvid_csv]))
    records, _ = dedupe_records(read_sources_with_stats([webvid_csv], policy=cfg.fetch)[0])
    records = records[:count]
    record_samples(records[0], cfg)  # first-call costs (codec set-up, lazy imports) are not per record
    stages = {"fetch": 0.0, "decode": 0.0, "resize": 0.0, "encode": 0.0, "tar_write": 0.0}
    probe_s = 0.0
    samples = []
    for i, r in enumerate(records):
        t0 = time.perf_counter()
        data = fetch_record_bytes(r, cfg)
        t1 = time.perf_counter()
        info, _ = decode_video_clips(data, lambda _: [], limits=cfg.limits)
        probe_s += time.perf_counter() - t1
        (start,) = clip_plan(r, dataclasses.replace(cfg, clips_per_video=1))(info)
        decode_s, prepare_s = 0.0, 0.0
        for ours in (False, True) if i % 2 else (True, False):
            s0 = time.perf_counter()
            if ours:
                _, [(start, clip)] = decode_video_clips(
                    data,
                    clip_plan(r, cfg),
                    fps=cfg.fps,
                    max_frames=cfg.num_frames,
                    size=cfg.size,
                    limits=cfg.limits,
                )
                prepare_s = time.perf_counter() - s0
            else:
                decode_video(data, fps=cfg.fps, max_frames=cfg.num_frames, start_sec=start, limits=cfg.limits)
                decode_s = time.perf_counter() - s0
        frames = cut_clips(clip.frames, cfg)
        t4 = time.perf_counter()
        if cfg.video_format == "npy":
            media = {RAW_CLIP_KEY: npy_bytes(frames)}
        else:
            media = {"mp4": encode_mp4(frames, cfg.fps, cfg.crf, cfg.x264_preset)}
        t5 = time.perf_counter()
        for k, dt in zip(
            ("fetch", "decode", "resize", "encode"),
            (t1 - t0, decode_s, prepare_s - decode_s, t5 - t4),
            strict=True,
        ):
            stages[k] += dt
        samples.append({"__key__": r.key, **media, "txt": r.caption, "json": {"start_sec": start}})
    stages["resize"] = max(stages["resize"], 0.0)  # scaling down can cost less than the full-size RGB
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
    ms["probe"] = round(probe_s / n * 1000, 3)
    total = sum(stages.values()) / n * 1000
    return {
        "records": n,
        "video_format": cfg.video_format,
        "x264_preset": cfg.x264_preset,
        "per_record_ms": {**ms, "total": round(total, 3)},
        "share": {k: round(v / n * 1000 / total, 3) for k, v in stages.items()},
        "record_samples_ms": round(whole / n * 1000, 3),  # the pipeline's own per-record function, end to end
        # the stored clip (mp4 or .npy) alone, and the same frames as raw uint8 (T, H, W, 3) pixels
        "clip_bytes_per_clip": round(sum(len(s.get("mp4") or s[RAW_CLIP_KEY]) for s in samples) / n),
        "raw_bytes_per_clip": cfg.num_frames * cfg.size * cfg.size * 3,
        # What prepare / decode-only could reach if Ray and tar I/O were free: decode's share of the work.
        "ratio_ceiling": round(stages["decode"] / sum(stages.values()), 3),
    }


# --------------------------------------------------------------------------------------------- tokenize
def demo_tokenizer_checkpoint(directory: Path) -> Path:
    """A randomly initialised C-ViViT of the demo preset's shape, saved as write_debug_checkpoint does."""
    import torch

    from jobs.config import load_config
    from modeling.checkpoint import save_checkpoint
    from modeling.cvivit import CViViT, CViViTConfig
    from modeling.typed_config import build_dataclass

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
    from modeling.pixels import frames_to_video
    from modeling.text_encoder import load_text_encoder
    from pipelines.shards import list_shards, read_shard
    from pipelines.tokenize import decode_clip

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
                model.encode(frames_to_video(np.stack([c.frames for c in decoded[s : s + cfg.batch_size]])))
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
