"""What the Phenaki (`jobs.serve`) and the COMMIT (`jobs.serve_commit`) Serve deployments share: the one
`POST /generate` request model, base64 input decoding, and the video response with its X-Phenaki-* headers.

`GenerateRequest` holds both families' fields; each server refuses the other family's (PHENAKI_FIELDS,
COMMIT_FIELDS) with a 400 naming the fix, so a client that sends a task to a Phenaki checkpoint (or prompts
alone to a COMMIT one) learns what to change instead of getting a bare validation error.
"""

# No `from __future__ import annotations`: FastAPI resolves the route annotations of the deployment classes
# that use these models inside the replica.
import base64
import binascii
import tempfile
from pathlib import Path
from typing import Literal

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

MAX_B64_CHARS = 16 * 1024 * 1024  # image_b64 / video_b64 (about 12 MB decoded)
# Serve deployment options shared by the Phenaki and the COMMIT server.
DEPLOYMENT_OPTIONS = {"max_ongoing_requests": 8, "health_check_period_s": 10, "health_check_timeout_s": 60}
PHENAKI_FIELDS = ("image_b64", "context_frames", "schedule")  # request fields only a Phenaki server reads
COMMIT_FIELDS = ("task", "video_b64", "class_id")  # request fields only a COMMIT server reads


class GenerateRequest(BaseModel):
    """`POST /generate` for both families; each server refuses the other family's fields (PHENAKI_FIELDS,
    COMMIT_FIELDS) with a 400."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] | None = Field(
        default=None,
        description="Phenaki: one prompt = a clip, several = a story; COMMIT: at most one (text-conditioned models)",
    )
    task: str | None = Field(default=None, description="COMMIT: fp|fi|opc|opv|oph|opd|ipc|ipd|cg|cfp")
    video_b64: str | None = Field(
        default=None,
        description="COMMIT: the condition video (base64 mp4, or a still for fp/cfp; data: URL ok)",
    )
    class_id: int | str | None = Field(default=None, description="COMMIT cg/cfp: class id or name (-1: null)")
    seed: int = 0
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = None
    temperature: float | None = Field(default=None, ge=0)
    sample_temperature: float | None = Field(default=None, gt=0)
    context_frames: int | None = Field(default=None, ge=1)
    schedule: str | None = None
    image_b64: str | None = Field(default=None, description="a still to animate (base64, data: URL accepted)")
    format: Literal["mp4", "gif"] = "mp4"


def static_page(name: str) -> str:
    """A web page shipped in jobs/static/ (HTML, CSS and JS in one file, kept out of the Python)."""
    from importlib.resources import files

    return (files("jobs") / "static" / name).read_text(encoding="utf-8")


def decode_b64(data: str, field: str = "image_b64") -> bytes:
    """Base64 (optionally a `data:...;base64,` URL) -> bytes; ValueError naming `field` with a reason."""
    if len(data) > MAX_B64_CHARS:
        raise ValueError(f"{field} is larger than {MAX_B64_CHARS} characters")
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{field} is not valid base64: {e}") from e
    if not raw:
        raise ValueError(f"{field} is empty")
    return raw


def decode_b64_image(data: str):
    """Base64 (optionally a `data:image/...;base64,` URL) -> (H, W, 3) uint8; ValueError with a reason."""
    from pipelines.media import decode_image

    return decode_image(decode_b64(data, "image_b64"))


def other_family_fields(req: GenerateRequest, fields: tuple[str, ...]) -> list[str]:
    """The fields of `fields` the request set (to refuse a request meant for the other model family)."""
    return [name for name in fields if getattr(req, name) is not None]


def encode_video(frames, fps: float, fmt: str) -> tuple[bytes, str]:
    from pipelines.media import encode_mp4, write_gif

    if fmt == "mp4":
        return encode_mp4(frames, fps), "video/mp4"
    with tempfile.TemporaryDirectory() as tmp:
        path = write_gif(frames, Path(tmp) / "video.gif", fps)
        return path.read_bytes(), "image/gif"


def video_response(
    frames, fps: float, fmt: str, *, seconds: float, seed: int, stem: str, headers: dict
) -> Response:
    """The encoded video with the X-Phenaki-* headers both servers send, plus `headers`."""
    body, media_type = encode_video(frames, fps, fmt)
    headers = {
        "X-Phenaki-Seconds": f"{seconds:.3f}",
        "X-Phenaki-Duration": f"{len(frames) / fps:.3f}",
        "X-Phenaki-Frames": str(len(frames)),
        "X-Phenaki-Fps": f"{fps:g}",
        "X-Phenaki-Seed": str(seed),
        **headers,
        "Content-Disposition": f'inline; filename="{stem}-{seed}.{fmt}"',
    }
    return Response(content=body, media_type=media_type, headers=headers)


def replica_device(device: str | None, num_threads: int | None) -> str:
    """A replica's torch threads and device (cuda when it has one, else cpu)."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    return device or ("cuda" if torch.cuda.is_available() else "cpu")
