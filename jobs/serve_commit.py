"""MAGVIT COMMIT checkpoints on the Serve endpoint: the ten tasks over HTTP (`jobs.serve` picks this server
when the checkpoint's kind is `commit`; `phenaki serve --checkpoint COMMIT_CKPT`).

Routes: `GET /` a small web page, `GET /healthz` (`{"status", "family": "commit", "tasks"}`), `GET /info`
(model facts, classes, decoding defaults), `POST /generate` with the shared `GenerateRequest`:

    {"task": "fp", "video_b64": "<base64 mp4, or a still for fp/cfp; data: URL accepted>",
     "class_id": 2 | "left" | null, "prompts": ["one prompt"] | null, "seed": 0, "steps": 12,
     "temperature": 4.5, "sample_temperature": 1.0, "guidance_scale": 0.0, "format": "mp4" | "gif"}

`task` is one of fp|fi|opc|opv|oph|opd|ipc|ipd|cg|cfp. Every task but cg needs `video_b64`: it is resized and
centre-cropped to the tokenizer's size and cut to the checkpoint's clip length (a shorter input holds its last
frame), exactly as `phenaki generate --task T --input VIDEO` reads a file (`jobs.generate.read_condition`); cg
ignores it. cg/cfp need `class_id` (or a prompt, on a text-conditioned model); `class_id` on any other task,
prompts on a model trained without text, more than one prompt and the Phenaki fields (`image_b64`,
`context_frames`, `schedule`) are refused with a 400 naming the fix. The answer is the video with the shared
X-Phenaki-* headers plus `X-Phenaki-Task` and `X-Phenaki-Kept` (the share of condition tokens the output
kept, `CommitOutput.kept_fraction`; nan for cg). Same seed, same request: the same video as
`CommitGenerator.generate` gives locally.
"""

# No `from __future__ import annotations`: FastAPI must see the real request-model class in the route
# signature of the deployment class (see jobs/serve.py).
import threading

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from ray import serve

from jobs.generate import read_condition
from jobs.serve_common import (
    DEPLOYMENT_OPTIONS,
    PHENAKI_FIELDS,
    GenerateRequest,
    decode_b64,
    other_family_fields,
    replica_device,
    static_page,
    video_response,
)
from modeling.commit_tasks import CLASS_TASKS, TASKS

# Defined before the deployment class, like jobs/serve.py's page.
INDEX_HTML = static_page("commit.html")  # jobs/static/commit.html

app = FastAPI(
    title="phenaki-ray (MAGVIT COMMIT)", description="MAGVIT COMMIT multi-task video generation on Ray Serve"
)


def commit_call(generator, req: GenerateRequest, *, max_steps: int) -> dict:
    """Check a request against the loaded `CommitGenerator` -> the keyword arguments of its `generate`;
    ValueError with the reason otherwise (the server answers 400 with it)."""
    phenaki = other_family_fields(req, PHENAKI_FIELDS)
    if phenaki:
        raise ValueError(
            f"{', '.join(phenaki)}: Phenaki fields, but this endpoint serves a MAGVIT COMMIT checkpoint, which "
            "takes `task`, `video_b64`, `class_id` (and `prompts` on a text model). For text-to-video, stories "
            "and animating stills, serve a Phenaki (MaskGIT) checkpoint"
        )
    if req.task is None:
        raise ValueError(
            f"this endpoint serves a MAGVIT COMMIT checkpoint: give `task` (one of {', '.join(TASKS)}) and, for "
            "every task but cg, `video_b64` (the condition video); text-to-video from prompts alone needs a "
            "Phenaki (MaskGIT) checkpoint"
        )
    task = req.task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if req.steps is not None and req.steps > max_steps:
        raise ValueError(f"steps={req.steps}: at most {max_steps}")
    prompts = [p.strip() for p in req.prompts or []]
    if len(prompts) > 1:
        raise ValueError(
            f"{len(prompts)} prompts: a COMMIT request takes at most one (stories are Phenaki's)"
        )
    if any(not p for p in prompts):
        raise ValueError("prompts must not be empty strings")
    text = bool(generator.model.text)
    if prompts and not text:
        raise ValueError(
            "this COMMIT model was trained without text (transformer.text: false): drop `prompts`"
            + (" and give `class_id`" if task in CLASS_TASKS else "")
        )
    class_id = generator.class_id(req.class_id)  # a name or an id; out of range -> ValueError
    if class_id is not None and task not in CLASS_TASKS:
        raise ValueError(f"class_id conditions only {' and '.join(CLASS_TASKS)}, not {task}: drop it")
    if task in CLASS_TASKS and class_id is None and not prompts:
        n = generator.model.cfg.num_classes
        names = f" or a name: {', '.join(generator.class_names)}" if generator.class_names else ""
        raise ValueError(
            f"task {task} needs `class_id` ({f'0..{n - 1}' if n else 'no classes trained'}{names}; "
            f"-1: the null class){' or a prompt' if text else ''}"
        )
    frames = None
    if task != "cg":
        if req.video_b64 is None:
            raise ValueError(
                f"task {task} needs `video_b64`: the condition video as base64 (an mp4, or a still image for "
                "fp/cfp; a data: URL is fine)"
            )
        raw = decode_b64(req.video_b64, "video_b64")
        try:
            frames = read_condition(generator, raw)
        except ValueError as e:  # MediaError
            raise ValueError(f"video_b64 is neither a video nor an image we can decode: {e}") from e
    return {
        "task": task,
        "frames": frames,
        "class_ids": None if class_id is None else [class_id],
        "prompts": prompts or None,
        "seed": req.seed,
        "guidance_scale": req.guidance_scale or 0.0,
        "steps": req.steps,
        "temperature": req.temperature,
        "sample_temperature": req.sample_temperature,
    }


def commit_info(generator) -> dict:
    """Model facts and decoding defaults of a loaded `CommitGenerator` (`GET /info`)."""
    model, cfg = generator.model, generator.cfg
    return {
        **generator.meta,
        "family": "commit",
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
        },
        "transformer_params": sum(p.numel() for p in model.parameters()),
        "tokenizer_params": sum(p.numel() for p in generator.tokenizer.parameters()),
        "device": str(generator.device),
    }


@serve.deployment(**DEPLOYMENT_OPTIONS)
@serve.ingress(app)
class CommitServer:
    """One replica = one loaded `CommitGenerator`; requests are served one at a time per replica."""

    def __init__(
        self,
        checkpoint: str,
        *,
        max_segments: int = 1,  # what `build_app` passes every family; a COMMIT request takes one prompt
        max_steps: int = 64,
        device: str | None = None,
        num_threads: int | None = None,
    ):
        from modeling.commit_generation import CommitGenerator

        device = replica_device(device, num_threads)
        self.generator = CommitGenerator.from_checkpoint(checkpoint, device=device)
        if self.generator.model.text:
            self.generator.encode_text(["warm-up"])  # load the text encoder now, not on the first request
        self.max_steps = max_steps
        self.lock = threading.Lock()  # HF fast tokenizers are not thread-safe, and CPU is scarce

    @app.get("/", response_class=HTMLResponse)
    def index(self) -> str:
        return INDEX_HTML

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "family": "commit", "tasks": list(TASKS)}

    @app.get("/info")
    def info(self) -> dict:
        return {**commit_info(self.generator), "max_steps": self.max_steps, "formats": ["mp4", "gif"]}

    @app.post("/generate")
    def generate(self, req: GenerateRequest) -> Response:
        try:
            call = commit_call(self.generator, req, max_steps=self.max_steps)
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        with self.lock:
            out = self.generator.generate(**call)
        task = call["task"]
        return video_response(
            out.frames[0], self.generator.fps, req.format, seconds=out.seconds, seed=req.seed,
            stem=f"commit-{task}", headers={"X-Phenaki-Task": task, "X-Phenaki-Kept": f"{out.kept_fraction():.4f}"},
        )  # fmt: skip
