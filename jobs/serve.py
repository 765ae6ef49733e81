"""`phenaki serve`: the text-to-video sampler as a Ray Serve HTTP endpoint (FastAPI ingress).

The checkpoint's `kind` picks the server: a Phenaki (MaskGIT) checkpoint is served here, a MAGVIT COMMIT one
by `jobs.serve_commit` (the ten tasks on a video sent in the request); both take the one `GenerateRequest`
and refuse the other family's fields with a 400 that names the fix.

Routes: `GET /` a self-contained web page, `GET /healthz` (status, family, tasks), `GET /info` (model facts
and sampling defaults),
`POST /generate` with JSON `{"prompts": [...], "seed": 0, "steps": 12, "guidance_scale": 6.0,
"temperature": 4.5, "context_frames": 5, "image_b64": null, "format": "mp4" | "gif"}` -> the video bytes with
headers `X-Phenaki-Seconds` (generation wall time), `X-Phenaki-Duration` (video seconds), `X-Phenaki-Frames`,
`X-Phenaki-Fps` and `X-Phenaki-Segments` (JSON list of `{"prompt", "start", "end"}` frame ranges).
Several prompts make a story; `image_b64` animates a still. Bad input gets a 4xx with a message. A COMMIT
checkpoint takes `{"task": "fp", "video_b64": ..., "class_id": ...}` instead (jobs/serve_commit.py).

From Python: `url = start(checkpoint, port=8000)` ... `stop()`.
"""

# No `from __future__ import annotations`: FastAPI must see the real request-model class in the route
# signatures of the (pickled-by-value) deployment class, not a string it cannot resolve in the replica.
import argparse
import json
import math
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict
from ray import serve

from jobs.runtime import WORKER_ENV, log, run_command
from jobs.serve_commit import CommitServer
from jobs.serve_common import (
    COMMIT_FIELDS,
    DEPLOYMENT_OPTIONS,
    GenerateRequest,
    decode_b64_image,
    other_family_fields,
    replica_device,
    static_page,
    video_response,
)
from modeling.generators import generator_class, generator_kind
from modeling.masking import SCHEDULES

APP_NAME = "phenaki"
_started_ray = False

# The page is defined before the deployment class: Serve pickles the class with the globals it sees.
INDEX_HTML = static_page("phenaki.html")  # jobs/static/phenaki.html

app = FastAPI(
    title="phenaki-ray", description="Phenaki text-to-video (MaskGIT over C-ViViT tokens) on Ray Serve"
)


@serve.deployment(**DEPLOYMENT_OPTIONS)
@serve.ingress(app)
class PhenakiServer:
    """One replica = one loaded VideoGenerator; requests are served one at a time per replica."""

    def __init__(
        self,
        checkpoint: str,
        *,
        max_segments: int = 8,
        max_steps: int = 64,
        device: str | None = None,
        num_threads: int | None = None,
    ):
        from modeling.generation import VideoGenerator

        device = replica_device(device, num_threads)
        self.generator = VideoGenerator.from_checkpoint(checkpoint, device=device)
        _ = self.generator.text_encoder  # load it now, not on the first request
        self.max_segments = max_segments
        self.max_steps = max_steps
        # One request at a time per replica: HF fast tokenizers are not thread-safe, and CPU is scarce.
        self.lock = threading.Lock()

    @app.get("/", response_class=HTMLResponse)
    def index(self) -> str:
        return INDEX_HTML

    @app.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "family": "phenaki", "tasks": []}

    @app.get("/info")
    def info(self) -> dict:
        return {
            **self.generator.info(),
            "family": "phenaki",
            "tasks": [],
            "max_segments": self.max_segments,
            "max_steps": self.max_steps,
            "formats": ["mp4", "gif"],
        }

    @app.post("/generate")
    def generate(self, req: GenerateRequest) -> Response:
        commit = other_family_fields(req, COMMIT_FIELDS)
        if commit:
            raise HTTPException(
                400,
                f"{', '.join(commit)}: COMMIT (MAGVIT) fields, but this endpoint serves a Phenaki (MaskGIT) "
                "checkpoint, which takes `prompts` (and optionally `image_b64`). For tasks, serve a COMMIT "
                "checkpoint (`transformer.family: commit`): phenaki serve --checkpoint COMMIT_CKPT",
            )
        prompts = [p.strip() for p in req.prompts or []]
        if not prompts:
            raise HTTPException(400, "prompts must hold at least one prompt")
        if any(not p for p in prompts):
            raise HTTPException(400, "prompts must not be empty strings")
        if len(prompts) > self.max_segments:
            raise HTTPException(
                400, f"{len(prompts)} prompts: at most {self.max_segments} segments per request"
            )
        if req.steps is not None and req.steps > self.max_steps:
            raise HTTPException(400, f"steps={req.steps}: at most {self.max_steps}")
        try:
            cfg = self.generator.defaults.replace(
                seed=req.seed,
                steps=req.steps,
                guidance_scale=req.guidance_scale,
                temperature=req.temperature,
                sample_temperature=req.sample_temperature,
                context_frames=req.context_frames,
                schedule=req.schedule,
            )
            if len(prompts) > 1:
                self.generator.check_context_frames(cfg.context_frames)
            if cfg.schedule not in SCHEDULES:
                raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")
            image = decode_b64_image(req.image_b64) if req.image_b64 is not None else None
        except ValueError as e:
            raise HTTPException(400, str(e)) from e
        with self.lock:
            video = self.generator.generate(prompts, cfg, image=image)
        segments = [{"prompt": p, "start": s, "end": e} for p, s, e in video.segments]
        return video_response(
            video.frames, video.fps, req.format, seconds=video.seconds, seed=cfg.seed, stem="phenaki",
            headers={"X-Phenaki-Segments": json.dumps(segments)},  # ASCII-escaped, so header-safe
        )  # fmt: skip


# by `modeling.generators.generator_kind` of the checkpoint
SERVERS = {"maskgit": PhenakiServer, "commit": CommitServer}
EXAMPLE_REQUESTS = {
    "maskgit": {"prompts": ["a red circle moving left"], "seed": 0},
    "commit": {"task": "fp", "video_b64": "<base64 of input.mp4>", "seed": 0},
}


def build_app(
    checkpoint: str | os.PathLike,
    *,
    max_replicas: int = 1,
    num_cpus: float = 0.5,
    max_segments: int = 8,
    max_steps: int = 64,
    device: str | None = None,
    num_gpus: float = 0.0,
) -> serve.Application:
    """The Serve application: autoscaled replicas (1..max_replicas, ~2 ongoing requests each) of the server
    for the checkpoint's family (`SERVERS`, by the kind in its config.yaml)."""
    if max_replicas < 1:
        raise ValueError(f"max_replicas must be >= 1, got {max_replicas}")
    checkpoint = Path(checkpoint).resolve()
    server = SERVERS[generator_kind(checkpoint)]
    return server.options(
        autoscaling_config={
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": max_replicas,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 10,
            "downscale_delay_s": 120,
        },
        ray_actor_options={
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        },
    ).bind(
        str(checkpoint),
        max_segments=max_segments,
        max_steps=max_steps,
        device=device,
        num_threads=max(1, math.ceil(num_cpus)),
    )


class AppArgs(BaseModel):
    """The `args` of a Serve config file (`serve run`, a RayService's serveConfigV2): what build_app takes.
    Serve hands a builder with one pydantic-annotated parameter its args validated, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str  # a local path (on a cluster: the bucket mounted on every node)
    max_replicas: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    max_segments: int = 8
    max_steps: int = 64
    device: str | None = None


def app_builder(args: AppArgs) -> serve.Application:
    """`import_path: jobs.serve:app_builder` for config-driven deployments (infra/kuberay/rayservice.yaml)."""
    return build_app(args.checkpoint, **args.model_dump(exclude={"checkpoint"}))


def wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(
        f"{url}/healthz did not answer within {timeout_s:.0f} s (last error: {last}). If Serve was already "
        "running on this Ray cluster with other HTTP options, call stop() (serve.shutdown()) first."
    )


def start(
    checkpoint: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_replicas: int = 1,
    num_cpus: float = 0.5,
    max_segments: int = 8,
    max_steps: int = 64,
    device: str | None = None,
    num_gpus: float = 0.0,
    address: str | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Start Serve (on the connected Ray, else a new local one) with the app at `/`; returns the base URL
    once `/healthz` answers."""
    global _started_ray
    import ray

    from jobs.runtime import init_ray

    if not ray.is_initialized():
        init_ray(address)
        _started_ray = True
    serve.start(http_options={"host": host, "port": port})
    running = _running_http_options()
    if running is not None and (running[0], running[1]) != (host, port):
        raise RuntimeError(
            f"Serve already runs on this Ray cluster with HTTP on {running[0]}:{running[1]}, not {host}:{port}; "
            "call jobs.serve.stop() first (or start with that host and port)"
        )
    serve.run(
        build_app(
            checkpoint,
            max_replicas=max_replicas,
            num_cpus=num_cpus,
            max_segments=max_segments,
            max_steps=max_steps,
            device=device,
            num_gpus=num_gpus,
        ),
        name=APP_NAME,
        route_prefix="/",
        blocking=False,
    )
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    wait_healthy(url, timeout_s)
    return url


def _running_http_options() -> tuple[str, int] | None:
    """(host, port) Serve's proxies were started with; None if unknown (a private Serve API, used defensively)."""
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config
        return str(config.host), int(config.port)
    except Exception:  # noqa: BLE001 - best effort only
        return None


def stop() -> None:
    """Shut Serve down (all its apps); also Ray if `start` started it."""
    global _started_ray
    import ray

    if ray.is_initialized():
        serve.shutdown()
        if _started_ray:
            ray.shutdown()
            _started_ray = False


# ---- CLI ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="transformer checkpoint dir (Phenaki or COMMIT; holds tokenizer/)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on all interfaces)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-replicas", type=int, default=1, help="autoscaling upper bound")
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPUs reserved per replica")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (0: CPU)")
    parser.add_argument(
        "--max-segments", type=int, default=8, help="most prompts (story segments) per request"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)"
    )


def main(args: argparse.Namespace) -> int:
    url = start(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_replicas=args.max_replicas,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        max_segments=args.max_segments,
        device="cuda" if args.num_gpus > 0 else None,
        address=args.address,
    )
    kind = generator_kind(args.checkpoint)
    name, body = generator_class(kind).title, json.dumps(EXAMPLE_REQUESTS[kind])
    print(f"{name} is serving at {url}/  (open it in a browser; Ctrl-C stops)")
    print(
        f"  curl -s -X POST {url}/generate -H 'Content-Type: application/json' -d '{body}' -o video.mp4 -D -"
    )

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill`, `ray job stop`, container shutdown: stop cleanly too
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.serve", description=__doc__, allow_abbrev=False)
    add_arguments(parser)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_command("python -m jobs.serve", main, build_parser().parse_args()))
