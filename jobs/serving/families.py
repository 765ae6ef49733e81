"""What the one Serve deployment knows per model family: how a request is checked against the loaded model
(`check` -> a `Work`, or a `RequestError` naming the field), which works may share a sampler call
(`Work.batch_key`), how a batch of works is sampled (`run`), and the model card (`info`).

`SERVED_FAMILIES` is keyed by `modeling.generators.generator_kind`, so a checkpoint picks its family here as it
does in `phenaki generate` and `phenaki eval`. Everything runs inside a sampler replica, next to the loaded
generator; nothing here imports Ray.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jobs.serving.api import COMMIT_KEYS, PHENAKI_ONLY, CommitRequest, Limits, PhenakiRequest
from modeling.names import CLASS_TASKS, TASKS

StepFn = Callable[[int, int], None]  # (steps done, steps in all) -> None; raises to cancel


class RequestError(ValueError):
    """A request the loaded model cannot serve: answered with `status` and a message naming `field`."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message, self.status = field_name, message, status

    def __reduce__(self):  # crosses a Serve handle: pickle by the constructor's arguments
        return RequestError, (self.field, self.message, self.status)


@dataclass
class Work:
    """A checked request, ready to sample: what `run` needs and nothing it would have to re-validate."""

    family: str
    fmt: str
    seed: int
    prompts: list[str]
    warnings: list[str]
    batch_key: tuple  # works with equal keys may share one sampler call
    params: dict = field(default_factory=dict)  # the family's call arguments


@dataclass
class Output:
    """One sampled video and the facts its job reports."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    fps: float
    seconds: float
    segments: list[dict] = field(default_factory=list)  # {"prompt", "start", "end"}
    task: str | None = None
    kept_fraction: float | None = None


def decode_b64(data: str, field_name: str, max_bytes: int) -> bytes:
    """Base64 (optionally a `data:...;base64,` URL) -> bytes; RequestError naming the field otherwise."""
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    if len(data) * 3 // 4 > max_bytes:
        raise RequestError(field_name, f"larger than the {max_bytes}-byte limit", status=413)
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(field_name, f"not valid base64 ({e})") from e
    if not raw:
        raise RequestError(field_name, "empty")
    return raw


def decode_still(data: str, field_name: str, limits: Limits) -> np.ndarray:
    """A base64 still -> (H, W, 3) uint8, refusing more than `limits.max_image_pixels` before decoding."""
    from pipelines.media import DecodeLimits, MediaError, MediaLimitError, decode_image

    raw = decode_b64(data, field_name, limits.max_body_bytes)
    try:
        return decode_image(raw, DecodeLimits(max_pixels=limits.max_image_pixels))
    except MediaLimitError as e:
        raise RequestError(field_name, f"{e} (max_image_pixels {limits.max_image_pixels})", status=413) from e
    except MediaError as e:
        raise RequestError(field_name, f"not an image we can decode ({e})") from e


def checked_prompts(req, generator, limits: Limits, *, most: int) -> tuple[list[str], list[str]]:
    """The request's prompts, stripped and checked against the limits -> (prompts, warnings about prompts the
    text encoder will truncate). Long prompts are never echoed back whole."""
    prompts = [p.strip() for p in req.prompt_list()]
    field_name = "prompt" if req.prompt is not None else "prompts"
    if len(prompts) > most:
        raise RequestError(field_name, f"{len(prompts)} prompts: at most {most} per request")
    for i, p in enumerate(prompts):
        if not p:
            raise RequestError(field_name, f"prompt {i} is empty; prompts must not be empty strings")
        if len(p) > limits.max_prompt_chars:
            raise RequestError(
                field_name, f"prompt {i} has {len(p)} characters; at most {limits.max_prompt_chars}"
            )
    warnings = []
    if prompts:
        encoder = generator.text_encoder
        for i, n in enumerate(encoder.token_counts(prompts)):
            if n > encoder.max_length:
                warnings.append(
                    f"prompt {i} has {n} encoder tokens; the model reads the first {encoder.max_length}"
                )
    return prompts, warnings


def check_steps(steps: int | None, limits: Limits) -> None:
    if steps is not None and steps > limits.max_steps:
        raise RequestError("steps", f"{steps}: at most {limits.max_steps}")


# ---- Phenaki (MaskGIT) -------------------------------------------------------------------------------------
class PhenakiFamily:
    name = "phenaki"

    @staticmethod
    def transformer(generator):
        return generator.transformer

    @staticmethod
    def takes_text(generator) -> bool:
        return True

    @staticmethod
    def check(generator, req, limits: Limits) -> Work:
        from modeling.pixels import resize_center_crop

        if isinstance(req, CommitRequest):
            given = [k for k in COMMIT_KEYS if getattr(req, k) is not None]
            raise RequestError(
                ", ".join(given),
                "COMMIT (MAGVIT) fields, but this endpoint serves a Phenaki (MaskGIT) checkpoint, which takes "
                "`prompt` or `prompts` (and optionally `image_b64`). For tasks, serve a COMMIT checkpoint "
                "(`transformer.family: commit`): phenaki serve --checkpoint COMMIT_CKPT",
            )
        check_steps(req.steps, limits)
        prompts, warnings = checked_prompts(req, generator, limits, most=limits.max_prompts)
        if not prompts:
            raise RequestError("prompts", "give at least one prompt (`prompt`, or `prompts` for a story)")
        try:
            cfg = generator.defaults.replace(
                seed=req.seed, steps=req.steps, guidance_scale=req.guidance_scale, temperature=req.temperature,
                sample_temperature=req.sample_temperature, context_frames=req.context_frames,
                schedule=req.schedule,
            )  # fmt: skip
            if len(prompts) > 1:
                generator.check_context_frames(cfg.context_frames)
        except ValueError as e:
            raise RequestError("context_frames" if "context" in str(e) else "sampling", str(e)) from e
        image = None
        if req.image_b64 is not None:
            image = resize_center_crop(decode_still(req.image_b64, "image_b64", limits), generator.image_size)
        # Clips batch together (rows keep their own seed and settings); a story's segments run in turn.
        key = ("clip", cfg.steps, cfg.schedule) if len(prompts) == 1 else ("story", uuid.uuid4().hex)
        return Work("phenaki", req.format, req.seed, prompts, warnings, key, {"cfg": cfg, "image": image})

    @staticmethod
    def run(generator, works: list[Work], on_step: StepFn | None) -> list[Output]:
        if works[0].batch_key[0] == "story":
            (work,) = works
            video = generator.generate(
                work.prompts, work.params["cfg"], image=work.params["image"], on_step=on_step
            )
            videos = [video]
        else:
            videos = generator.generate_clips(
                [w.prompts[0] for w in works],
                [w.params["cfg"] for w in works],
                images=[w.params["image"] for w in works],
                on_step=on_step,
            )
        return [
            Output(
                v.frames, v.fps, v.seconds, [{"prompt": p, "start": s, "end": e} for p, s, e in v.segments]
            )
            for v in videos
        ]

    @staticmethod
    def info(generator) -> dict:
        return {**generator.info(), "tasks": []}


# ---- MAGVIT COMMIT -----------------------------------------------------------------------------------------
class CommitFamily:
    name = "commit"

    @staticmethod
    def transformer(generator):
        return generator.model

    @staticmethod
    def takes_text(generator) -> bool:
        return bool(generator.model.text)

    @staticmethod
    def check(generator, req, limits: Limits) -> Work:
        from jobs.generate import read_condition

        if isinstance(req, PhenakiRequest):
            phenaki = [k for k in PHENAKI_ONLY if getattr(req, k) is not None]
            if phenaki:
                raise RequestError(
                    ", ".join(phenaki),
                    "Phenaki fields, but this endpoint serves a MAGVIT COMMIT checkpoint, which takes `task`, "
                    "`video_b64`, `class_id` (and a prompt on a text model). For text-to-video, stories and "
                    "animating stills, serve a Phenaki (MaskGIT) checkpoint",
                )
            raise RequestError(
                "task",
                f"this endpoint serves a MAGVIT COMMIT checkpoint: give `task` (one of {', '.join(TASKS)}) "
                "and, for every task but cg, `video_b64` (the condition video); text-to-video from prompts "
                "alone needs a Phenaki (MaskGIT) checkpoint",
            )
        task = req.task
        if task is None:
            raise RequestError("task", f"give `task`, one of {', '.join(TASKS)}")
        check_steps(req.steps, limits)
        text = bool(generator.model.text)
        if req.prompt_list() and not text:
            raise RequestError(
                "prompts",
                "this COMMIT model was trained without text (transformer.text: false): drop it"
                + (" and give `class_id`" if task in CLASS_TASKS else ""),
            )
        prompts, warnings = checked_prompts(req, generator, limits, most=1) if text else ([], [])
        try:
            class_id = generator.class_id(req.class_id)
        except ValueError as e:
            raise RequestError("class_id", str(e)) from e
        if class_id is not None and task not in CLASS_TASKS:
            raise RequestError(
                "class_id", f"conditions only {' and '.join(CLASS_TASKS)}, not {task}: drop it"
            )
        if task in CLASS_TASKS and class_id is None and not prompts:
            n = generator.model.cfg.num_classes
            names = f" or a name: {', '.join(generator.class_names)}" if generator.class_names else ""
            raise RequestError(
                "class_id",
                f"task {task} needs `class_id` ({f'0..{n - 1}' if n else 'no classes trained'}{names}; "
                f"-1: the null class){' or a prompt' if text else ''}",
            )
        frames = None
        if task != "cg":
            if req.video_b64 is None:
                raise RequestError(
                    "video_b64",
                    f"task {task} needs the condition video as base64 (an mp4, or a still image for fp/cfp; "
                    "a data: URL is fine)",
                )
            raw = decode_b64(req.video_b64, "video_b64", limits.max_body_bytes)
            try:
                frames = read_condition(generator, raw)
            except ValueError as e:  # MediaError
                raise RequestError("video_b64", f"neither a video nor an image we can decode ({e})") from e
        params = {
            "task": task, "frames": frames, "class_ids": None if class_id is None else [class_id],
            "prompts": prompts or None, "seed": req.seed, "guidance_scale": req.guidance_scale or 0.0,
            "steps": req.steps, "temperature": req.temperature, "sample_temperature": req.sample_temperature,
        }  # fmt: skip
        # COMMIT's generate takes one task, class and seed per call: each request samples alone.
        return Work("commit", req.format, req.seed, prompts, warnings, ("commit", uuid.uuid4().hex), params)

    @staticmethod
    def run(generator, works: list[Work], on_step: StepFn | None) -> list[Output]:
        (work,) = works
        steps = work.params["steps"] or generator.cfg.steps
        out = generator.generate(
            **work.params, on_step=None if on_step is None else (lambda done: on_step(done, steps))
        )
        kept = out.kept_fraction()
        return [
            Output(out.frames[0], generator.fps, out.seconds, task=out.task,
                   kept_fraction=None if np.isnan(kept) else float(kept))
        ]  # fmt: skip

    @staticmethod
    def info(generator) -> dict:
        model, cfg = generator.model, generator.cfg
        return {
            **generator.meta,
            "tasks": list(TASKS),
            "video_tasks": [t for t in TASKS if t != "cg"],  # need video_b64
            "class_tasks": list(CLASS_TASKS),
            "num_classes": model.cfg.num_classes,
            "class_names": generator.class_names,
            "text": bool(model.text),
            "text_encoder": generator.record.text_encoder if model.text else None,
            "num_frames": generator.num_frames,
            "fps": generator.fps,
            "clip_seconds": generator.num_frames / generator.fps,
            "image_size": generator.image_size,
            "token_grid": list(generator.grid),
            "codebook_size": model.cfg.codebook_size,
            "fp_cond_frames": cfg.fp_cond_frames,
            "fi_cond_frames": cfg.fi_cond_frames,
            "defaults": {
                "steps": cfg.steps,
                "temperature": cfg.temperature,
                "sample_temperature": cfg.sample_temperature,
                "guidance_scale": 0.0,
                "confidence": cfg.confidence,
            },  # fmt: skip
            "transformer_params": sum(p.numel() for p in model.parameters()),
            "tokenizer_params": sum(p.numel() for p in generator.tokenizer.parameters()),
            "device": str(generator.device),
        }


# by `modeling.generators.generator_kind` of the checkpoint
SERVED_FAMILIES = {"maskgit": PhenakiFamily, "commit": CommitFamily}


def family_of(generator) -> type[PhenakiFamily] | type[CommitFamily]:
    return SERVED_FAMILIES[generator.kind]
