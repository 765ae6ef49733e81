"""Small helpers around Ray Data execution."""

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
