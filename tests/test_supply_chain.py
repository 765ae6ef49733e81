"""Supply chain: the dependency floors stay at the releases that fix known advisories, and infra/audit.py
decides right against a real (loopback) HTTP server speaking OSV's API: an advisory for a locked version fails
the audit, a clean answer passes, an ignored advisory passes, no answer passes and says the lock was not
audited. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra_helpers import INFRA, PYPROJECT, ROOT

# The lowest release of each package that fixes the advisories named; pyproject.toml's comments say the same.
# A floor below these would let a resolver pick a version with a known hole.
ADVISORY_FLOORS = {
    "torch": ("2.6.0", "CVE-2025-32434"),
    "pyarrow": ("14.0.1", "CVE-2023-47248"),
    "av": ("17.1.0", "CVE-2026-40962 (bundled FFmpeg)"),
    "pillow": ("12.3.0", "PYSEC-2026-2253..2257"),
    "transformers": ("5.5.0", "CVE-2026-5241"),
    "requests": ("2.33.0", "CVE-2026-25645"),
    "urllib3": ("2.7.0", "CVE-2026-44431, CVE-2026-44432"),
    "tqdm": ("4.66.3", "CVE-2024-34062"),
}
SETUPTOOLS_FLOOR = ("78.1.1", "CVE-2025-47273")
AUDIT = INFRA / "audit.py"


def lowest_allowed(spec: str) -> Version:
    """The lowest version a requirement admits (its == or >= / > / ~= bound)."""
    bounds = [
        Version(s.version) for s in Requirement(spec).specifier if s.operator in ("==", ">=", ">", "~=")
    ]
    assert bounds, f"{spec!r} has no lower bound"
    return max(bounds)


@pytest.mark.parametrize("name", sorted(ADVISORY_FLOORS))
def test_dependency_floor_is_at_or_above_the_advisory_fix(name):
    floor, advisory = ADVISORY_FLOORS[name]
    [spec] = [
        s for s in PYPROJECT["project"]["dependencies"] if canonicalize_name(Requirement(s).name) == name
    ]
    assert lowest_allowed(spec) >= Version(floor), f"{spec} admits versions before {floor} ({advisory})"


def test_build_requirement_floor_is_at_or_above_the_advisory_fix():
    [spec] = [s for s in PYPROJECT["build-system"]["requires"] if Requirement(s).name == "setuptools"]
    assert lowest_allowed(spec) >= Version(SETUPTOOLS_FLOOR[0]), SETUPTOOLS_FLOOR[1]


def test_the_installed_environment_meets_the_floors():
    from importlib.metadata import version

    for name, (floor, advisory) in ADVISORY_FLOORS.items():
        installed = Version(version(name).split("+", 1)[0])
        assert installed >= Version(floor), f"installed {name} {installed} predates {advisory}"


# ----------------------------------------------------------------------------------------------- audit.py
class FakeOSV:
    """OSV's two endpoints on 127.0.0.1: querybatch answers `vulns` for the pins in `advisories`."""

    def __init__(self, advisories: dict[tuple[str, str], list[dict]], status: int = 200):
        self.advisories, self.status, self.queries = advisories, status, []
        records = {r["id"]: r for rs in advisories.values() for r in rs}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                assert self.path == "/v1/querybatch"
                queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
                fake.queries.extend(queries)
                results = []
                for q in queries:
                    hits = fake.advisories.get((q["package"]["name"], q["version"]), [])
                    results.append({"vulns": [{"id": r["id"]} for r in hits]} if hits else {})
                self.answer({"results": results})

            def do_GET(self):
                self.answer(records[self.path.removeprefix("/v1/vulns/")])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def osv():
    servers = []

    def start(advisories=None, status=200):
        servers.append(FakeOSV(advisories or {}, status))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


LOCK = "# a lock\nPillow==11.0.0\nrequests==2.34.2\n"
PILLOW_ADVISORY = {
    "id": "GHSA-test-pill-ow00",
    "aliases": ["CVE-2099-0001"],
    "summary": "heap overflow in a decoder",
}


def run_audit(tmp_path, url, ignore_text=""):
    (tmp_path / "requirements.lock").write_text(LOCK)
    (tmp_path / "audit-ignore.txt").write_text(ignore_text)
    args = ["--lock", tmp_path / "requirements.lock", "--ignore", tmp_path / "audit-ignore.txt", "--url", url]
    return subprocess.run(
        [sys.executable, str(AUDIT), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_audit_fails_when_an_advisory_lists_a_locked_version(osv, tmp_path):
    server = osv({("pillow", "11.0.0"): [PILLOW_ADVISORY]})
    done = run_audit(tmp_path, server.url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pillow==11.0.0: CVE-2099-0001, GHSA-test-pill-ow00: heap overflow in a decoder" in done.stdout
    # every pin was asked about, by its canonical PyPI name
    assert sorted(
        (q["package"]["name"], q["version"], q["package"]["ecosystem"]) for q in server.queries
    ) == [
        ("pillow", "11.0.0", "PyPI"),
        ("requests", "2.34.2", "PyPI"),
    ]


def test_audit_passes_a_clean_lock(osv, tmp_path):
    done = run_audit(tmp_path, osv().url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 locked dependencies checked" in done.stdout and "no advisory applies" in done.stdout


def test_audit_passes_an_advisory_ignored_with_a_reason_and_refuses_one_without(osv, tmp_path):
    server = osv({("pillow", "11.0.0"): [PILLOW_ADVISORY]})
    done = run_audit(tmp_path, server.url, "CVE-2099-0001  # the decoder is never fed untrusted files\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ignored (the decoder is never fed untrusted files): pillow==11.0.0" in done.stdout
    done = run_audit(tmp_path, server.url, "CVE-2099-0001\n")
    assert done.returncode == 2 and "has no reason" in done.stderr


def test_audit_passes_and_says_so_when_the_service_cannot_be_reached(osv, tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    done = run_audit(tmp_path, closed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cannot reach the advisory service at {closed}" in done.stdout
    assert "were NOT audited" in done.stdout
    # something that answers, but not as OSV (a proxy's error page, pypi.org's 404 here): not audited either
    done = run_audit(tmp_path, osv(status=404).url)
    assert done.returncode == 0 and "answered HTTP 404" in done.stdout and "NOT audited" in done.stdout


def test_the_committed_ignore_file_parses():
    from infra.audit import read_ignores

    assert all(reason for reason in read_ignores(INFRA / "audit-ignore.txt").values())


def test_ci_runs_the_audit():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert ".venv/bin/python infra/audit.py" in script
