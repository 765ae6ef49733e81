"""Shared start-up for jobs: a Ray connection sized to the machine, and readable stage logs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator

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
    "'DeepSpeed ... built successfully', and Ray Serve's request log."
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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s | %(message)s", datefmt="%H:%M:%S"
    )
    quiet_known_noise()


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start a local cluster; no-op when already connected."""
    import ray

    os.environ.update({k: os.environ.get(k, v) for k, v in WORKER_ENV.items()})
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet_known_noise()  # before ray.init, which logs the token-auth line
    # The hook is imported by name in every Ray worker; `jobs` is importable wherever the trainers' loops
    # (pickled by reference) already are. A copy of WORKER_ENV: Ray adds the hook's variable to env_vars.
    runtime_env = {"env_vars": dict(WORKER_ENV), "worker_process_setup_hook": "jobs.runtime.quiet_ray_worker"}
    kwargs = {"runtime_env": runtime_env, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
    quiet_known_noise()  # again, now that ray's file-named loggers can be named
    log.info(RAY_LINES_NOTE)
    # Ray Data's per-operator progress bars interleave badly with our stage logs on small terminals.
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def add_ray_arguments(parser) -> None:
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local cluster)")


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
