"""A seekable, read-only file over `pipelines.fetch`, for reading tars in place without downloading them.

`tarfile` walks a tar by reading a 512-byte header and seeking past the member's data. Over this file each
buffer refill is one `fetch_range` (same scheme, address, redirect, size and time checks as any fetch), and a
seek past a large member costs nothing, so listing a video tar reads its headers, not its videos. Local
tars are opened once through `fetch.open_local` (the same root checks) and read directly.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from pipelines.fetch import FetchPolicy, check_scheme, fetch_range, fetch_size, open_local


class RangedReader(io.RawIOBase):
    """Raw reads of ``url`` by byte range; wrap it in io.BufferedReader (see `open_ranged`)."""

    def __init__(self, url: str, policy: FetchPolicy) -> None:
        super().__init__()
        self.url, self.policy = url, policy
        self.size = fetch_size(url, policy)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset} in {self.url}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._pos + len(buffer), self.size)
        if end <= self._pos:
            return 0
        data = fetch_range(self.url, self.policy, self._pos, end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_ranged(url: str, policy: FetchPolicy, block_size: int) -> BinaryIO:
    """``url`` as a seekable binary file read in blocks of ``block_size`` bytes."""
    if check_scheme(url, policy) in ("file", "local"):
        return open_local(url, policy)
    return io.BufferedReader(RangedReader(url, policy), buffer_size=block_size)  # type: ignore[return-value]
