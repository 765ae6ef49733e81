"""The `phenaki serve` application: three deployments, one config.

    gateway (FastAPI ingress, jobs.serving.gateway)  ->  sampler (1..max_replicas, autoscaled, batched)
                        \\______________________________> jobs (the JobBoard: one shared record)

One sampler deployment serves either model family (the checkpoint's kind picks `jobs.serving.families`), so a
Serve config never names a family. `ServeArgs` is the whole configuration: the `args` of a Serve config file
(`serve deploy infra/serve/phenaki.yaml`, the RayService's serveConfigV2 holds the same), the flags of
`phenaki serve`, and what `start()` takes; it is validated before anything starts.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from jobs.runtime import WORKER_ENV
from jobs.serving.api import Limits
from jobs.serving.auth import ApiKeys
from jobs.serving.gateway import Gateway
from jobs.serving.sampler import JobBoard, Sampler
from modeling.generators import generator_kind

APP_NAME = "phenaki"
_started_ray = False


class ServeArgs(BaseModel):
    """Everything a deployment of the endpoint is built from; unknown keys fail (a typo is not ignored)."""

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(description="transformer checkpoint dir (Phenaki or COMMIT; holds tokenizer/)")
    min_replicas: int = Field(1, ge=0, description="sampler replicas kept up (0: scale to zero when idle)")
    max_replicas: int = Field(1, ge=1, description="sampler replicas at most (autoscaled between)")
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per sampler replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per sampler replica (0: CPU)")
    device: str | None = Field(None, description="torch device (default: cuda when the replica has one)")
    upscale_delay_s: float = Field(
        10.0, ge=0, description="sustained load this long before a replica is added"
    )
    downscale_delay_s: float = Field(120.0, ge=0, description="idle this long before a replica is removed")
    api_keys_file: str | None = Field(None, description="API keys, one per line or sha256:<hex> (none: open)")
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _replicas(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        return self


def build_app(args: ServeArgs) -> serve.Application:
    """The application graph (on the machine that deploys it: paths are checked here, where they must exist)."""
    checkpoint = str(Path(args.checkpoint).resolve())
    generator_kind(checkpoint)  # a missing or foreign checkpoint fails here, before any replica starts
    if args.api_keys_file:
        ApiKeys.from_file(args.api_keys_file)  # missing or empty: fails now, naming the file
    limits = args.limits.model_dump()
    board = JobBoard.bind(limits)
    sampler = Sampler.options(
        autoscaling_config={
            "min_replicas": args.min_replicas,
            "initial_replicas": max(1, args.min_replicas),
            "max_replicas": args.max_replicas,
            # a replica with a full batch waiting is busy enough: more means another replica
            "target_ongoing_requests": args.limits.max_batch,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
        },
        # Every waiting job holds a slot (its `run` call waits in @serve.batch's queue), and request checks
        # (`prepare`) must not wait behind them: room for a batch, the whole queue, and checks besides.
        max_ongoing_requests=args.limits.max_batch + args.limits.max_queued + 16,
        max_queued_requests=args.limits.max_queued,  # beyond: BackPressureError -> 503 Retry-After
        ray_actor_options={
            "num_cpus": args.num_cpus,
            "num_gpus": args.num_gpus,
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
        },
    ).bind(checkpoint, board, limits, device=args.device, num_threads=max(1, round(args.num_cpus)))
    return Gateway.bind(sampler, board, limits, api_keys_file=args.api_keys_file)


def app_builder(args: ServeArgs) -> serve.Application:
    """`import_path: jobs.serving.app:app_builder` for `serve deploy` / `serve run` and the RayService: Serve
    validates the config's `args` into ServeArgs (a builder's one pydantic-annotated parameter)."""
    return build_app(args)


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
    args: ServeArgs | str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    timeout_s: float = 300.0,
    **fields,
) -> str:
    """Start Serve (on the connected Ray, else a new local one) with the app at `/`; returns the base URL once
    `/healthz` answers. `args` is a ServeArgs, or a checkpoint path with ServeArgs `fields`."""
    global _started_ray
    import ray

    from jobs.runtime import init_ray

    if not isinstance(args, ServeArgs):
        args = ServeArgs(checkpoint=str(args), **fields)
    if not ray.is_initialized():
        init_ray(address)
        _started_ray = True
    serve.start(http_options={"host": host, "port": port})
    running = _running_http_options()
    if running is not None and (running[0], running[1]) != (host, port):
        raise RuntimeError(
            f"Serve already runs on this Ray cluster with HTTP on {running[0]}:{running[1]}, not {host}:{port}; "
            "call jobs.serving.app.stop() first (or start with that host and port)"
        )
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
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
