"""Shared start-up for jobs: a Ray connection sized to the machine, and readable stage logs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator

# Two busy processes on few cores waste 2-3x CPU spin-waiting in OpenMP without this (calibration.md).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}

log = logging.getLogger("phenaki")

# Lines Ray and DeepSpeed log on every healthy run that a newcomer reads as failures: logger -> message starts.
KNOWN_NOISE: dict[str, tuple[str, ...]] = {
    # Ray Train V2's PlacementGroupCleaner asks the State API every second whether the train controller is
    # alive. The State API is served by the dashboard's HTTP server, which `init_ray` leaves off (it costs a
    # process and a port on a laptop), so every ask fails and warns. The cleaner only matters when a driver
    # dies without cleaning up; `ray.shutdown` removes a local cluster's placement groups anyway.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": ("Failed to query Ray Train",),
    # Ray Train asks its autoscaling coordinator for resources with a short timeout; on a busy 2-core laptop the
    # ask times out now and then and logs a traceback that Ray itself calls "safe to ignore" (it retries).
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": (
        "Failed to send resource request",
    ),
    # Ray 2.60 turns token authentication on for new local clusters and warns about it: a good default.
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled",),
    # Two lines per checkpoint per rank; where checkpoints live is in the job's own log and the demo's output.
    "ray.train.v2._internal.execution.storage": ("Checkpoint successfully created",),
    "ray.train.v2._internal.execution.context": ("Reporting training result",),
    # DeepSpeed on a CPU-only machine, once per worker: expected, not a lost GPU.
    "DeepSpeed": ("Setting accelerator to CPU",),
    # Ray Data warns that its progress bars are off: `init_ray` turns them off on purpose.
    "ray.data._internal.progress": ("Progress bars disabled",),
}
# Ray Train's context module names its logger after its own file (`logging.getLogger(__file__)`): paths
# relative to the ray package.
RAY_FILE_NOISE: dict[str, tuple[str, ...]] = {
    "train/v2/_internal/execution/context.py": ("Reporting training result",),  # once per checkpoint per rank
}
# What no logging filter reaches (Ray's C++ core and DeepSpeed's prints), explained once per process.
RAY_LINES_NOTE = (
    "Ray and DeepSpeed print some lines of their own below; these are normal: 'core_worker.cc ... has "
    "constructor arguments in the object store and max_restarts > 0' (Ray describing a restartable actor), "
    "'DeepSpeed ... built successfully', Ray Serve's request log, and when Serve stops, 'Task "
    "ServeController.graceful_shutdown failed ... killed by `ray.kill`' (Serve removing its own controller)."
)


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of `starts` (a logger filter: other loggers unaffected)."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def noisy_loggers() -> dict[str, tuple[str, ...]]:
    """Logger name -> message starts to drop: `KNOWN_NOISE`, plus `RAY_FILE_NOISE` once ray is imported
    (its file paths need ray's location; importing ray just for that would cost every CLI command a second)."""
    names = dict(KNOWN_NOISE)
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "__file__", None):
        root = os.path.dirname(ray.__file__)
        names.update({os.path.join(root, rel): starts for rel, starts in RAY_FILE_NOISE.items()})
    return names


def quiet_known_noise() -> None:
    """Filter `noisy_loggers` in this process (idempotent): in the driver, and in every Ray worker through
    `quiet_ray_worker`, since most of those lines start in workers."""
    for name, starts in noisy_loggers().items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(starts))
    # DeepSpeed's ZeRO calls a torch.distributed function torch has renamed; not ours to fix.
    warnings.filterwarnings("ignore", message=r"`torch.distributed.all_gather_into_tensor` is deprecated")


def quiet_ray_worker() -> None:
    """Ray's worker_process_setup_hook (runs at every worker's start, connected): `quiet_known_noise`, and the
    worker's own cluster as RAY_ADDRESS, so Ray's State API client in the PlacementGroupCleaner does not die
    with "Found multiple active Ray instances" (a traceback) on machines that run several local clusters."""
    import ray

    quiet_known_noise()
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


def run_command(name: str, main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a job's `main(args)`; a bad input or config (ValueError, FileNotFoundError: our errors name the input
    and the fix) ends in one line on stderr and exit 1, not a traceback. PHENAKI_TRACEBACK=1 shows the
    traceback as well. Logging is set up here, once for every command (`phenaki X` and `python -m jobs.X`)."""
    setup_logging()
    try:
        return int(main(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("PHENAKI_TRACEBACK") == "1":
            raise
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1


def key_value_pairs(pairs: list[str] | None, option: str) -> dict[str, str]:
    """Repeated `option KEY=VALUE` arguments -> {KEY: VALUE} (the value may hold `=` or be empty)."""
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} wants KEY=VALUE, got {pair!r}")
        values[key] = value
    return values


def setup_logging(verbose: bool = False) -> None:
    """INFO lines on stderr as `HH:MM:SS logger | message` (stdout stays for results: `describe --json`); a
    no-op once the root logger has a handler."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s | %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_known_noise()


def driver_runtime_env(job_runtime_env: dict | None) -> dict:
    """The runtime_env our `ray.init` asks for, less what a submitted job's own runtime_env already sets.

    Ray merges a job's runtime_env (`ray job submit --runtime-env-json`, `phenaki submit`) into the driver's
    `ray.init(runtime_env=...)` and refuses to start when both name the same field or environment variable,
    even with equal values. A job submitted with WORKER_ENV (as `phenaki submit` does) keeps its values."""
    job = job_runtime_env or {}
    job_vars = job.get("env_vars") or {}
    wanted = {"env_vars": dict(WORKER_ENV), "worker_process_setup_hook": "jobs.runtime.quiet_ray_worker"}
    env = {k: v for k, v in wanted.items() if k not in job and k != "env_vars"}
    env_vars = {k: v for k, v in wanted["env_vars"].items() if k not in job_vars}
    return {**env, "env_vars": env_vars} if env_vars else env


def submitted_job_runtime_env() -> dict | None:
    """The runtime_env of the Ray job this driver runs as (None outside a submitted job)."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    raw = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    return json.loads(raw).get("runtime_env") if raw else None


def cluster_address(explicit: str | None, environ: dict[str, str]) -> tuple[str | None, str | None]:
    """Where `init_ray` connects: (a Ray address, or None to start a fresh local cluster; a note to log or None).

    - `--address` wins; inside a submitted Ray job the job's own cluster ("auto" when Ray left RAY_ADDRESS unset).
    - RAY_ADDRESS=http(s)://HEAD:8265 is a Jobs API address (what `ray job submit` and `phenaki submit` use), not
      one a driver can join: this command runs on a fresh local cluster and says how to run it on that cluster.
    - No address: a fresh local cluster, even when a `ray start --head` runs on this machine (joining it would
      refuse our `num_cpus`, and a laptop command should not land on a shared head unasked)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if explicit:
        return explicit, None
    env_address = environ.get("RAY_ADDRESS") or None
    if RAY_JOB_CONFIG_JSON_ENV_VAR in environ:
        return env_address or "auto", None
    if env_address and env_address.startswith(("http://", "https://")):
        return None, (
            f"RAY_ADDRESS={env_address} is a Jobs API address (for `phenaki submit` / `ray job submit`); this "
            f"command runs on a local Ray cluster. To run it on that cluster: phenaki submit --address "
            f"{env_address} JOB ARGS, or pass --address auto on the head."
        )
    return env_address, None


def free_port() -> int:
    """A free TCP port on loopback (for a local Serve endpoint: the demo, tests, benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start a local cluster; no-op when already connected."""
    import ray

    os.environ.update({k: os.environ.get(k, v) for k, v in WORKER_ENV.items()})
    if ray.is_initialized():
        return
    address, note = cluster_address(address, dict(os.environ))
    if note:
        log.info(note)
    quiet_known_noise()  # before ray.init, which logs the token-auth line
    # The hook is imported by name in every Ray worker; `jobs` is importable wherever the trainers' loops
    # (pickled by reference) already are. A fresh dict each time: Ray adds the hook's variable to env_vars.
    runtime_env = driver_runtime_env(submitted_job_runtime_env())
    kwargs = {"runtime_env": runtime_env, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        log.info("starting a local Ray cluster (%d CPUs; takes a few seconds)", num_cpus or os.cpu_count())
        # "local": a new cluster, never a head that happens to run on this machine (see `cluster_address`).
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    quiet_known_noise()  # again, now that ray's file-named loggers can be named
    log.info(RAY_LINES_NOTE)
    # Ray Data's per-operator progress bars interleave badly with our stage logs on small terminals.
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def add_ray_arguments(parser) -> None:
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local cluster)"
    )


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Logs the start and end of a pipeline stage and records its wall time."""
    log.info("== %s ==", name)
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    if timings is not None:
        timings[name] = round(seconds, 2)
    log.info("== %s done in %.1f s ==", name, seconds)
