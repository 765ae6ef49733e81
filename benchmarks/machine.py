"""The machine a benchmark ran on, recorded beside every result."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata


def measured_on() -> str:
    """The UTC date a result is measured on (YYYY-MM-DD): every result JSON has it as `date`, beside `machine`,
    so the report (`benchmarks.report`) can say when each figure was taken."""
    return time.strftime("%Y-%m-%d", time.gmtime())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(
    packages: tuple[str, ...] = ("torch", "ray", "deepspeed", "av", "numpy"),
) -> dict[str, object]:
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": None if not _cuda_name() else _cuda_name(),
        "python": platform.python_version(),
        "packages": versions,
    }


def _cuda_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a benchmark's machine note must never fail the benchmark
        return None
