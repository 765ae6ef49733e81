"""The `/v1` HTTP contract of `phenaki serve`: request and response models, and the server's limits.

One request type, `VideoRequest`, is a union discriminated by family: a body with `task` (or `video_b64`,
`class_id`) is a MAGVIT COMMIT request, any other a Phenaki one. Each side forbids unknown fields, so a typo
fails with 422 naming it; a request of the family the loaded model is not gets a 400 naming the fix (one
deployment serves either family, `jobs.serving.families`). Ranges that hold for every model (seed, guidance,
temperatures, formats) are in the schema, so OpenAPI shows them; limits an operator sets (`Limits`: prompts,
prompt length, steps, body and media size) are checked by the server and answered with 400 / 413 naming the
field and the limit.

No `from __future__ import annotations`: FastAPI reads these annotations inside the Serve replica.
"""

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from modeling.names import SCHEDULE_NAMES, TASKS  # not modeling.commit_tasks / masking: no torch here

SEED_MAX = (
    2**63 - 1
)  # torch.Generator.manual_seed takes 64-bit seeds; JSON clients may lose digits past 2**53
FORMATS = ("mp4", "webm", "gif")
COMMIT_KEYS = ("task", "video_b64", "class_id")  # a body holding any of these is a COMMIT request
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED = ("succeeded", "failed", "cancelled")


class Limits(BaseModel):
    """What one replica accepts and keeps; every field is a `phenaki serve` flag and a Serve config arg."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_prompts: int = Field(8, ge=1, description="prompts per request (story segments)")
    max_prompt_chars: int = Field(500, ge=1, description="characters per prompt")
    max_steps: int = Field(64, ge=1, description="sampling steps per segment")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="request body size")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="pixels of image_b64 / a still video_b64")
    max_batch: int = Field(8, ge=1, description="requests merged into one sampler batch")
    batch_wait_s: float = Field(0.05, ge=0, description="how long a batch waits to fill")
    max_queued: int = Field(64, ge=1, description="jobs waiting across the app before 503 Retry-After")
    request_timeout_s: float = Field(
        300.0, gt=0, description="POST /v1/videos/sync waits this long, then 408"
    )
    job_timeout_s: float = Field(
        1800.0, gt=0, description="a job not done this long after submission is cancelled"
    )
    result_ttl_s: float = Field(3600.0, gt=0, description="finished jobs and their videos are kept this long")
    max_result_bytes: int = Field(1 << 30, ge=1, description="videos kept in all; the oldest go first")
    rate_per_minute: float = Field(
        0.0, ge=0, description="requests per API key per minute per ingress; 0: off"
    )


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = Field(0, ge=0, le=SEED_MAX, description="same seed, same request: the same video")
    steps: int | None = Field(None, ge=1, description="sampling steps (per segment); default: the model's")
    guidance_scale: float | None = Field(None, ge=0, le=100, description="classifier-free guidance lambda")
    temperature: float | None = Field(None, ge=0, le=100, description="choice (Gumbel) temperature")
    sample_temperature: float | None = Field(None, gt=0, le=100, description="softmax temperature of draws")
    format: Literal[FORMATS] = "mp4"  # jobs.serving formats = pipelines.media.VIDEO_FORMATS
    prompt: str | None = Field(None, description="one prompt (or give `prompts`)")
    prompts: list[str] | None = Field(None, description="Phenaki: several prompts make a story")

    @model_validator(mode="after")
    def _one_prompt_field(self):
        if self.prompt is not None and self.prompts is not None:
            raise ValueError("give `prompt` or `prompts`, not both")
        return self

    def prompt_list(self) -> list[str]:
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])


class PhenakiRequest(_Sampling):
    """Text to video with a Phenaki (MaskGIT) model: one prompt is a clip, several a story; `image_b64`
    animates a still (its first frame is kept)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompts": ["a red circle moving left", "a blue square moving up"]}]}
    )
    image_b64: str | None = Field(None, description="a still to animate: base64 or a data: URL")
    context_frames: int | None = Field(None, ge=1, description="frames carried into the next story segment")
    schedule: Literal[SCHEDULE_NAMES] | None = Field(None, description="mask schedule")  # type: ignore[valid-type]


class CommitRequest(_Sampling):
    """One of MAGVIT's ten COMMIT tasks on a condition video (every task but cg needs `video_b64`)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"task": "fp", "video_b64": "<base64 of input.mp4>", "seed": 0}]}
    )
    task: Literal[TASKS] | None = Field(None, description="fp|fi|opc|opv|oph|opd|ipc|ipd|cg|cfp")  # type: ignore[valid-type]
    video_b64: str | None = Field(None, description="the condition video (base64 mp4, or a still for fp/cfp)")
    class_id: int | str | None = Field(None, description="cg/cfp: a class id or name (-1: the null class)")


PHENAKI_ONLY = ("image_b64", "context_frames", "schedule")  # fields only a Phenaki request has


def request_family(body: Any) -> str:
    """The tag of `VideoRequest`: `commit` when the body holds a COMMIT field, else `phenaki`."""
    if isinstance(body, dict):
        return "commit" if any(key in body for key in COMMIT_KEYS) else "phenaki"
    return "commit" if isinstance(body, CommitRequest) else "phenaki"


VideoRequest = Annotated[
    Union[Annotated[PhenakiRequest, Tag("phenaki")], Annotated[CommitRequest, Tag("commit")]],  # noqa: UP007
    Discriminator(request_family),
]


class JobError(BaseModel):
    code: Literal["bad_request", "timeout", "overloaded", "internal", "cancelled", "expired"]
    message: str


class Segment(BaseModel):
    prompt: str
    start: int  # first frame
    end: int  # one past the last frame


class Job(BaseModel):
    """`GET /v1/videos/{id}`: where a job stands."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "6f1c...", "status": "running", "progress": 0.42, "family": "phenaki",
                 "created_at": 1765000000.0, "queue_seconds": 0.1, "result_url": None}
            ]
        }
    )  # fmt: skip
    id: str
    status: JobStatus
    progress: float = Field(0.0, ge=0, le=1, description="share of sampling steps done")
    family: Literal["phenaki", "commit"]
    format: str = "mp4"
    seed: int = 0
    prompts: list[str] = Field(default_factory=list, description="as sampled (after any truncation)")
    warnings: list[str] = Field(default_factory=list, description="e.g. prompts truncated to the encoder")
    created_at: float = Field(description="unix seconds")
    started_at: float | None = None
    finished_at: float | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    batch_size: int | None = Field(None, description="requests that shared the sampler call")
    result_url: str | None = None
    bytes: int | None = None
    frames: int | None = None
    fps: float | None = None
    segments: list[Segment] = Field(default_factory=list)
    task: str | None = None
    kept_fraction: float | None = Field(None, description="COMMIT: share of condition tokens kept")
    error: JobError | None = None


class ModelCard(BaseModel):
    """`GET /v1/models`: the loaded model and what requests it takes."""

    id: str
    family: Literal["phenaki", "commit"]
    title: str
    tasks: list[str]
    formats: list[str]
    limits: Limits
    info: dict = Field(description="model facts and sampling defaults")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
