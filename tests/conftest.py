"""Shared fixtures: one local Ray cluster per test session (starting Ray costs seconds; tests share it)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster sized to this machine (2 CPUs in CI), shared by every test that needs one."""
    import ray

    from jobs.runtime import init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=max(2, os.cpu_count() or 2))
    yield ray
    if started:
        ray.shutdown()
