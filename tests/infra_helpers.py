"""Shared constants and helpers for tests/test_infra.py and tests/test_infra_jobs.py (not a test module)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
LAUNCHER = INFRA / "gcp-cluster.yaml"
IMAGE = (INFRA / "image.txt").read_text().strip()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAY_VERSION = "2.60.0"
MOUNT = "/mnt/phenaki"  # the bucket, mounted in every pod / on every VM
PLACEHOLDERS = ("PROJECT_ID", "REGION", "ZONE", "BUCKET")

EXPECTED_JOBS = {  # RayJob file -> job module
    "rayjob-prepare.yaml": "jobs.prepare",
    "rayjob-train-tokenizer.yaml": "jobs.train_tokenizer",
    "rayjob-tokenize.yaml": "jobs.tokenize",
    "rayjob-train-transformer.yaml": "jobs.train_transformer",
}


# ----------------------------------------------------------------------------------------------- helpers
def yaml_files() -> list[Path]:
    return sorted(INFRA.rglob("*.yaml"))


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def kuberay_docs() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in load_docs(path)]


def ray_docs(kind: str | None = None) -> list[tuple[Path, dict]]:
    return [
        (p, d)
        for p, d in kuberay_docs()
        if d.get("apiVersion") == "ray.io/v1" and (kind is None or d["kind"] == kind)
    ]


def job_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `python -m`) for every job command in infra/ and docs/cluster.md."""
    commands = []
    for path, doc in ray_docs("RayJob"):
        commands.append((f"{path.name}: entrypoint", doc["spec"]["entrypoint"]))
    doc = ROOT / "docs" / "cluster.md"
    if doc.exists():
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if "python -m jobs." in line:
                    commands.append(("docs/cluster.md", line))
    out = []
    for where, text in commands:
        argv = shlex.split(text, comments=True)
        for i in range(len(argv) - 2):
            if argv[i] == "python" and argv[i + 1] == "-m" and argv[i + 2].startswith("jobs."):
                out.append((where, argv[i + 2 :]))
    return out


def uris(value) -> list[str]:
    """A --data value as a list of URIs (repeatable and/or comma-separated in some jobs)."""
    values = value if isinstance(value, list) else [value]
    return [u for v in values for u in str(v).split(",") if u]


def parse_job_args(where: str, argv: list[str]) -> tuple[object, argparse.Namespace]:
    module_name, args = argv[0], argv[1:]
    assert (ROOT / (module_name.replace(".", "/") + ".py")).is_file(), f"{where}: no {module_name}"
    module = importlib.import_module(module_name)
    assert callable(getattr(module, "main", None)), f"{where}: {module_name} has no main()"
    assert callable(getattr(module, "add_arguments", None)), f"{where}: {module_name} has no add_arguments()"
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}")
    module.add_arguments(parser)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ns = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `python -m {module_name} {shlex.join(args)}` is refused: {stderr.getvalue()}")
    return module, ns
