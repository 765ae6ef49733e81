"""Small helpers around Ray Data execution and the progress lines of long stages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def iter_rows_released(ds: Any) -> Iterator[dict]:
    """Stream a dataset's rows; on error or early exit, shut its executor down *now*.

    Otherwise an abandoned stream keeps its actor pool (and the CPUs it reserved) alive until the generator is
    garbage collected, which a stored traceback can postpone indefinitely; a Ray Train job started next on the
    same cluster then waits forever for CPUs.
    """
    rows = iter(ds.iter_rows())
    try:
        yield from rows
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def progress_note(done: int, total: int, elapsed_s: float, unit: str = "shards") -> str:
    """'[3/40 · 0.52 shards/s · ~71 s left]' for a log line after each finished item of a long stage (a bar
    cannot render between Ray's own log lines, and logs in CI or `ray job submit` are not a terminal)."""
    if done <= 0 or elapsed_s <= 0:
        return f"[{done}/{total}]"
    rate = done / elapsed_s
    left = (total - done) / rate
    left_text = f"~{left:.0f} s left" if left < 120 else f"~{left / 60:.1f} min left"
    return f"[{done}/{total} · {rate:.2g} {unit}/s · {left_text if done < total else 'done'}]"
