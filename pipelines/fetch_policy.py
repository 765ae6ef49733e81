"""The fetch policy (what may be fetched, from where, how long and how much), its errors and its pure checks.

`pipelines.fetch` applies it to every byte prepare reads; see its docstring for the threat model.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pipelines.local_paths import check_roots

REASONS = ("missing", "fetch_error", "timeout", "too_large", "blocked")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # 2+ chars: "C:\..." stays a local path
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[..., list]


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 30.0  # HTTP: connect and per-read timeout; gs://: a deadline on each whole call
    retries: int = 3  # extra attempts after the first, transient failures only
    backoff_s: float = 0.5  # sleep before retry k (0-based): backoff_s * 2**k, capped at max_backoff_s
    max_backoff_s: float = 8.0
    max_bytes: int = 512 * 2**20
    allowed_schemes: tuple[str, ...] = ("file", "local", "gs", "gcs", "http", "https")
    allow_private: bool = False  # True disables address blocking entirely
    allow_loopback: bool = False  # 127.0.0.0/8 and ::1 only
    max_redirects: int = 5
    # Folders local paths may be read from (absolute). prepare adds each local source's own folder; paths a
    # listing names anywhere else (/etc/passwd, ../.., /proc/self/environ, symlinks out) are "blocked".
    local_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"fetch.timeout_s must be > 0, got {self.timeout_s}")
        for name in ("retries", "max_redirects", "backoff_s", "max_backoff_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"fetch.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_bytes <= 0:
            raise ValueError(f"fetch.max_bytes must be > 0, got {self.max_bytes}")
        if isinstance(self.allowed_schemes, str) or not all(s == s.lower() for s in self.allowed_schemes):
            raise ValueError(
                f"fetch.allowed_schemes must be lower-case schemes, got {self.allowed_schemes!r}"
            )
        # Configs hand over lists; the policy must stay hashable (it keys the per-thread session cache).
        object.__setattr__(self, "allowed_schemes", tuple(self.allowed_schemes))
        object.__setattr__(self, "local_roots", check_roots(self.local_roots))

    def with_roots(self, roots: Iterable[str]) -> FetchPolicy:
        """This policy with ``roots`` added to ``local_roots`` (kept in order, without repeats)."""
        return dataclasses.replace(self, local_roots=tuple(dict.fromkeys((*self.local_roots, *roots))))


class FetchError(Exception):
    def __init__(self, reason: str, url: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.reason, self.url, self.detail = reason, url, detail
        super().__init__(f"{reason}: {url}: {detail}")


class Transient(Exception):
    """A failure worth retrying; becomes FetchError(reason) once retries are exhausted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# ----------------------------------------------------------------------------------------- pure checks
def url_scheme(url: str) -> str:
    """Lower-case scheme; "file" for bare local paths."""
    m = _SCHEME_RE.match(url)
    return m.group(1).lower() if m else "file"


def check_scheme(url: str, policy: FetchPolicy) -> str:
    scheme = url_scheme(url)
    if "::" in url.split("/", 1)[0] or scheme not in policy.allowed_schemes:
        raise FetchError(
            "blocked",
            url,
            f"scheme {scheme!r} is not allowed (prepare.fetch.allowed_schemes={list(policy.allowed_schemes)})",
        )
    return scheme


def _unwrap(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse ``ip``; IPv6 forms that reach an IPv4 host (mapped, 6to4, NAT64) are judged by that host."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        return addr.ipv4_mapped or addr.sixtofour or addr
    return addr


def is_blocked_address(ip: str, policy: FetchPolicy) -> bool:
    if policy.allow_private:
        return False
    addr = _unwrap(ip)
    if addr.is_loopback:
        return not policy.allow_loopback
    # is_global alone misses multicast (224/4 and ff00::/8 count as global); list every class explicitly.
    classes = ("is_private", "is_link_local", "is_multicast", "is_reserved", "is_unspecified")
    return not addr.is_global or any(getattr(addr, c) for c in classes)


def _blocked_hint(policy: FetchPolicy, blocked: list[str]) -> str:
    if all(_unwrap(a).is_loopback for a in blocked):
        return f"loopback address {blocked}; set prepare.fetch.allow_loopback=true to fetch from 127.0.0.1"
    return (
        f"non-public address {blocked} (private, link-local/metadata, multicast or reserved); "
        "set prepare.fetch.allow_private=true only for trusted internal mirrors"
    )


def resolve_and_check(
    host: str, port: int, policy: FetchPolicy, resolver: Resolver = socket.getaddrinfo
) -> list[str]:
    """Resolve ``host`` and return its addresses if *all* pass the policy, else raise FetchError("blocked").
    socket.gaierror from the resolver propagates (the caller decides whether it is transient)."""
    infos = resolver(host, port, 0, socket.SOCK_STREAM)
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))  # dedupe, keep resolver order
    if not addrs:
        raise FetchError("fetch_error", host, "DNS returned no addresses")
    blocked = [a for a in addrs if is_blocked_address(a, policy)]
    if blocked:
        raise FetchError("blocked", f"{host}:{port}", _blocked_hint(policy, blocked))
    return addrs


def backoff_delays(policy: FetchPolicy) -> list[float]:
    """Seconds to sleep before each retry (len == retries)."""
    return [min(policy.backoff_s * 2**k, policy.max_backoff_s) for k in range(policy.retries)]


def storage_options_for(url: str) -> dict[str, Any]:
    """fsspec storage options for ``url``. gcsfs finds an emulator through STORAGE_EMULATOR_HOST on its own;
    with an emulator we also pass anonymous credentials so gcsfs never probes Google default credentials
    (which can wait on the metadata server)."""
    emulated = os.environ.get("STORAGE_EMULATOR_HOST", "") not in ("", "default")  # gcsfs's own test
    return {"token": "anon"} if emulated and url_scheme(url) in ("gs", "gcs") else {}


def check_size(url: str, size: int | None, policy: FetchPolicy, note: str = "") -> None:
    if size is not None and size > policy.max_bytes:
        msg = f"{size} bytes > max_bytes={policy.max_bytes}{note}; raise prepare.fetch.max_bytes to allow it"
        raise FetchError("too_large", url, msg)
