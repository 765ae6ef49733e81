"""Guarded byte fetching for data preparation: local files, gs:// (gcsfs) and http(s)://.

Threat model: source listings (WebVid CSVs, LAION parquets, ...) are third-party data, so every URL is
attacker-controlled, and fetches run in Ray workers that can reach internal services and the cloud
metadata server. Each guard closes one hole:

* SSRF. ``http://169.254.169.254/...`` hands out instance credentials; RFC1918, unique-local and loopback
  hosts expose admin endpoints. The host is resolved inside urllib3's connect step, *every* address must
  be public (an answer mixing public and private addresses is refused), and the socket then connects to
  exactly those checked IP literals: no DNS-rebinding window between check and connect, so no separate
  peer-address check is needed. Redirects are followed by hand, one hop at a time through the same
  check, so a redirect to the metadata server is refused before any connection to it. IPv4-mapped, 6to4
  and NAT64 IPv6 forms are judged by the IPv4 address they reach. ``allow_loopback`` opens 127/8 and ::1
  only (tests); ``allow_private`` switches address blocking off (trusted internal mirrors only).
* Arbitrary backends. Only allow-listed schemes are fetched; chained fsspec URLs (``simplecache::...``)
  and ftp/sftp/memory/... are "blocked". Local paths are read with ``open()``, never via fsspec; bare paths
  count as scheme ``file``. Drop ``file``/``local`` for untrusted listings, or a listing can make workers
  read any image/video they can see. Non-regular files (/dev/zero, FIFOs) are refused.
* Memory and time. Bodies over ``max_bytes`` are refused up front (Content-Length, object size, stat) and
  reading stops once the cap is passed (at most ``max_bytes`` + one chunk buffered). Every connect and
  every socket read is bounded by ``timeout_s``. Only transient failures (timeouts, connection errors,
  HTTP 429/5xx) are retried, with capped exponential backoff.

Residual risks: ``timeout_s`` bounds each read, not the transfer, so a server trickling bytes just under
it holds a worker until ``max_bytes`` (bound the stage's wall time in the caller). gs:// URLs cannot pick
a host, so they get no address check; gcsfs also retries GCS errors internally (6 tries), multiplying
``retries``. HTTP ignores proxy/netrc env vars (``trust_env=False``: a proxy would defeat the address
check) but honours REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import create_connection

REASONS = ("missing", "fetch_error", "timeout", "too_large", "blocked")
_CHUNK_BYTES = 1 << 16
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # 2+ chars: "C:\..." stays a local path
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Raw bytes only: "identity" asks servers not to compress, and decode_content=False below means a compressed
# body is never expanded (no decompression bomb past max_bytes).
_GET_KWARGS: dict[str, Any] = {
    "stream": True,
    "allow_redirects": False,
    "headers": {"Accept-Encoding": "identity"},
}
Resolver = Callable[..., list]


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 30.0  # connect timeout and per-read timeout, not a total deadline
    retries: int = 3  # extra attempts after the first, transient failures only
    backoff_s: float = 0.5  # sleep before retry k (0-based): backoff_s * 2**k, capped at max_backoff_s
    max_backoff_s: float = 8.0
    max_bytes: int = 512 * 2**20
    allowed_schemes: tuple[str, ...] = ("file", "local", "gs", "gcs", "http", "https")
    allow_private: bool = False  # True disables address blocking entirely
    allow_loopback: bool = False  # 127.0.0.0/8 and ::1 only
    max_redirects: int = 5

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


class FetchError(Exception):
    def __init__(self, reason: str, url: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.reason, self.url, self.detail = reason, url, detail
        super().__init__(f"{reason}: {url}: {detail}")


class _Transient(Exception):
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


# ------------------------------------------------------------------------------- guarded HTTP sessions
def _guarded(base: type[HTTPConnection], policy: FetchPolicy) -> type[HTTPConnection]:
    class Guarded(base):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> socket.socket:
            # Resolve + check here, then connect to exactly those IPs: no DNS-rebinding window. HTTPS still
            # sends SNI and verifies the certificate for self.host (urllib3 uses it, not the IP).
            try:
                addrs = resolve_and_check(self._dns_host, self.port, policy)
            except socket.gaierror as e:
                raise urllib3.exceptions.NameResolutionError(self.host, self, e) from e
            last: OSError | None = None
            for addr in addrs:
                try:
                    return create_connection(
                        (addr, self.port), self.timeout, self.source_address, self.socket_options
                    )
                except TimeoutError as e:
                    raise urllib3.exceptions.ConnectTimeoutError(self, f"connect to {addr} timed out") from e
                except OSError as e:
                    last = e
            raise urllib3.exceptions.NewConnectionError(self, f"failed to connect to {addrs}: {last}")

    return Guarded


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        super().__init__(max_retries=0)  # retries are ours, with our classification

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            scheme: type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": _guarded(conn, self._policy)})
            for scheme, pool, conn in (
                ("http", HTTPConnectionPool, HTTPConnection),
                ("https", HTTPSConnectionPool, HTTPSConnection),
            )
        }


_local = threading.local()  # requests.Session is not thread-safe: one per thread (and per policy)


def _session(policy: FetchPolicy) -> requests.Session:
    sessions: dict[FetchPolicy, requests.Session] = _local.__dict__.setdefault("sessions", {})
    if policy not in sessions:
        s = requests.Session()
        s.trust_env = False
        s.mount("http://", _GuardedAdapter(policy))
        s.mount("https://", _GuardedAdapter(policy))
        sessions[policy] = s
    return sessions[policy]


def _ca_bundle() -> str | bool:
    # trust_env=False also drops requests' CA-bundle variables; keep honouring them (TLS-intercepting networks).
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _check_size(url: str, size: int | None, policy: FetchPolicy, note: str = "") -> None:
    if size is not None and size > policy.max_bytes:
        msg = f"{size} bytes > max_bytes={policy.max_bytes}{note}; raise prepare.fetch.max_bytes to allow it"
        raise FetchError("too_large", url, msg)


def _http_once(url: str, policy: FetchPolicy) -> bytes:
    session, hop = _session(policy), url
    for _ in range(policy.max_redirects + 1):
        if url_scheme(hop) not in ("http", "https"):
            raise FetchError("blocked", url, f"redirect to non-HTTP URL {hop}")
        check_scheme(hop, policy)
        try:
            resp = session.get(hop, **_GET_KWARGS, timeout=(policy.timeout_s,) * 2, verify=_ca_bundle())
        except FetchError as e:  # raised by the guarded connection; name the URL we were asked for
            raise FetchError(
                e.reason, url, e.detail if hop == url else f"redirect to {hop}: {e.detail}"
            ) from e
        with resp:
            code = resp.status_code
            if code in _REDIRECTS and resp.headers.get("Location"):
                hop = urljoin(hop, resp.headers["Location"])
                continue
            if code in (404, 410):
                raise FetchError("missing", url, f"HTTP {code}")
            if code == 429 or code >= 500:
                raise _Transient("fetch_error", f"HTTP {code}")
            if code >= 400 or code in _REDIRECTS:
                raise FetchError("fetch_error", url, f"HTTP {code}")
            length = resp.headers.get("Content-Length", "")
            _check_size(url, int(length) if length.isdigit() else None, policy, " (Content-Length)")
            buf = bytearray()
            for chunk in resp.raw.stream(_CHUNK_BYTES, decode_content=False):
                buf += chunk  # raising closes the response, which drops the connection unread
                _check_size(url, len(buf), policy, " (body ran past it)")
            return bytes(buf)
    raise FetchError("fetch_error", url, f"more than max_redirects={policy.max_redirects} redirects")


# --------------------------------------------------------------------------------------- gs and local
def _gcs_once(url: str, policy: FetchPolicy) -> bytes:
    import fsspec
    from gcsfs.retry import HttpError, is_retriable

    opts = {"requests_timeout": policy.timeout_s, "use_listings_cache": False, **storage_options_for(url)}
    fs = fsspec.filesystem(url_scheme(url), **opts)
    path = fs._strip_protocol(url)
    try:
        size = fs.size(path)
        _check_size(url, size, policy)
        if size == 0:  # a ranged GET of an empty object is a 416 on GCS
            return b""
        # Ranged read: an object replaced by a bigger one after size() still cannot exceed the cap.
        data = fs.cat_file(path, start=0, end=policy.max_bytes + 1)
    except FileNotFoundError as e:
        raise FetchError("missing", url, "no such object") from e
    except HttpError as e:
        if is_retriable(e):
            raise _Transient("fetch_error", f"GCS HTTP {e.code}: {e.message}") from e
        raise FetchError("fetch_error", url, f"GCS HTTP {e.code}: {e.message}") from e
    _check_size(url, len(data), policy)
    return data


def _local_once(url: str, policy: FetchPolicy) -> bytes:
    # file:///x, file:/x, file://localhost/x, local:///x and bare paths -> a path for open().
    path = re.sub(r"^(?:file|local):(?://(?:localhost(?=/))?)?", "", url, flags=re.IGNORECASE)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # /dev/zero, FIFOs, directories: unbounded or blocking reads
            raise FetchError("blocked", url, "not a regular file")
        _check_size(url, st.st_size, policy)
        with open(path, "rb") as f:
            data = f.read(policy.max_bytes + 1)  # the file may have grown since stat()
    except FileNotFoundError as e:
        raise FetchError("missing", url, "no such file") from e
    except OSError as e:
        raise FetchError("fetch_error", url, f"{type(e).__name__}: {e}") from e
    _check_size(url, len(data), policy)
    return data


# -------------------------------------------------------------------------------------------- fetching
def _classify(e: Exception) -> _Transient | None:
    """Transient network failures -> _Transient; anything else -> None (not retried)."""
    import asyncio

    if isinstance(e, _Transient):
        return e
    if isinstance(e, requests.exceptions.SSLError):  # a bad certificate stays bad: don't retry it
        return None
    # fsspec.FSTimeoutError subclasses asyncio.TimeoutError; requests.ConnectTimeout is also a ConnectionError.
    if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError, asyncio.TimeoutError)):
        return _Transient("timeout", f"{type(e).__name__}: {e}")
    aiohttp = sys.modules.get("aiohttp")  # only gcsfs raises its errors; don't import it for HTTP fetches
    aio_errors = (aiohttp.ClientError,) if aiohttp is not None else ()
    conn = (requests.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError, *aio_errors)
    if isinstance(e, conn):
        return _Transient("fetch_error", f"{type(e).__name__}: {e}")
    return None


def fetch_bytes(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """Fetch ``url`` under ``policy``; raises FetchError(reason in REASONS) on any failure."""
    scheme = check_scheme(url, policy)
    if scheme in ("file", "local"):
        return _local_once(url, policy)
    if scheme in ("http", "https"):
        once: Callable[[str, FetchPolicy], bytes] = _http_once
    elif scheme in ("gs", "gcs"):
        once = _gcs_once
    else:  # allow-listed but no guarded implementation (e.g. someone added "s3")
        raise FetchError("blocked", url, f"no guarded fetcher for scheme {scheme!r}")
    delays = backoff_delays(policy)
    for attempt in range(policy.retries + 1):
        try:
            return once(url, policy)
        except FetchError:
            raise
        except Exception as e:
            transient = _classify(e)
            if transient is None:
                raise FetchError("fetch_error", url, f"{type(e).__name__}: {e}") from e
            if attempt == policy.retries:
                raise FetchError(
                    transient.reason, url, f"{transient.detail} (after {attempt + 1} attempts)"
                ) from e
        time.sleep(delays[attempt])
    raise AssertionError("unreachable")
