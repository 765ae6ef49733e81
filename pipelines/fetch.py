"""Guarded byte fetching for data preparation: local files, gs:// (gcsfs) and http(s)://.

Every byte prepare reads on behalf of a source goes through here under one `FetchPolicy`
(`pipelines.fetch_policy`): listings and tables (`pipelines.sources.read_table`), WebDataset tars and their
members (`pipelines.wds_source`, via `pipelines.ranged_file`), folder captions, and media
(`pipelines.clip_samples`). `fetch_bytes` reads a whole object, `fetch_range` / `fetch_size` serve ranged
tar reads; all three apply the same checks.

Threat model: source listings (WebVid CSVs, LAION parquets, WebDataset tars, ...) are third-party data, so
every URL in them is attacker-controlled, and fetches run in Ray workers that can reach internal services,
the cloud metadata server and the worker's own files. Each guard closes one hole:

* SSRF. ``http://169.254.169.254/...`` hands out instance credentials; RFC1918, unique-local and loopback
  hosts expose admin endpoints. The host is resolved inside urllib3's connect step, *every* address must
  be public (an answer mixing public and private addresses is refused), and the socket then connects to
  exactly those checked IP literals: no DNS-rebinding window between check and connect, so no separate
  peer-address check is needed. Redirects are followed by hand, one hop at a time through the same
  check, so a redirect to the metadata server is refused before any connection to it; this holds for a
  listing or tar URL as much as for media. IPv4-mapped, 6to4 and NAT64 IPv6 forms are judged by the IPv4
  address they reach. ``allow_loopback`` opens 127/8 and ::1 only (tests); ``allow_private`` switches
  address blocking off (trusted internal mirrors only).
* Local files. A listing can name ``/etc/passwd``, ``../../x`` or ``/proc/self/environ``. A local path is
  read only if, with symlinks and ``..`` resolved, it lies under ``local_roots`` (prepare adds each local
  source's own folder), never under /proc, /sys or /dev, and is a regular file; all of this is checked
  before the file is opened (`pipelines.local_paths`), and the open itself refuses a symlink swapped in.
  Anything else is "blocked", a counted skip naming why.
* Arbitrary backends. Only allow-listed schemes are fetched; chained fsspec URLs (``simplecache::...``)
  and ftp/sftp/memory/... are "blocked". Local paths are read with ``open()``, never via fsspec; bare paths
  count as scheme ``file``.
* Memory and time. Bodies over ``max_bytes`` are refused up front (Content-Length, object size, stat) and
  reading stops once the cap is passed (at most ``max_bytes`` + one chunk buffered); a ranged read asks
  for at most ``max_bytes``. HTTP: every connect and every socket read is bounded by ``timeout_s``.
  gs://: gcsfs retries inside each request on its own (6 tries, sleeps up to 32 s), so each gs:// call
  runs under a wall-clock deadline of ``timeout_s`` covering those internal retries. Only transient
  failures (timeouts, connection errors, HTTP 429/5xx) are retried by us, with capped exponential backoff.

Residual risks: for HTTP ``timeout_s`` bounds each read, not the transfer, so a server trickling bytes just
under it holds a worker until ``max_bytes`` (bound the stage's wall time in the caller); for gs:// it is the
whole call, so a large object on a slow link needs a larger ``timeout_s``. gs:// URLs cannot pick a host, so
they get no address check (the endpoint is Google's, or the operator's STORAGE_EMULATOR_HOST). Listing and
globbing a source's own folders (which the user named) still go through fsspec. A directory component of
a checked local path swapped for a symlink between the check and the open is not caught (only the last
component is). HTTP ignores proxy/netrc env vars (``trust_env=False``: a proxy would defeat the address
check) but honours REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.connection import create_connection

from pipelines.fetch_policy import (  # noqa: F401  (re-exported: callers import the policy from here)
    REASONS,
    FetchError,
    FetchPolicy,
    Transient,
    backoff_delays,
    check_scheme,
    check_size,
    is_blocked_address,
    resolve_and_check,
    storage_options_for,
    url_scheme,
)
from pipelines.local_paths import PathRefused, check_local_path

_CHUNK_BYTES = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)
# Raw bytes only: "identity" asks servers not to compress, and decode_content=False below means a compressed
# body is never expanded (no decompression bomb past max_bytes).
_GET_KWARGS: dict[str, Any] = {"stream": True, "allow_redirects": False}
_GET_HEADERS = {"Accept-Encoding": "identity"}
T = TypeVar("T")


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


def _http_response(url: str, policy: FetchPolicy, headers: dict[str, str]) -> requests.Response:
    """The open response to a GET of ``url`` with a 2xx status, redirects followed by hand (every hop
    through the scheme and address checks); the caller closes it."""
    session, hop = _session(policy), url
    for _ in range(policy.max_redirects + 1):
        if url_scheme(hop) not in ("http", "https"):
            raise FetchError("blocked", url, f"redirect to non-HTTP URL {hop}")
        check_scheme(hop, policy)
        try:
            resp = session.get(
                hop,
                **_GET_KWARGS,
                headers={**_GET_HEADERS, **headers},
                timeout=(policy.timeout_s,) * 2,
                verify=_ca_bundle(),
            )
        except FetchError as e:  # raised by the guarded connection; name the URL we were asked for
            raise FetchError(
                e.reason, url, e.detail if hop == url else f"redirect to {hop}: {e.detail}"
            ) from e
        code = resp.status_code
        if 200 <= code < 300:
            return resp
        resp.close()  # unread: drops the connection instead of draining an error body
        if code in _REDIRECTS and resp.headers.get("Location"):
            hop = urljoin(hop, resp.headers["Location"])
            continue
        if code in (404, 410):
            raise FetchError("missing", url, f"HTTP {code}")
        if code == 429 or code >= 500:
            raise Transient("fetch_error", f"HTTP {code}")
        raise FetchError("fetch_error", url, f"HTTP {code}")
    raise FetchError("fetch_error", url, f"more than max_redirects={policy.max_redirects} redirects")


def _no_ranges(url: str, code: int) -> FetchError:
    detail = f"HTTP {code} to a Range request: the server does not serve byte ranges, which tar sources need"
    return FetchError("fetch_error", url, detail)


def _http_read(url: str, policy: FetchPolicy, start: int, end: int | None) -> bytes:
    headers = {} if end is None else {"Range": f"bytes={start}-{end - 1}"}
    with _http_response(url, policy, headers) as resp:
        if end is not None and resp.status_code != 206:
            raise _no_ranges(url, resp.status_code)  # a 200 would be the whole body from byte 0
        length = resp.headers.get("Content-Length", "")
        check_size(url, int(length) if length.isdigit() else None, policy, " (Content-Length)")
        buf = bytearray()
        for chunk in resp.raw.stream(_CHUNK_BYTES, decode_content=False):
            buf += chunk  # raising closes the response, which drops the connection unread
            check_size(url, len(buf), policy, " (body ran past it)")
        return bytes(buf)


def _http_size(url: str, policy: FetchPolicy) -> int:
    # A one-byte ranged GET rather than HEAD: it goes through the same redirect checks, and its
    # Content-Range ("bytes 0-0/TOTAL") proves the server can serve the ranged reads that follow.
    with _http_response(url, policy, {"Range": "bytes=0-0"}) as resp:
        total = re.search(r"/(\d+)\s*$", resp.headers.get("Content-Range", ""))
        if resp.status_code != 206 or total is None:
            raise _no_ranges(url, resp.status_code)
        return int(total.group(1))


# ------------------------------------------------------------------------------------------------ gs
def _gcs_call(url: str, policy: FetchPolicy, op: Callable[[Any, str], Awaitable[Any]]) -> Any:
    """Run ``op(fs, path)`` on gcsfs's event loop under a wall-clock deadline of ``timeout_s``.

    gcsfs retries inside every request (6 tries, with sleeps of up to 32 s) and cannot be told not to, so a
    silent endpoint held a worker for ~50 s even with retries=0. The deadline covers the whole call,
    gcsfs's own retries included; our retry loop then decides, as for HTTP.
    """
    import fsspec
    from fsspec.asyn import sync
    from gcsfs.retry import HttpError, is_retriable

    opts = {"requests_timeout": policy.timeout_s, "use_listings_cache": False, **storage_options_for(url)}
    fs = fsspec.filesystem(url_scheme(url), **opts)
    try:
        return sync(fs.loop, op, fs, fs._strip_protocol(url), timeout=policy.timeout_s)
    except FileNotFoundError as e:
        raise FetchError("missing", url, "no such object") from e
    except TimeoutError as e:  # fsspec.FSTimeoutError and asyncio.TimeoutError included
        detail = f"no answer within timeout_s={policy.timeout_s} s (a deadline on the whole gs:// call)"
        raise Transient("timeout", detail) from e
    except HttpError as e:
        if is_retriable(e):
            raise Transient("fetch_error", f"GCS HTTP {e.code}: {e.message}") from e
        raise FetchError("fetch_error", url, f"GCS HTTP {e.code}: {e.message}") from e


def _gcs_read(url: str, policy: FetchPolicy, start: int, end: int | None) -> bytes:
    async def op(fs: Any, path: str) -> bytes:
        if end is not None:
            return await fs._cat_file(path, start=start, end=end)
        size = await fs._size(path)
        check_size(url, size, policy)
        if size == 0:  # a ranged GET of an empty object is a 416 on GCS
            return b""
        # Ranged read: an object replaced by a bigger one after size() still cannot exceed the cap.
        return await fs._cat_file(path, start=0, end=policy.max_bytes + 1)

    data = _gcs_call(url, policy, op)
    check_size(url, len(data), policy)
    return data


def _gcs_size(url: str, policy: FetchPolicy) -> int:
    async def op(fs: Any, path: str) -> int:
        return int(await fs._size(path))

    return _gcs_call(url, policy, op)


# --------------------------------------------------------------------------------------------- local
def open_local(url: str, policy: FetchPolicy) -> BinaryIO:
    """Open a local file for reading once the policy allows it: under ``local_roots`` after resolving
    symlinks and ``..`` (checked before anything is opened), and a regular file (not /dev/zero or a FIFO)."""
    try:
        real = check_local_path(url, policy.local_roots)
        st = os.stat(real)
    except PathRefused as e:
        raise FetchError("blocked", url, str(e)) from e
    except FileNotFoundError as e:
        raise FetchError("missing", url, "no such file") from e
    except OSError as e:
        raise FetchError("fetch_error", url, f"{type(e).__name__}: {e}") from e
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, FIFOs, directories: unbounded or blocking reads
        raise FetchError("blocked", url, "not a regular file")
    try:
        # O_NOFOLLOW: the checked real path cannot be swapped for a symlink between the check and the open;
        # O_NONBLOCK: a FIFO swapped in cannot block the open.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise FetchError("fetch_error", url, f"{type(e).__name__}: {e}") from e
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise FetchError("blocked", url, "the file was replaced while it was being checked")
    return os.fdopen(fd, "rb")


def _local_read(url: str, policy: FetchPolicy, start: int, end: int | None) -> bytes:
    with open_local(url, policy) as f:
        try:
            if end is not None:
                f.seek(start)
                return f.read(end - start)
            check_size(url, os.fstat(f.fileno()).st_size, policy)
            data = f.read(policy.max_bytes + 1)  # the file may have grown since fstat()
        except OSError as e:
            raise FetchError("fetch_error", url, f"{type(e).__name__}: {e}") from e
    check_size(url, len(data), policy)
    return data


def _local_size(url: str, policy: FetchPolicy) -> int:
    with open_local(url, policy) as f:
        return os.fstat(f.fileno()).st_size


# -------------------------------------------------------------------------------------------- fetching
def _classify(e: Exception) -> Transient | None:
    """Transient network failures -> Transient; anything else -> None (not retried)."""
    if isinstance(e, Transient):
        return e
    if isinstance(e, requests.exceptions.SSLError):  # a bad certificate stays bad: don't retry it
        return None
    # fsspec.FSTimeoutError subclasses asyncio.TimeoutError; requests.ConnectTimeout is also a ConnectionError.
    if isinstance(e, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return Transient("timeout", f"{type(e).__name__}: {e}")
    aiohttp = sys.modules.get("aiohttp")  # only gcsfs raises its errors; don't import it for HTTP fetches
    aio_errors = (aiohttp.ClientError,) if aiohttp is not None else ()
    conn = (requests.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError, *aio_errors)
    if isinstance(e, conn):
        return Transient("fetch_error", f"{type(e).__name__}: {e}")
    return None


def _with_retries(url: str, policy: FetchPolicy, once: Callable[[], T]) -> T:
    delays = backoff_delays(policy)
    for attempt in range(policy.retries + 1):
        try:
            return once()
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


# scheme -> (read(url, policy, start, end), size(url, policy)); end=None reads the whole object.
_BACKENDS: dict[str, tuple[Callable[..., bytes], Callable[[str, FetchPolicy], int]]] = {
    "file": (_local_read, _local_size),
    "local": (_local_read, _local_size),
    "http": (_http_read, _http_size),
    "https": (_http_read, _http_size),
    "gs": (_gcs_read, _gcs_size),
    "gcs": (_gcs_read, _gcs_size),
}


def _backend(url: str, policy: FetchPolicy) -> tuple[str, Callable[..., bytes], Callable[..., int]]:
    scheme = check_scheme(url, policy)
    if scheme not in _BACKENDS:  # allow-listed but no guarded implementation (e.g. someone added "s3")
        raise FetchError("blocked", url, f"no guarded fetcher for scheme {scheme!r}")
    return scheme, *_BACKENDS[scheme]


def _run(url: str, policy: FetchPolicy, scheme: str, once: Callable[[], T]) -> T:
    # Local reads fail the same way every time: no retries.
    return once() if scheme in ("file", "local") else _with_retries(url, policy, once)


def fetch_bytes(url: str, policy: FetchPolicy = FetchPolicy()) -> bytes:
    """Fetch ``url`` under ``policy``; raises FetchError(reason in REASONS) on any failure."""
    scheme, read, _ = _backend(url, policy)
    return _run(url, policy, scheme, lambda: read(url, policy, 0, None))


def fetch_range(url: str, policy: FetchPolicy, start: int, end: int) -> bytes:
    """Bytes [start, end) of ``url`` (fewer at the end of the object), under the same checks as fetch_bytes.
    HTTP servers must answer Range requests (206)."""
    scheme, read, _ = _backend(url, policy)
    if end - start > policy.max_bytes:
        raise FetchError("too_large", url, f"range of {end - start} bytes > max_bytes={policy.max_bytes}")
    if end <= start:
        return b""
    return _run(url, policy, scheme, lambda: read(url, policy, start, end))


def fetch_size(url: str, policy: FetchPolicy) -> int:
    """The size of ``url`` in bytes, under the same checks as fetch_bytes."""
    scheme, _, size = _backend(url, policy)
    return _run(url, policy, scheme, lambda: size(url, policy))
