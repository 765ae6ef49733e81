"""The corpora `benchmarks.prepare_throughput` measures on: `pipelines.synth` videos and web-like H.264
videos (a panning noise texture under a drifting colour gradient plus sensor noise), each listed in a
WebVid CSV and reused by later runs with the same settings.

Kept light: the spawn pool that writes the web-like videos imports this module.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import shutil
import statistics
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from pipelines.media import encode_mp4


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
