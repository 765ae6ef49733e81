"""gs:// through gcsfs against gcp-storage-emulator on 127.0.0.1: fetch_bytes, ranged tar reads, the
deadline on gcsfs's own retries, and fsspec listing."""

from __future__ import annotations

import io
import socket
import tarfile
import threading
from collections.abc import Iterator

import fsspec
import pytest

from pipelines.fetch import FetchError, FetchPolicy, fetch_bytes, storage_options_for
from pipelines.sources import read_sources
from pipelines.wds_source import read_tar_member
from tests.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401  (pytest's pythonpath has the repo root)

BUCKET = "phenaki-test"


@pytest.fixture(scope="module")
def bucket(gcs_emulator: GcsEmulator) -> str:  # noqa: F811
    gcs_emulator.make_bucket(BUCKET)
    fs = gcs_emulator.filesystem()
    fs.pipe(f"{BUCKET}/x.mp4", b"video-bytes")
    fs.pipe(f"{BUCKET}/big.mp4", b"\0" * 4096)
    fs.pipe(f"{BUCKET}/empty.mp4", b"")
    for name in ("a.mp4", "b.mp4", "c.txt", "sub/d.mp4"):
        fs.pipe(f"{BUCKET}/dir/{name}", name.encode())
    return BUCKET


def test_fetch_gs_object(bucket: str) -> None:
    assert fetch_bytes(f"gs://{bucket}/x.mp4") == b"video-bytes"
    assert fetch_bytes(f"gcs://{bucket}/x.mp4") == b"video-bytes"  # fsspec's alias for the same backend
    assert fetch_bytes(f"gs://{bucket}/empty.mp4") == b""


def test_missing_object_is_missing(bucket: str) -> None:
    with pytest.raises(FetchError) as e:
        fetch_bytes(f"gs://{bucket}/nope.mp4", FetchPolicy(retries=0))
    assert e.value.reason == "missing"
    assert e.value.url == f"gs://{bucket}/nope.mp4"


def test_too_large_object_refused_from_size(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import gcsfs.core

    read_calls: list[tuple] = []
    original = gcsfs.core.GCSFileSystem._cat_file

    async def spy(self, *args, **kwargs):  # the body must not be read once size() says it is too big
        read_calls.append(args)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(gcsfs.core.GCSFileSystem, "_cat_file", spy)
    with pytest.raises(FetchError) as e:
        fetch_bytes(f"gs://{bucket}/big.mp4", FetchPolicy(max_bytes=1024))
    assert e.value.reason == "too_large"
    assert "4096" in e.value.detail
    assert read_calls == []


def test_glob_and_open_through_fsspec(bucket: str) -> None:
    pattern = f"gs://{bucket}/dir/*.mp4"
    fs, _, paths = fsspec.get_fs_token_paths(pattern, storage_options=storage_options_for(pattern))
    assert sorted(paths) == [f"{bucket}/dir/a.mp4", f"{bucket}/dir/b.mp4"]
    assert sorted(fs.glob(f"gs://{bucket}/dir/**/*.mp4")) == [
        f"{bucket}/dir/a.mp4",
        f"{bucket}/dir/b.mp4",
        f"{bucket}/dir/sub/d.mp4",
    ]
    with fsspec.open(f"gs://{bucket}/dir/a.mp4", "rb", **storage_options_for(pattern)) as f:
        assert f.read() == b"a.mp4"


def test_storage_options_anonymous_under_emulator(gcs_emulator: GcsEmulator) -> None:  # noqa: F811
    assert storage_options_for("gs://b/x") == {"token": "anon"}
    assert storage_options_for("/tmp/x") == {}
    assert storage_options_for("https://example.com/x") == {}


def test_subprocess_reaches_emulator_through_env_only(bucket: str, gcs_emulator: GcsEmulator) -> None:  # noqa: F811
    """What Ray workers and subprocesses rely on: the fixture's env vars alone (no storage options)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import fsspec, gcsfs\n"
        "from pipelines.fetch import fetch_bytes\n"
        "assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, 'extended (gRPC) gcsfs selected'\n"
        f"assert fetch_bytes('gs://{bucket}/x.mp4') == b'video-bytes'\n"
        f"assert fsspec.open('gs://{bucket}/dir/a.mp4', 'rb').open().read() == b'a.mp4'\n"
    )
    env = {**os.environ, **gcs_emulator.env}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture
def silent_endpoint(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    """STORAGE_EMULATOR_HOST pointed at a loopback TCP server that accepts connections and never answers:
    what a hung GCS frontend looks like to gcsfs (the emulator fixture supplies the rest of the env)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # keep it open and say nothing
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    yield endpoint
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_gs_deadline_covers_gcsfs_retries(silent_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """gcsfs retries a silent endpoint 6 times with sleeps of its own (~50 s with retries=0 before): each gs://
    call now runs under a deadline of timeout_s, so it fails as a timeout once, on our terms."""
    import fsspec.asyn

    deadlines: list[float | None] = []
    real_sync = fsspec.asyn.sync

    def spy(loop, func, *args, timeout=None, **kwargs):  # fsspec.asyn.sync, recording the deadline
        deadlines.append(timeout)
        return real_sync(loop, func, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(fsspec.asyn, "sync", spy)
    with pytest.raises(FetchError) as e:
        fetch_bytes("gs://hung-bucket/x.mp4", FetchPolicy(timeout_s=0.5, retries=0))
    assert e.value.reason == "timeout"
    assert "timeout_s=0.5" in e.value.detail and "after 1 attempts" in e.value.detail
    assert deadlines == [0.5]  # one call, under the configured deadline


def test_gs_webdataset_tar_read_by_range(bucket: str) -> None:
    """A tar on gs:// is listed from its headers and its members read by range, through the guarded fetch."""
    fs = fsspec.filesystem("gs", token="anon", use_listings_cache=False)
    buf = io.BytesIO()
    members = {"000.mp4": b"\0video" * 1000, "000.txt": b"a clip", "001.jpg": b"jpg", "001.txt": b"b"}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs.pipe(f"{bucket}/wds/00000.tar", buf.getvalue())
    fs.pipe(f"{bucket}/wds/00000_stats.json", b"{}")
    recs = read_sources([f"gs://{bucket}/wds/*.tar::name=gcs"])
    assert recs[0].url == f"tar+gs://{bucket}/wds/00000.tar#000.mp4" and recs[0].key == "gcs-00000-000"
    assert [(r.caption, r.kind) for r in recs] == [("a clip", "video"), ("b", "image")]
    assert [read_tar_member(r.url, FetchPolicy()) for r in recs] == [members["000.mp4"], members["001.jpg"]]
