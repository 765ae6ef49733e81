"""pipelines.fetch: guards (scheme, address, size, retries, redirects) against a loopback HTTP server."""

from __future__ import annotations

import io
import re
import socket
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import pipelines.fetch as fetch
from pipelines.fetch import (
    FetchError,
    FetchPolicy,
    fetch_bytes,
    fetch_range,
    fetch_size,
)
from pipelines.sources import read_sources
from pipelines.wds_source import read_tar_member

BODY = b"\x00\x01video-bytes" * 100


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# Served with byte ranges (206 + Content-Range), as object stores and CDNs serve tars.
RANGED = {
    "/wds/00000.tar": _tar_bytes({"000.mp4": BODY, "000.txt": b"a clip", "001.jpg": b"jpg", "001.txt": b"b"}),
    "/webvid.csv": b"videoid,contentUrl,duration,page_dir,name\n1,v.mp4,2,d,a clip\n",
}
HUGE_BYTES = 64 * 2**20  # far more than socket buffers hold, so "stopped early" is observable
SMALL_CAP = 64 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: Counter[str]
    sent_bytes: dict[str, int]
    release: threading.Event  # set at teardown so sleeping handlers exit at once


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, total: int) -> None:
        chunk, sent = b"\0" * 65536, 0
        try:
            while sent < total:
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:  # the client hung up: exactly what a size cap should cause
            pass
        self.server.sent_bytes[self.path] = sent

    def _ranged(self, data: bytes) -> None:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if m is None:
            return self._send(200, data)
        start, end = int(m.group(1)), min(int(m.group(2)) + 1, len(data))
        self._send(206, data[start:end], {"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"})

    def do_GET(self) -> None:
        hits = self.server.hits
        hits[self.path] += 1
        if self.path in RANGED:
            self._ranged(RANGED[self.path])
        elif self.path == "/no-ranges.tar":  # a server that ignores Range: the whole body, 200
            self._send(200, RANGED["/wds/00000.tar"])
        elif self.path == "/to-private/webvid.csv":  # a listing that redirects to an internal host
            self._send(302, headers={"Location": "http://10.0.0.1/webvid.csv"})
        elif self.path == "/to-metadata/00000.tar":  # a tar that redirects to the metadata server
            self._send(302, headers={"Location": "http://169.254.169.254/00000.tar"})
        elif self.path == "/file.mp4":
            self._send(200, BODY)
        elif self.path == "/flaky":  # 500 twice, then the body
            self._send(500) if hits[self.path] <= 2 else self._send(200, BODY)
        elif self.path == "/always-500":
            self._send(503)
        elif self.path == "/forbidden":
            self._send(403)
        elif self.path == "/gone":
            self._send(410)
        elif self.path == "/slow":
            self.server.release.wait(5.0)
            self._send(200, BODY)
        elif self.path == "/huge-no-length":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self._stream(HUGE_BYTES)
        elif self.path == "/huge-with-length":
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE_BYTES))
            self.end_headers()
            self._stream(HUGE_BYTES)
        elif self.path == "/to-metadata":
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif self.path == "/to-local":
            self._send(301, headers={"Location": "/file.mp4"})
        elif self.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        else:
            self._send(404)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.hits, srv.sent_bytes, srv.release = Counter(), {}, threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(server: _Server) -> str:
    server.hits.clear()
    return f"http://127.0.0.1:{server.server_address[1]}"


LOOP = FetchPolicy(allow_loopback=True, retries=2, backoff_s=0.01, timeout_s=5.0)


def reason_of(url: str, policy: FetchPolicy = LOOP) -> FetchError:
    with pytest.raises(FetchError) as e:
        fetch_bytes(url, policy)
    return e.value


# --------------------------------------------------------------------------------------------- HTTP
def test_http_file(base: str) -> None:
    assert fetch_bytes(f"{base}/file.mp4", LOOP) == BODY


def test_http_404_and_410_are_missing_without_retry(base: str, server: _Server) -> None:
    assert reason_of(f"{base}/nope.mp4").reason == "missing"
    assert reason_of(f"{base}/gone").reason == "missing"
    assert server.hits["/nope.mp4"] == 1 and server.hits["/gone"] == 1


def test_http_4xx_is_fetch_error_without_retry(base: str, server: _Server) -> None:
    assert reason_of(f"{base}/forbidden").reason == "fetch_error"
    assert server.hits["/forbidden"] == 1


def test_http_500_retried_then_succeeds(base: str, server: _Server) -> None:
    assert fetch_bytes(f"{base}/flaky", LOOP) == BODY
    assert server.hits["/flaky"] == 3


def test_http_5xx_gives_up_after_retries(base: str, server: _Server) -> None:
    err = reason_of(f"{base}/always-500")
    assert err.reason == "fetch_error" and "HTTP 503" in err.detail
    assert server.hits["/always-500"] == LOOP.retries + 1


def test_http_slow_is_timeout_after_retries(base: str, server: _Server) -> None:
    policy = FetchPolicy(allow_loopback=True, timeout_s=0.2, retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    err = reason_of(f"{base}/slow", policy)
    assert err.reason == "timeout"
    assert server.hits["/slow"] == 3
    assert time.monotonic() - t0 < 3.0  # 3 attempts x 0.2 s, not the 5 s the handler would sleep


def test_http_body_without_length_capped(base: str, server: _Server) -> None:
    err = reason_of(f"{base}/huge-no-length", FetchPolicy(allow_loopback=True, max_bytes=SMALL_CAP))
    assert err.reason == "too_large" and "ran past" in err.detail
    deadline = time.monotonic() + 5.0  # the handler records its count once its write fails
    while "/huge-no-length" not in server.sent_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.sent_bytes["/huge-no-length"] < HUGE_BYTES / 2


def test_http_content_length_refused_up_front(base: str, server: _Server) -> None:
    err = reason_of(f"{base}/huge-with-length", FetchPolicy(allow_loopback=True, max_bytes=SMALL_CAP))
    assert err.reason == "too_large" and str(HUGE_BYTES) in err.detail and "ran past" not in err.detail
    assert server.hits["/huge-with-length"] == 1  # not retried


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every address the guarded connection opens a socket to, in order."""
    seen: list[tuple] = []
    real = fetch.create_connection

    def spy(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        seen.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(fetch, "create_connection", spy)
    return seen


def test_redirect_to_metadata_blocked_before_connecting(base: str, connected: list[tuple]) -> None:
    err = reason_of(f"{base}/to-metadata")
    assert err.reason == "blocked" and "169.254.169.254" in err.detail
    assert all(host == "127.0.0.1" for host, _ in connected) and connected  # only the first hop connected


# ---------------------------------------------------------------------------- listings and tars (HTTP)
def test_listing_redirect_to_private_address_refused(base: str, connected: list[tuple]) -> None:
    """A listing is fetched like media: its redirect to an internal host is refused before connecting."""
    with pytest.raises(FetchError) as e:
        read_sources([f"{base}/to-private/webvid.csv"], policy=LOOP)
    assert e.value.reason == "blocked" and "10.0.0.1" in e.value.detail
    assert connected and all(host == "127.0.0.1" for host, _ in connected)


def test_tar_redirect_to_metadata_refused(base: str, connected: list[tuple]) -> None:
    with pytest.raises(FetchError) as e:
        read_sources([f"{base}/to-metadata/00000.tar"], policy=LOOP)
    assert e.value.reason == "blocked" and "169.254.169.254" in e.value.detail
    assert connected and all(host == "127.0.0.1" for host, _ in connected)


def test_http_listing_and_tar_through_guarded_fetch(base: str, server: _Server) -> None:
    (rec,) = read_sources([f"{base}/webvid.csv"], policy=LOOP)
    assert rec.url == f"{base}/v.mp4" and rec.caption == "a clip"
    recs = read_sources([f"{base}/wds/00000.tar"], policy=LOOP)
    assert [(r.caption, r.kind) for r in recs] == [("a clip", "video"), ("b", "image")]
    assert read_tar_member(recs[0].url, LOOP) == BODY
    with pytest.raises(FetchError) as e:  # the loopback opt-in is what let the records above through
        read_tar_member(recs[0].url, FetchPolicy())
    assert e.value.reason == "blocked"


def test_fetch_range_and_size(base: str) -> None:
    tar = RANGED["/wds/00000.tar"]
    assert fetch_size(f"{base}/wds/00000.tar", LOOP) == len(tar)
    assert fetch_range(f"{base}/wds/00000.tar", LOOP, 512, 600) == tar[512:600]
    assert fetch_range(f"{base}/wds/00000.tar", LOOP, len(tar) - 4, len(tar) + 100) == tar[-4:]
    small = FetchPolicy(allow_loopback=True, max_bytes=64)
    assert reason_of_call(lambda: fetch_range(f"{base}/wds/00000.tar", small, 0, 65)).reason == "too_large"
    err = reason_of_call(lambda: fetch_size(f"{base}/no-ranges.tar", LOOP))
    assert err.reason == "fetch_error" and "byte ranges" in err.detail
    assert reason_of_call(lambda: fetch_size(f"{base}/wds/00000.tar", FetchPolicy())).reason == "blocked"


def reason_of_call(call) -> FetchError:
    with pytest.raises(FetchError) as e:
        call()
    return e.value


def test_connect_falls_through_to_next_checked_address(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fetch.resolve_and_check
    tried: list[list[str]] = []

    def first_dead(host: str, port: int, policy: FetchPolicy) -> list[str]:
        tried.append(["127.0.0.2", *real(host, port, policy)])  # nothing listens on 127.0.0.2:port
        return tried[-1]

    monkeypatch.setattr(fetch, "resolve_and_check", first_dead)
    assert fetch_bytes(f"{base}/file.mp4", FetchPolicy(allow_loopback=True, retries=0)) == BODY
    assert tried == [["127.0.0.2", "127.0.0.1"]]


def test_redirect_to_file_scheme_blocked(base: str) -> None:
    assert reason_of(f"{base}/to-file").reason == "blocked"


def test_redirect_on_loopback_followed(base: str, server: _Server) -> None:
    assert fetch_bytes(f"{base}/to-local", LOOP) == BODY
    assert server.hits["/to-local"] == 1 and server.hits["/file.mp4"] == 1


def test_redirect_loop_bounded(base: str, server: _Server) -> None:
    err = reason_of(f"{base}/loop", FetchPolicy(allow_loopback=True, max_redirects=3))
    assert err.reason == "fetch_error" and "max_redirects=3" in err.detail
    assert server.hits["/loop"] == 4


def test_loopback_needs_opt_in(base: str, server: _Server) -> None:
    err = reason_of(f"{base}/file.mp4", FetchPolicy())
    assert err.reason == "blocked" and "allow_loopback=true" in str(err)
    assert server.hits["/file.mp4"] == 0  # refused before connecting
    assert (
        reason_of(f"http://localhost:{server.server_address[1]}/file.mp4", FetchPolicy()).reason == "blocked"
    )


def test_private_hosts_blocked_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    connected: list[tuple] = []
    monkeypatch.setattr(fetch, "create_connection", lambda address, *a, **k: connected.append(address))
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://10.255.255.1/x.mp4",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://2130706433/x.mp4",  # 127.0.0.1 spelled as one decimal number
        "http://0.0.0.0:80/x.mp4",
    ):
        assert reason_of(url, FetchPolicy()).reason == "blocked", url
    assert connected == []


def test_other_schemes_blocked() -> None:
    for url in (
        "ftp://example.com/x.mp4",
        "simplecache::https://example.com/x",
        "memory://x",
        "data:text/plain,x",
    ):
        assert reason_of(url, FetchPolicy()).reason == "blocked", url
    assert reason_of("https://example.com/x", FetchPolicy(allowed_schemes=("file",))).reason == "blocked"


# -------------------------------------------------------------------------------------------- HTTPS
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_with_pinned_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS still verifies the certificate against the URL's host although the socket is opened to the
    checked IP address."""
    import ssl

    cert_path, key_path = _self_signed(tmp_path)
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.hits, srv.sent_bytes, srv.release = Counter(), {}, threading.Event()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = srv.server_address[1]
    try:
        assert reason_of(f"https://127.0.0.1:{port}/file.mp4").reason == "fetch_error"  # untrusted cert
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
        assert fetch_bytes(f"https://127.0.0.1:{port}/file.mp4", LOOP) == BODY
        assert fetch_bytes(f"https://localhost:{port}/file.mp4", LOOP) == BODY
        assert reason_of(f"https://localhost:{port}/file.mp4", FetchPolicy()).reason == "blocked"
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
