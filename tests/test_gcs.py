"""gs:// through gcsfs against gcp-storage-emulator on 127.0.0.1: fetch_bytes and fsspec listing."""

from __future__ import annotations

import fsspec
import pytest

from pipelines.fetch import FetchError, FetchPolicy, fetch_bytes, storage_options_for
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
