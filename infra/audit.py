"""Audit infra/requirements.lock against known advisories (the OSV database, https://osv.dev).

    .venv/bin/python infra/audit.py [--lock FILE] [--ignore FILE] [--url URL]

Sends every `name==version` pin of the lock to OSV's batch query (POST {url}/v1/querybatch, ecosystem PyPI) and
reads each advisory found (GET {url}/v1/vulns/{id}) for its aliases and summary. Exit status:

  0  no advisory for a locked version, or only advisories listed in infra/audit-ignore.txt; also when the
     advisory service cannot be reached (no answer, or an answer that is not OSV's): it prints that the lock
     was NOT audited, so an offline machine is not a failing build, and says so plainly;
  1  an advisory (not ignored) lists a locked version;
  2  the ignore file is malformed (every entry needs a reason).

scripts/test.sh runs it. --url (or $PHENAKI_AUDIT_URL) points it at another OSV-compatible service (a mirror;
the tests use a loopback server).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import requests
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "https://api.osv.dev"
TIMEOUT_S = 20


class Unreachable(Exception):
    """The advisory service gave no usable answer."""


def read_lock(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"audit: {path}: {line!r} is not pinned with ==")
            pins.append((canonicalize_name(name), version.strip()))
    return pins


def read_ignores(path: Path) -> dict[str, str]:
    """advisory id (or alias) -> reason. One per line: `ID  # why it does not apply / when it goes`."""
    ignores: dict[str, str] = {}
    if not path.exists():
        return ignores
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        entry, _, reason = raw.partition("#")
        entry, reason = entry.strip(), reason.strip()
        if not entry:
            continue
        if not reason:
            print(f"audit: {path}:{number}: {entry} has no reason; write `{entry}  # why`", file=sys.stderr)
            raise SystemExit(2)
        ignores[entry] = reason
    return ignores


def _json(response: requests.Response, what: str):
    if response.status_code != 200:
        raise Unreachable(f"{what} answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError as error:
        raise Unreachable(f"{what} answered something that is not JSON") from error


def query(url: str, pins: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict]]:
    """pin -> the advisories (full OSV records) that list it. Raises Unreachable."""
    session = requests.Session()
    found: dict[tuple[str, str], set[str]] = {}
    try:
        queries = [{"package": {"name": n, "ecosystem": "PyPI"}, "version": v} for n, v in pins]
        while queries:
            answer = _json(
                session.post(f"{url}/v1/querybatch", json={"queries": queries}, timeout=TIMEOUT_S),
                f"{url}/v1/querybatch",
            )
            results = answer.get("results") if isinstance(answer, dict) else None
            if not isinstance(results, list) or len(results) != len(queries):
                raise Unreachable(f"{url}/v1/querybatch did not answer one result per query")
            pending = []  # OSV pages long answers: ask again with the page token
            for q, result in zip(queries, results, strict=True):
                pin = (q["package"]["name"], q["version"])
                found.setdefault(pin, set()).update(v["id"] for v in result.get("vulns") or [])
                if result.get("next_page_token"):
                    pending.append({**q, "page_token": result["next_page_token"]})
            queries = pending
        records: dict[str, dict] = {}
        for vuln_id in sorted(set().union(*found.values())):
            records[vuln_id] = _json(
                session.get(f"{url}/v1/vulns/{vuln_id}", timeout=TIMEOUT_S), f"{url}/v1/vulns/{vuln_id}"
            )
    except requests.RequestException as error:
        raise Unreachable(f"{type(error).__name__}: {error}") from error
    return {pin: [records[i] for i in sorted(ids)] for pin, ids in found.items() if ids}


def audit(lock: Path, ignore: Path, url: str) -> int:
    pins = read_lock(lock)
    ignores = read_ignores(ignore)
    try:
        hits = query(url.rstrip("/"), pins)
    except Unreachable as error:
        print(
            f"audit: cannot reach the advisory service at {url} ({error}): the {len(pins)} locked "
            f"dependencies of {lock.name} were NOT audited"
        )
        return 0
    failing, used = [], set()
    for (name, version), records in sorted(hits.items()):
        for record in records:
            names = {record["id"], *(record.get("aliases") or [])}
            line = f"{name}=={version}: {', '.join(sorted(names))}: {record.get('summary') or '(no summary)'}"
            matched = sorted(names & set(ignores))
            if matched:
                used.update(matched)
                print(f"audit: ignored ({ignores[matched[0]]}): {line}")
            else:
                failing.append(line)
    for entry in sorted(set(ignores) - used):
        print(f"audit: note: {ignore.name} lists {entry}, which no locked version has any more: drop it")
    if failing:
        print(f"audit: {len(failing)} advisories list locked versions in {lock.name}:")
        for line in failing:
            print(f"  {line}")
        print(
            f"audit: raise the pins (then the floors in pyproject.toml), or list an id in {ignore.name} with why"
        )
        return 1
    print(f"audit: {len(pins)} locked dependencies checked against {url}: no advisory applies")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=HERE / "requirements.lock")
    parser.add_argument("--ignore", type=Path, default=HERE / "audit-ignore.txt")
    parser.add_argument("--url", default=os.environ.get("PHENAKI_AUDIT_URL", DEFAULT_URL))
    args = parser.parse_args(argv)
    return audit(args.lock, args.ignore, args.url)


if __name__ == "__main__":
    sys.exit(main())
