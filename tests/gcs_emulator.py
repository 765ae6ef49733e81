"""Reusable pytest fixture: an in-memory gcp-storage-emulator on 127.0.0.1 that gcsfs talks to.

Use from any test module:

    from tests.gcs_emulator import gcs_emulator  # noqa: F401

then take ``gcs_emulator`` as a fixture argument: ``gcs_emulator.make_bucket("b")`` and ``gs://b/...``
URLs work through fsspec/gcsfs for the rest of the module (module scope: every module gets a fresh,
empty emulator, so env vars never point at another module's server).

How gcsfs is pointed at it (all through the environment, so subprocesses inherit it):
* ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT``: gcsfs reads it on every request (no endpoint_url needed);
* ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: otherwise gcsfs swaps in its "extended" filesystem, which first
  asks a gRPC control plane about every bucket (60 s timeout against the emulator). gcsfs reads it at *import*
  time; if gcsfs was already imported in this process the fixture registers the core class with fsspec instead;
* ``FSSPEC_GS_TOKEN=anon`` / ``FSSPEC_GCS_TOKEN=anon``: anonymous credentials, so gcsfs never probes Google
  default credentials or the metadata server. fsspec reads these at import, so in this process the fixture
  patches ``fsspec.config.conf`` too.
Ray workers that already exist (a session-scoped ``ray_local`` started before this fixture) did not inherit
them: pass ``runtime_env={"env_vars": gcs_emulator.env}`` to the tasks/actors/datasets that read gs://.

The emulator runs in a thread of the test process via its public ``create_server`` API (no orphan process
if pytest dies). Its ``start()`` waits forever if the port cannot be bound, so it is started from a watchdog
thread with a deadline and retried on another port.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

_START_TIMEOUT_S = 10.0
_PROJECT = "test-project"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _threaded_emulator() -> None:
    """The emulator serves with a single-threaded `http.server.HTTPServer`, so one client's keep-alive
    connection (gcsfs pools them) stalls every other client — the driver and each Ray worker — until it times
    out. Serve each connection on its own thread instead (its in-memory store takes a lock per operation)."""
    import types
    from http import server as http_server

    import gcp_storage_emulator.server as emulator

    if getattr(emulator.server, "HTTPServer", None) is not http_server.ThreadingHTTPServer:
        emulator.server = types.SimpleNamespace(HTTPServer=http_server.ThreadingHTTPServer)


def _start_server(attempts: int = 5) -> tuple[Any, int]:
    from gcp_storage_emulator.server import create_server

    _threaded_emulator()

    last = ""
    for _ in range(attempts):
        port = _free_port()
        server = create_server("127.0.0.1", port, in_memory=True)
        started = threading.Thread(target=server.start, daemon=True)
        started.start()
        started.join(_START_TIMEOUT_S)
        if not started.is_alive() and _answers(port):
            return server, port
        last = f"port {port}: did not answer within {_START_TIMEOUT_S} s (port taken?)"
        server.stop()
    raise RuntimeError(f"gcp-storage-emulator failed to start: {last}")


def _http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # an HTTP(S)_PROXY in the environment must not capture 127.0.0.1
    return s


def _answers(port: int) -> bool:
    try:
        r = _http().get(f"http://127.0.0.1:{port}/storage/v1/b", params={"project": _PROJECT}, timeout=5)
        return r.status_code == 200
    except requests.RequestException:
        return False


@dataclass
class GcsEmulator:
    endpoint: str  # http://127.0.0.1:PORT, the value of STORAGE_EMULATOR_HOST
    port: int
    env: dict[str, str] = field(default_factory=dict)  # for runtime_env={"env_vars": ...} / subprocess env
    server: Any = None

    def make_bucket(self, name: str) -> str:
        r = _http().post(
            f"{self.endpoint}/storage/v1/b", params={"project": _PROJECT}, json={"name": name}, timeout=10
        )
        if r.status_code not in (200, 409):  # 409: already exists, fine for module-shared emulators
            raise RuntimeError(f"creating bucket {name!r} failed: HTTP {r.status_code} {r.text[:200]}")
        return name

    def filesystem(self) -> Any:
        """A gcsfs filesystem bound to the emulator (anonymous, no listings cache)."""
        import fsspec

        return fsspec.filesystem("gs", token="anon", use_listings_cache=False)


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[GcsEmulator]:
    import fsspec.config
    from fsspec.registry import _registry  # the mutable dict behind the read-only fsspec.registry view

    server, port = _start_server()
    emu = GcsEmulator(endpoint=f"http://127.0.0.1:{port}", port=port, server=server)
    emu.env = {
        "STORAGE_EMULATOR_HOST": emu.endpoint,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "FSSPEC_GS_TOKEN": "anon",
        "FSSPEC_GCS_TOKEN": "anon",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in emu.env.items():
                mp.setenv(key, value)
            for proto in ("gs", "gcs"):
                mp.setitem(fsspec.config.conf, proto, {**fsspec.config.conf.get(proto, {}), "token": "anon"})
            gcsfs = sys.modules.get("gcsfs")
            if gcsfs is not None and gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
                # gcsfs was imported before the env var was set and picked the extended (gRPC) class.
                for proto in ("gs", "gcs"):
                    mp.setitem(_registry, proto, gcsfs.core.GCSFileSystem)
            yield emu
    finally:
        server.stop()
