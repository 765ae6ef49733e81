"""Which local files a source listing may make prepare read: pure path checks, no file is opened here.

A listing is third-party data, so a row naming ``/proc/self/environ``, ``file:///etc/passwd`` or
``../../../home/u/.ssh/id_rsa`` must be refused before the file is opened (a read that is only then thrown
away as undecodable has already happened, and a caption sidecar would copy it into the dataset). A local
path is allowed only when, with every symlink and ``..`` resolved, it lies under one of the roots the user
named (``prepare.fetch.local_roots``; prepare adds each local source's own folder). Kernel pseudo-filesystems
(/proc, /sys, /dev) are refused even under a root such as ``/``.
"""

from __future__ import annotations

import os
import re

PSEUDO_FS = ("/proc", "/sys", "/dev")  # files here stat as regular (size 0) but are process or device state
_LOCAL_PREFIX = re.compile(r"^(?:file|local):(?://(?:localhost(?=/))?)?", flags=re.IGNORECASE)


class PathRefused(ValueError):
    """A local path outside the allowed roots (the message says why and how to allow it)."""


def local_path(url: str) -> str:
    """file:///x, file:/x, file://localhost/x, local:///x and bare paths -> a path for open()."""
    return _LOCAL_PREFIX.sub("", url)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_roots(roots: tuple[str, ...], what: str = "fetch.local_roots") -> tuple[str, ...]:
    """Roots as given, each an absolute path (a relative one would mean different folders in different
    Ray workers)."""
    if isinstance(roots, str):
        raise ValueError(f"{what} must be a list of folders, got the string {roots!r}; write [{roots!r}]")
    for root in roots:
        if not isinstance(root, str) or not os.path.isabs(local_path(root)):
            raise ValueError(f"{what} entries must be absolute folders (e.g. /data/media), got {root!r}")
    return tuple(roots)


def check_local_path(url: str, roots: tuple[str, ...]) -> str:
    """The real path of ``url`` if it lies under one of ``roots``; else raise PathRefused naming why.

    Only lstat/readlink happen here (os.path.realpath): the file itself is never opened.
    """
    path = local_path(url)
    hint = f"add its folder to prepare.fetch.local_roots (now {list(roots)}) if it is meant to be read"
    if not os.path.isabs(path):
        raise PathRefused(f"relative local path {path!r}: cannot tell which folder it is in; {hint}")
    if ".." in path.split("/"):
        raise PathRefused(f"'..' in local path {path!r}: a listing may not climb out of its folder")
    real = os.path.realpath(path)
    if any(_under(real, p) for p in PSEUDO_FS):
        raise PathRefused(
            f"{path!r} resolves to {real!r}, a kernel pseudo-file (/proc, /sys, /dev): never read"
        )
    real_roots = [os.path.realpath(local_path(r)) for r in roots]
    if not any(_under(real, r) for r in real_roots):
        via = f" (through a symlink, to {real!r})" if real != os.path.normpath(path) else ""
        raise PathRefused(f"local path {path!r}{via} is outside the allowed folders; {hint}")
    return real
