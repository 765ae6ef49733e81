"""Tokenizer object fidelity: does a reconstruction still show one clean object of the right colour, shape
and motion?

PSNR hides object loss: the background is three quarters of every frame, so a tokenizer that turns a
yellow square into an orange blob still scores 25 dB. Here the detector (`pipelines.detector`) reads every
reconstruction of fresh clips the tokenizer never saw, the same way it reads generated videos.

The clips are every (colour, shape, motion) of the synthetic world (6 x 3 x 4 = 72, purple included,
held-out triples included), rendered with a seed no training set uses, and brought to the tokenizer's
input the way `phenaki prepare` brings real data: H.264 at 64x64 (as `phenaki synth` writes it), decode with
prepare's decoder-side resize + centre-crop, H.264 again with prepare's settings (as it writes shards), decode.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from pipelines.detector import detect
from pipelines.media import decode_video, encode_mp4
from pipelines.prepare import PrepareConfig
from pipelines.synth import MOTIONS, PALETTE, SHAPES, sample_video

ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(itertools.product(PALETTE, SHAPES, MOTIONS))
PREPARE = PrepareConfig()  # the shard encoding settings prepare uses by default
FIDELITY_SEED = 99  # `phenaki synth` and the demo use seed 0; tests use small seeds
SOURCE_FRAMES, SOURCE_SIZE, FPS = 24, 64, 8  # what `phenaki synth` renders


@dataclass(frozen=True)
class FidelityClips:
    frames: np.ndarray  # (N, T, H, W, 3) uint8
    truths: tuple[tuple[str, str, str], ...]  # (colour, shape, motion) per clip


def fidelity_clips(size: int, num_frames: int, repeats: int = 1, seed: int = FIDELITY_SEED) -> FidelityClips:
    """`repeats` fresh clips of every triple (72 per repeat) at `size` x `size`, `num_frames` frames each."""
    if num_frames > SOURCE_FRAMES:
        raise ValueError(f"fidelity clips are cut from {SOURCE_FRAMES}-frame videos; asked for {num_frames}")
    clips, truths = [], []
    for r, (k, truth) in itertools.product(range(repeats), enumerate(ALL_TRIPLES)):
        rng = np.random.default_rng([seed, r, k])
        source = sample_video(rng, *truth, num_frames=SOURCE_FRAMES, size=SOURCE_SIZE)
        # prepare's path: its decoder scales and crops (`decode_video(size=)`), its x264 settings re-encode
        decoded = decode_video(encode_mp4(source, FPS), max_frames=num_frames, size=size).frames
        clips.append(decode_video(encode_mp4(decoded, FPS, PREPARE.crf, PREPARE.x264_preset)).frames)
        truths.append(truth)
    return FidelityClips(np.stack(clips), tuple(truths))


def score_reconstructions(
    recon: np.ndarray, truths: tuple[tuple[str, str, str], ...], originals: np.ndarray | None = None
) -> dict:
    """(N, T, H, W, 3) uint8 reconstructions and their truths -> fractions and per-clip readings.

    `clean` is the share of clips showing one clean object; `colour`, `shape`, `motion` count a clip only
    when it is clean and the attribute matches; `all` when all three do. With `originals`, `psnr_db` is
    the mean PSNR over clips (8-bit).
    """
    if len(recon) != len(truths):
        raise ValueError(f"{len(recon)} reconstructions for {len(truths)} truths")
    rows = []
    for frames, (colour, shape, motion) in zip(recon, truths, strict=True):
        d = detect(frames)
        rows.append({
            "truth": [colour, shape, motion],
            "detected": [d.colour, d.shape, d.motion],
            "clean": d.clean,
            "clean_frames": round(d.clean_frames, 3),
            "colour": d.clean and d.colour == colour,
            "shape": d.clean and d.shape == shape,
            "motion": d.clean and d.motion == motion,
        })  # fmt: skip
    report: dict = {"clips": len(rows)}
    for key in ("clean", "colour", "shape", "motion"):
        report[key] = float(np.mean([r[key] for r in rows]))
    report["all"] = float(np.mean([r["colour"] and r["shape"] and r["motion"] for r in rows]))
    if originals is not None:
        import torch

        from modeling.metrics import psnr_db

        report["psnr_db"] = float(psnr_db(torch.as_tensor(recon), torch.as_tensor(originals), 255.0).mean())
    report["per_clip"] = rows
    return report


def tokenizer_fidelity(model, clips: FidelityClips, batch_size: int = 24) -> tuple[dict, np.ndarray]:
    """Reconstruct `clips` through `model` (encode -> decode, eval mode, no grad) and score them.

    Returns the report (see `score_reconstructions`) and the reconstructions (N, T, H, W, 3) uint8.
    """
    import torch

    from modeling.pixels import frames_to_video, video_to_frames

    was_training = model.training
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(clips.frames), batch_size):
            video = frames_to_video(clips.frames[i : i + batch_size])
            outs.append(video_to_frames(model.decode(model.encode(video))))
    model.train(was_training)
    recon = np.concatenate(outs)
    return score_reconstructions(recon, clips.truths, clips.frames), recon


def summary_line(report: dict) -> str:
    """One line a person reads: 'one clean object 70/72, colour 69/72, shape 65/72, motion 70/72, 31.2 dB'."""
    n = report["clips"]
    parts = [f"{name} {round(report[key] * n)}/{n}" for key, name in
             (("clean", "one clean object"), ("colour", "colour"), ("shape", "shape"), ("motion", "motion"))]  # fmt: skip
    if report.get("psnr_db") is not None:
        parts.append(f"{report['psnr_db']:.1f} dB")
    return ", ".join(parts)


def strip_png(rows: list[np.ndarray], path, scale: int = 4) -> None:
    """Rows of (T, H, W, 3) uint8 clips -> one PNG: each clip's frames side by side, rows stacked with a gap,
    enlarged `scale` times without smoothing (so a person sees the pixels the model made)."""
    from PIL import Image

    gap = np.full((2, rows[0].shape[0] * rows[0].shape[2], 3), 255, np.uint8)
    lines = []
    for clip in rows:
        lines += [np.concatenate(list(clip), axis=1), gap]
    image = np.concatenate(lines[:-1], axis=0)
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(path)


def write_examples(
    out_dir, clips: FidelityClips, recon: np.ndarray, report: dict, count: int = 8
) -> list[dict]:
    """Input-over-reconstruction PNG strips for `count` clips: every clip the detector got wrong first (up to
    half), then clips spread over the colours and shapes. Returns [{file, truth, detected, ok}] (file names
    relative to `out_dir`)."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = report["per_clip"]
    ok = [r["colour"] and r["shape"] and r["motion"] for r in rows]
    wrong = [i for i, good in enumerate(ok) if not good][: count // 2]
    spread = [i for i in range(0, len(rows), max(1, len(rows) // count)) if i not in wrong]
    chosen = (wrong + spread)[:count]
    examples = []
    for n, i in enumerate(chosen):
        name = f"{n:02d}-{'-'.join(rows[i]['truth'])}.png"
        strip_png([clips.frames[i], recon[i]], out / name)
        examples.append({"file": name, "truth": rows[i]["truth"], "detected": rows[i]["detected"],
                         "clean": rows[i]["clean"], "ok": ok[i]})  # fmt: skip
    return examples
