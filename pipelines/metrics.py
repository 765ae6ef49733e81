"""The papers' metrics on sets of videos: feature extraction (in process for small sets, a Ray Data actor pool
for large ones; the same `FeatureWorker` either way), streamed statistics on the driver, and the report.

Unpaired metrics compare a generated set with a real one: FVD (I3D Kinetics-400 logits of 16-frame clips,
`modeling.metrics.fvd_preprocess`), FID (Inception pool3 of every frame), IS (Inception's 1008-way softmax of
every frame of the generated set), CLIP score (every frame against its prompt). Paired metrics compare a
reconstruction or a task's output with its own clip: PSNR, SSIM, LPIPS (`paired_metrics`).

Each network is loaded from a local weight file the user names (`MetricWeights`); a missing file is one line
naming the flag, the file and where such weights come from. See docs/metrics.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from modeling.clip_score import CLIP_SOURCE
from modeling.i3d import I3D_WEIGHTS_SOURCE
from modeling.inception import FID_INCEPTION_SOURCE
from modeling.losses import VGG16_SOURCE
from modeling.lpips import LPIPS_LIN_SOURCE
from modeling.metrics import RunningStats

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi")


# flag and where such weights come from (each network's module says), by `MetricWeights` field
WEIGHT_SOURCES = {
    "i3d": ("--i3d", I3D_WEIGHTS_SOURCE),
    "inception": ("--inception", FID_INCEPTION_SOURCE),
    "clip": ("--clip", CLIP_SOURCE),
    "lpips_vgg": ("--lpips-vgg", VGG16_SOURCE),
    "lpips_lin": ("--lpips-lin", LPIPS_LIN_SOURCE),
}


@dataclass(frozen=True)
class MetricWeights:
    """Local weight files of the feature networks; a metric runs when its network's file is given."""

    i3d: str | None = None  # FVD
    inception: str | None = None  # FID, IS
    clip: str | None = None  # CLIP score (a directory)
    lpips_vgg: str | None = None  # LPIPS (both files)
    lpips_lin: str | None = None

    def validate(self) -> MetricWeights:
        """Every named file exists (the CLIP model is a directory), LPIPS gets both of its files; before any
        Ray start, so a typo costs nothing."""
        for f in fields(self):
            path = getattr(self, f.name)
            if path is None:
                continue
            ok = Path(path).is_dir() if f.name == "clip" else Path(path).is_file()
            if not ok:
                flag, source = WEIGHT_SOURCES[f.name]
                kind = "directory" if f.name == "clip" else "file"
                raise FileNotFoundError(f"{flag} {path}: no such {kind}. {source}")
        if (self.lpips_vgg is None) != (self.lpips_lin is None):
            raise ValueError("LPIPS needs both --lpips-vgg (VGG16 trunk) and --lpips-lin (its linear layers)")
        return self

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    @property
    def lpips(self) -> bool:
        return self.lpips_vgg is not None


@dataclass(frozen=True)
class SetOptions:
    """How the features of video sets are extracted."""

    workers: int = 1  # Ray Data actors; 0: in this process
    image_frames: int | None = None  # frames per video FID / IS / CLIP score read (evenly spaced); None: all
    batch_size: int = 2  # videos per worker call

    def validate(self) -> SetOptions:
        if self.workers < 0:
            raise ValueError(f"--metric-workers must be >= 0, got {self.workers}")
        if self.image_frames is not None and self.image_frames < 1:
            raise ValueError(f"--image-frames must be >= 1, got {self.image_frames}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        return self


# ----------------------------------------------------------------------------------------------- the networks


def load_networks(weights: MetricWeights) -> dict[str, Any]:
    """The networks `weights` names, in eval mode: {"i3d", "inception", "clip", "lpips"} (those given)."""
    nets: dict[str, Any] = {}
    if weights.i3d:
        from modeling.i3d import InceptionI3d

        nets["i3d"] = InceptionI3d.from_file(weights.i3d)
    if weights.inception:
        from modeling.inception import FIDInceptionV3

        nets["inception"] = FIDInceptionV3.from_file(weights.inception)
    if weights.clip:
        from modeling.clip_score import CLIPScorer

        nets["clip"] = CLIPScorer.from_dir(weights.clip)
    if weights.lpips:
        from modeling.lpips import LPIPS

        nets["lpips"] = LPIPS.from_files(weights.lpips_vgg, weights.lpips_lin)
    return nets


FRAME_BATCH = 32  # frames per Inception / CLIP forward


def image_frame_indices(num_frames: int, image_frames: int | None) -> np.ndarray:
    """The frames FID / IS / CLIP score read: every one, or `image_frames` spread evenly from first to last."""
    if image_frames is None or image_frames >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, image_frames).round().astype(int))


def clip_features(
    nets: dict[str, Any], frames: np.ndarray, prompts: list[str] | None, image_frames: int | None = None
) -> dict[str, np.ndarray]:
    """Every feature the networks give for one clip (T, H, W, 3) uint8 with one prompt per frame (or None):
    `i3d` (400,) FVD logits (empty (0,) for clips under 16 frames), and for the T' frames `image_frame_indices` picks,
    `pool` (T', 2048) and `probs` (T', 1008) of Inception, `clip` (T',) CLIP scores."""
    import torch

    from modeling.metrics import FVD_FRAMES, fvd_preprocess

    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if "i3d" in nets:  # an empty array: the clip is too short for FVD
            too_short = len(frames) < FVD_FRAMES
            logits = None if too_short else nets["i3d"].classify(fvd_preprocess(frames[None]))[0]
            out["i3d"] = np.zeros(0) if logits is None else logits.double().numpy()
        keep = image_frame_indices(len(frames), image_frames)
        frames = frames[keep]
        prompts = [prompts[i] for i in keep] if prompts is not None else None
        images = (
            torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        )  # (T, 3, H, W)
        if "inception" in nets:
            pools, probs = [], []
            for i in range(0, len(images), FRAME_BATCH):
                pool, logits = nets["inception"](images[i : i + FRAME_BATCH])
                pools.append(pool.double())
                probs.append(torch.softmax(logits.double(), dim=1))
            out["pool"], out["probs"] = torch.cat(pools).numpy(), torch.cat(probs).numpy()
        if "clip" in nets and prompts is not None:
            scores = [
                nets["clip"].score(images[i : i + FRAME_BATCH], prompts[i : i + FRAME_BATCH])
                for i in range(0, len(images), FRAME_BATCH)
            ]
            out["clip"] = torch.cat(scores).double().numpy()
    return out


# --------------------------------------------------------------------------------------------------- video sets


def frame_prompts(record: dict[str, Any], num_frames: int) -> list[str] | None:
    """The prompt of each frame of a results.json record (a story's segments each have their own)."""
    prompts = record.get("prompts") or []
    if not prompts:
        return None
    per_frame = [prompts[0]] * num_frames
    for prompt, (start, end) in zip(prompts, record.get("segments") or [], strict=False):
        per_frame[int(start) : int(end)] = [prompt] * (min(int(end), num_frames) - int(start))
    return per_frame


def records_refs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refs of results.json records (`pipelines.evaluate.load_records`): file, prompts, segments."""
    return [{"file": r["file"], "prompts": r.get("prompts"), "segments": r.get("segments")} for r in records]


def set_refs(source: str) -> list[dict[str, Any]]:
    """What a worker reads for one video set, one ref each: a results.json (records with prompts), a clip-shard
    directory from `phenaki prepare` (one ref per shard; captions come along), or a folder of videos."""
    from pipelines.shards import exists, join_uri, list_shards

    path = Path(source)
    if path.suffix == ".json":
        from pipelines.evaluate import load_records

        return records_refs(load_records(source))
    if exists(join_uri(source, "manifest.json")):
        return [{"shard": uri} for uri in list_shards(source)]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if files:
            return [{"file": str(p)} for p in files]
    raise ValueError(
        f"{source}: not a results.json, a clip-shard directory (with manifest.json) or a folder of videos "
        f"({', '.join(VIDEO_SUFFIXES)})"
    )


def decode_ref(ref: dict[str, Any]) -> Iterator[tuple[np.ndarray, list[str] | None]]:
    """(frames (T, H, W, 3) uint8, per-frame prompts or None) for each video a ref names; stills are skipped."""
    from pipelines.media import decode_video

    if "shard" in ref:
        from pipelines.shards import read_shard

        for sample in read_shard(ref["shard"]):
            if "mp4" in sample:
                frames = decode_video(sample["mp4"]).frames
                caption = sample.get("txt", b"").decode("utf-8") or None
                yield frames, [caption] * len(frames) if caption else None
        return
    frames = decode_video(ref["file"]).frames
    yield frames, frame_prompts(ref, len(frames))


FEATURE_KEYS = ("i3d", "pool", "probs", "clip")


class FeatureWorker:
    """Loads the networks once (one per Ray Data actor, or once in process); `__call__` turns a batch of refs
    (JSON strings) into one row per video: its ref, frame count, and each feature as .npy bytes (b"" when not
    computed): clips differ in length, and bytes pass through Ray Data whatever their shapes."""

    def __init__(self, weights: dict[str, str | None], image_frames: int | None = None):
        self.nets = load_networks(MetricWeights(**weights))
        self.image_frames = image_frames

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import json

        from pipelines.media import MediaError
        from pipelines.shards import npy_bytes

        rows: dict[str, list] = {k: [] for k in ("ref", "frames", "error", *FEATURE_KEYS)}

        def emit(ref: str, frames: int, feats: dict[str, np.ndarray], error: str = "") -> None:
            rows["ref"].append(ref)
            rows["frames"].append(frames)
            rows["error"].append(error)
            for k in FEATURE_KEYS:
                rows[k].append(npy_bytes(feats[k]) if k in feats else b"")

        for ref in batch["ref"]:
            try:
                for frames, prompts in decode_ref(json.loads(ref)):
                    emit(ref, len(frames), clip_features(self.nets, frames, prompts, self.image_frames))
            except (MediaError, FileNotFoundError) as err:  # counted and named in the report, not fatal
                emit(ref, 0, {}, f"{ref}: {err}")
        return rows


class SetFeatures:
    """The driver's streamed view of one set: I3D and Inception statistics (their sizes taken from the first
    features: 400 and 2048 with the published networks), IS probabilities, CLIP scores."""

    def __init__(self) -> None:
        self.videos, self.frames, self.short_for_fvd = 0, 0, 0
        self.undecodable: list[str] = []  # "ref: why", for the report's notes
        self.stats: dict[str, RunningStats] = {}  # "i3d", "pool"
        # IS splits the whole set, so the probabilities are kept (float32, 4 KB a frame)
        self.probs: list[np.ndarray] = []
        self.clip: list[np.ndarray] = []

    def _update(self, key: str, features: np.ndarray) -> None:
        if key not in self.stats:
            self.stats[key] = RunningStats(features.shape[1])
        self.stats[key].update(features)

    def count(self, key: str) -> int:
        return self.stats[key].count if key in self.stats else 0

    def add_row(self, row: dict[str, Any]) -> None:
        """One `FeatureWorker` output row."""
        from pipelines.shards import load_npy

        if row["error"]:
            self.undecodable.append(row["error"])
            return
        self.add(int(row["frames"]), {k: load_npy(row[k]) for k in FEATURE_KEYS if len(row[k])})

    def add(self, frames: int, feats: dict[str, np.ndarray]) -> None:
        """One video's `clip_features`."""
        self.videos += 1
        self.frames += frames
        if "i3d" in feats and feats["i3d"].size:
            self._update("i3d", feats["i3d"][None])
        elif "i3d" in feats:
            self.short_for_fvd += 1
        if "pool" in feats:
            self._update("pool", feats["pool"])
            self.probs.append(feats["probs"].astype(np.float32))
        if "clip" in feats:
            self.clip.append(feats["clip"])


def extract(
    sets: dict[str, list[dict[str, Any]]], weights: MetricWeights, options: SetOptions = SetOptions()
) -> dict[str, SetFeatures]:
    """Features of every video of each named set of refs, each distinct ref read once (a set measured against
    itself costs one pass). `options.workers` 0: in this process; else one Ray Data pass over an actor pool of
    that many actors, each loading the networks once (joins $RAY_ADDRESS or starts a local cluster)."""
    import json

    members: dict[str, list[str]] = {}  # ref (JSON) -> the sets holding it, in first-seen order
    for name, refs in sets.items():
        for r in refs:
            members.setdefault(json.dumps(r, sort_keys=True), []).append(name)
    unique = list(members)
    feats = {name: SetFeatures() for name in sets}

    def add(row: dict[str, Any]) -> None:
        for name in members[row["ref"]]:
            feats[name].add_row(row)

    workers, batch_size = options.workers, options.batch_size
    if workers == 0:
        worker = FeatureWorker(asdict(weights), options.image_frames)
        for i in range(0, len(unique), batch_size):
            out = worker({"ref": unique[i : i + batch_size]})
            for j in range(len(out["ref"])):
                add({k: v[j] for k, v in out.items()})
        return feats
    import ray.data

    from jobs.runtime import init_ray
    from pipelines.ray_utils import iter_rows_released

    # Every network is built once here first: a file that holds the wrong network is then one clear error
    # naming it, not a Ray task failure wrapped around the same message.
    load_networks(weights)
    init_ray()
    blocks = max(1, min(len(unique), workers * 4))
    ds = ray.data.from_items([{"ref": r} for r in unique], override_num_blocks=blocks)
    ds = ds.map_batches(
        FeatureWorker,
        batch_size=batch_size,
        fn_constructor_kwargs={"weights": asdict(weights), "image_frames": options.image_frames},
        compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(unique)))),
        num_cpus=1,
    )
    for row in iter_rows_released(ds):
        add(row)
    return feats


# ------------------------------------------------------------------------------------------------------ reports


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def set_report(generated: SetFeatures, real: SetFeatures | None) -> dict[str, Any]:
    """FVD and FID against `real` (when given and both sets have >= 2 feature vectors), IS and CLIP score of
    each set; a metric whose network was not given is absent, one that could not run says why in `notes`."""
    from modeling.metrics import frechet_distance_of, inception_score

    report: dict[str, Any] = {"videos": generated.videos, "frames": generated.frames, "notes": []}
    for name, feats in (("generated", generated), ("real", real)):
        if feats is not None and feats.undecodable:
            report["notes"].append(
                f"{len(feats.undecodable)} {name} video(s) could not be decoded and are left out, e.g. "
                f"{feats.undecodable[0]}"
            )
    if real is not None:
        report["real_videos"], report["real_frames"] = real.videos, real.frames
        for name, key in (("fvd", "i3d"), ("fid", "pool")):
            a, b = generated.count(key), real.count(key)
            if a >= 2 and b >= 2:
                report[name] = _finite_or_none(frechet_distance_of(generated.stats[key], real.stats[key]))
            elif a or b or (key == "i3d" and (generated.short_for_fvd or real.short_for_fvd)):
                report["notes"].append(
                    f"{name.upper()} needs >= 2 feature vectors per set, got {a} generated and {b} real"
                    + (" (FVD takes clips of >= 16 frames)" if key == "i3d" else "")
                )
    for prefix, feats in (("", generated), ("real_", real)):
        if feats is None:
            continue
        if feats.probs:
            probs = np.concatenate(feats.probs)
            splits = min(10, len(probs))
            mean, std = inception_score(probs / probs.sum(1, keepdims=True), splits=splits)
            report[f"{prefix}inception_score"] = {"mean": mean, "std": std, "splits": splits}
        if feats.clip:
            report[f"{prefix}clip_score"] = float(np.mean(np.concatenate(feats.clip)))
    return report


def paired_metrics(
    originals: np.ndarray, outputs: np.ndarray, nets: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Means over clips of PSNR, SSIM and (with an "lpips" network) LPIPS between each output and its own
    clip, both (N, T, H, W, 3) uint8; with "i3d" also the FVD of the outputs against the originals (clips of
    >= 16 frames), and with "inception" their FID over frames."""
    import torch

    from modeling.metrics import video_pair_metrics
    from modeling.pixels import frames_to_video

    nets = nets or {}
    pairs = video_pair_metrics(originals, outputs)
    report: dict[str, Any] = {"psnr_db": float(pairs["psnr_db"].mean()), "ssim": float(pairs["ssim"].mean())}
    if "lpips" in nets:
        a = frames_to_video(originals).transpose(1, 2).flatten(0, 1)  # (N*T, 3, H, W) in [-1, 1]
        b = frames_to_video(outputs).transpose(1, 2).flatten(0, 1)
        with torch.no_grad():
            dist = torch.cat(
                [
                    nets["lpips"](a[i : i + FRAME_BATCH], b[i : i + FRAME_BATCH])
                    for i in range(0, len(a), FRAME_BATCH)
                ]
            )
        report["lpips"] = float(dist.double().mean())
    feature_nets = {k: v for k, v in nets.items() if k in ("i3d", "inception")}
    if feature_nets:  # the outputs as a set against their clips as a set
        real, made = SetFeatures(), SetFeatures()
        for clip, output in zip(originals, outputs, strict=True):
            real.add(len(clip), clip_features(feature_nets, clip, None))
            made.add(len(output), clip_features(feature_nets, output, None))
        sets = set_report(made, real)
        report |= {k: sets[k] for k in ("fvd", "fid") if k in sets}
        if sets["notes"]:
            report["notes"] = sets["notes"]
    return report


def pairs_by_name(
    generated: list[dict[str, Any]], real: list[dict[str, Any]]
) -> list[tuple[str, str]] | None:
    """(generated file, real file) for every generated video when each has a real one of the same file name
    (a folder of outputs beside a folder of their inputs); None otherwise."""
    real_files = {Path(r["file"]).name: r["file"] for r in real if "file" in r}
    names = [Path(g["file"]).name for g in generated if "file" in g]
    if not names or len(names) != len(generated) or any(n not in real_files for n in names):
        return None
    return [(g["file"], real_files[Path(g["file"]).name]) for g in generated]


def set_metrics_report(
    generated: list[dict[str, Any]],
    real_source: str | None,
    weights: MetricWeights,
    options: SetOptions = SetOptions(),
) -> dict[str, Any]:
    """FVD / FID of the generated videos (refs, `set_refs`) against `real_source`, IS and CLIP score of each
    set; with videos paired by file name, also PSNR / SSIM (and LPIPS) of each pair (`paired_metrics`)."""
    from pipelines.media import decode_video

    real_refs = set_refs(real_source) if real_source else None
    unpaired = MetricWeights(weights.i3d, weights.inception, weights.clip)
    feats = extract({"generated": generated, **({"real": real_refs} if real_refs else {})}, unpaired, options)
    report = set_report(feats["generated"], feats.get("real"))
    pairs = pairs_by_name(generated, real_refs) if real_refs else None
    if pairs:
        outputs = np.stack([decode_video(g).frames for g, _ in pairs])
        originals = np.stack([decode_video(r).frames for _, r in pairs])
        if outputs.shape != originals.shape:
            raise ValueError(
                f"paired videos differ in shape: generated {outputs.shape}, real {originals.shape}"
            )
        nets = load_networks(MetricWeights(lpips_vgg=weights.lpips_vgg, lpips_lin=weights.lpips_lin))
        report["paired"] = {"pairs": len(pairs), **paired_metrics(originals, outputs, nets)}
    return report


LINE_NAMES = (("fvd", "FVD {:.2f}"), ("fid", "FID {:.2f}"), ("clip_score", "CLIP score {:.2f}"),
              ("psnr_db", "PSNR {:.2f} dB"), ("ssim", "SSIM {:.4f}"), ("lpips", "LPIPS {:.4f}"))  # fmt: skip


def metrics_line(report: dict[str, Any] | None) -> str:
    """'FVD 123.45 · FID 6.78 · IS 1.90 ± 0.05 · ...' of what a report holds (paired metrics included)."""
    if not report:
        return ""
    flat = {**report, **(report.get("paired") or {})}
    parts = [fmt.format(flat[k]) for k, fmt in LINE_NAMES if flat.get(k) is not None]
    if "inception_score" in flat:
        parts.insert(2, "IS {mean:.2f} ± {std:.2f}".format(**flat["inception_score"]))
    return " · ".join(parts)
