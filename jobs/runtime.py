"""Shared start-up for jobs: a Ray connection sized to the machine, and readable stage logs."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator

# Two busy processes on few cores waste 2-3x CPU spin-waiting in OpenMP without this (calibration.md).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}

log = logging.getLogger("phenaki")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s | %(message)s", datefmt="%H:%M:%S"
    )


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start a local cluster; no-op when already connected."""
    import ray

    os.environ.update({k: os.environ.get(k, v) for k, v in WORKER_ENV.items()})
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"runtime_env": {"env_vars": WORKER_ENV}, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **kwargs)
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
