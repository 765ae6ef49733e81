"""Memory of this process's descendants (Ray workers and pool processes), read with psutil and /proc.

Shared by the worker watches of `benchmarks.training_memory` and `benchmarks.prepare_measure`. Kept light:
psutil is imported inside the functions (the decode-only processes of the prepare benchmark import this).
"""

from __future__ import annotations


def status_kib(pid: int, field: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS, ...), or None when the process or field is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def vm_hwm_bytes(pid: int) -> int | None:
    """The kernel's RSS high-water mark of a process, in bytes."""
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def descendants() -> list:
    """This process's descendants as psutil processes ([] if they cannot be listed)."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def process_title(p) -> str:
    """A process's title (Ray sets `ray::<task or actor>` and pads it), "" if it is gone."""
    import psutil

    try:
        return " ".join(p.cmdline()).strip()
    except psutil.Error:
        return ""
