"""Prompt adherence of generated videos, scored with the deterministic detector.

A record is `{"prompts": [str, ...], "file": path}` and optionally `"segments": [[start, end], ...]`:
half-open frame ranges, one per prompt, for a story whose segments were generated from successive
prompts. With segments, each is scored against its own prompt; without, the first prompt is scored
against the whole video (the other prompts are ignored). A file that cannot be decoded scores False
on everything its prompts ask for, since a model that writes garbage did not follow the prompt.

The summary's headline is `clean`: the fraction of segments that show one clean object
(`pipelines.detector.clean_object`). Colour / shape / motion count a segment only when it is clean and
the attribute matches (each over the segments whose prompt names that attribute); `all` when every named
one does; `colour_every_frame` when every frame shows the asked colour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.detector import adherence_of, detect, parse_caption
from pipelines.media import MediaError, decode_video

ATTRIBUTES = ("colour", "shape", "motion")
SCORES = ("clean", *ATTRIBUTES, "colour_every_frame")  # what each segment is scored on, headline first


def _segments(record: dict[str, Any], num_frames: int) -> list[tuple[str, int, int]]:
    """(prompt, start, end) to score for one record."""
    prompts: Sequence[str] = record["prompts"]
    if not prompts:
        raise ValueError(f"record for {record.get('file')!r} has no prompts")
    bounds = record.get("segments")
    if bounds is None:
        return [(prompts[0], 0, num_frames)]
    if len(bounds) != len(prompts):
        raise ValueError(f"{len(bounds)} segments for {len(prompts)} prompts in {record.get('file')!r}")
    return [(p, int(s), int(e)) for p, (s, e) in zip(prompts, bounds, strict=True)]


def _failed(prompt: str) -> dict[str, bool | None]:
    want = parse_caption(prompt)
    failed: dict[str, bool | None] = {"clean": False}
    failed |= {a: (None if getattr(want, a) is None else False) for a in ATTRIBUTES}
    failed["colour_every_frame"] = None if want.colour is None else False
    return failed


def evaluate_record(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-segment results: prompt, file, start, end, colour/shape/motion (bool | None), detected, error."""
    path = os.fspath(record["file"])
    try:
        frames: np.ndarray | None = decode_video(path).frames
        error = None
    except (MediaError, FileNotFoundError) as e:
        frames, error = None, str(e)
    if frames is None:
        # Undecodable: score the prompts as they would be split, with everything they ask failing.
        segs = _segments(record, 0)
        return [
            {"file": path, "prompt": p, "start": s, "end": e, **_failed(p), "detected": None, "error": error}
            for p, s, e in segs
        ]
    results = []
    for prompt, start, end in _segments(record, len(frames)):
        clip = frames[start:end]
        if len(clip) == 0:
            results.append(
                {"file": path, "prompt": prompt, "start": start, "end": end, **_failed(prompt),
                 "detected": None, "error": f"empty segment [{start}, {end}) of {len(frames)} frames"}
            )  # fmt: skip
            continue
        det = detect(clip)
        results.append(
            {"file": path, "prompt": prompt, "start": start, "end": end, **adherence_of(parse_caption(prompt), det),
             "detected": {"colour": det.colour, "shape": det.shape, "motion": det.motion,
                          "clean_frames": round(det.clean_frames, 3)}, "error": None}
        )  # fmt: skip
    return results


def summarise(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Fractions over segments: per attribute (where asked), and all asked attributes at once."""

    def fraction(values: list[bool]) -> float | None:
        return float(np.mean(values)) if values else None

    summary: dict[str, Any] = {"num_segments": len(segments)}
    for a in SCORES:
        asked = [bool(s[a]) for s in segments if s.get(a) is not None]
        summary[a] = fraction(asked)
        summary[f"num_{a}"] = len(asked)
    summary["all"] = fraction(
        [
            all(s[a] for a in ATTRIBUTES if s[a] is not None)
            for s in segments
            if any(s[a] is not None for a in ATTRIBUTES)
        ]
    )
    return summary


def load_records(results_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a demo/generation results.json (a list, or a dict with `records`), files made absolute
    (they are written relative to the JSON's directory)."""
    import json
    from pathlib import Path

    path = Path(results_path)
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    return [{**r, "file": str((path.parent / r["file"]).resolve())} for r in records]


def evaluate_videos(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Score generated videos against their prompts; see the module docstring for the record format.

    Returns the `summarise` fractions plus `num_videos`, `num_errors` (segments that could not be
    decoded or were empty; they count as failures) and the per-segment results under `segments`.
    """
    segments = [seg for record in records for seg in evaluate_record(record)]
    return {
        "num_videos": len(records),
        "num_errors": sum(s["error"] is not None for s in segments),
        **summarise(segments),
        "segments": segments,
    }


def prompt_suite() -> dict[str, list[tuple[str, str, str]]]:
    """The compositions a model of the synthetic world is judged on: every purple triple (purple is only in
    stills) and the held-out triples (never together in a video)."""
    from pipelines.synth import HELD_OUT, IMAGE_ONLY_COLOURS, MOTIONS, SHAPES

    purple = [(c, s, m) for c in IMAGE_ONLY_COLOURS for s in SHAPES for m in MOTIONS]
    return {"held-out": list(HELD_OUT), "purple": purple}


def generated_adherence(
    generator, seeds: int, cfg, videos_dir: str | os.PathLike
) -> dict[str, dict[str, Any]]:
    """Generate every `prompt_suite` composition with `seeds` seeds (a `modeling.generation.VideoGenerator`
    and its `SamplingConfig`), write each as H.264 like the demo does, and summarise per kind."""
    import json
    import logging
    import time
    from pathlib import Path

    from pipelines.media import encode_mp4
    from pipelines.ray_utils import progress_note
    from pipelines.synth import caption_for

    log = logging.getLogger("phenaki")
    videos = Path(videos_dir)
    videos.mkdir(parents=True, exist_ok=True)
    suite = prompt_suite()
    total, done, started = seeds * sum(len(t) for t in suite.values()), 0, time.monotonic()
    log.info(
        "generating %d videos (%d compositions x %d seeds) into %s", total, total // seeds, seeds, videos
    )
    summary, every_record = {}, []
    for kind, triples in suite.items():
        records = []
        for c, s, m in triples:
            prompt = caption_for(c, s, m, 0)
            for seed in range(seeds):
                video = generator.generate([prompt], cfg.replace(seed=seed))
                path = videos / f"{kind}-{c}-{s}-{m}-seed{seed}.mp4"
                path.write_bytes(encode_mp4(video.frames, video.fps))
                records.append({"prompts": [prompt], "file": str(path)})
                done += 1
                if done % max(total // 10, 1) == 0 or done == total:  # about ten lines, however many videos
                    log.info("generated %s", progress_note(done, total, time.monotonic() - started, "videos"))
        summary[kind] = {k: v for k, v in evaluate_videos(records).items() if k != "segments"}
        every_record += records
    # the videos with their prompts, so `phenaki eval --results` (and the FVD / CLIP metrics) can read them again
    (videos / "results.json").write_text(
        json.dumps({"records": [{**r, "file": Path(r["file"]).name} for r in every_record]}, indent=2)
    )
    return summary
