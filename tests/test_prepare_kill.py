"""Kill `phenaki prepare` mid-run (SIGKILL, whole process group, Ray included), rerun it, and compare with a
clean run: identical shard bytes, no sample missing or doubled, finished shards not redone, nothing partial
ever visible."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.prepare import PrepareConfig, prepare
from pipelines.shards import read_manifest, read_shard
from pipelines.synth import synthesize

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"size": 32, "num_frames": 9, "samples_per_shard": 2, "num_workers": 1}


def shard_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.tar"))}


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_killed_prepare_reruns_to_identical_shards(tmp_path, ray_local) -> None:
    synthesize(tmp_path / "src", num_videos=40, num_images=16, seed=3)
    sources = [str(tmp_path / "src" / "webvid.csv"), str(tmp_path / "src" / "laion.parquet")]
    killed = tmp_path / "killed"

    cmd = [
        sys.executable,
        "-m",
        "jobs.prepare",
        *sum((["--source", s] for s in sources), []),
        "--out",
        str(killed),
        *(f"prepare.{k}={v}" for k, v in SETTINGS.items()),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        # Kill as soon as a few of the 28 shards are complete: the run is certainly mid-way then.
        wait_for(
            lambda: (
                len(list((killed / "_progress").glob("*.json"))) >= 3
                if (killed / "_progress").exists()
                else proc.poll() is not None
            ),
            240,
            "the first shards",
        )
        assert proc.poll() is None, (
            f"prepare ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        os.killpg(proc.pid, signal.SIGKILL)  # driver, its Ray head and every worker
    finally:
        proc.wait(timeout=60)
    time.sleep(1.0)  # anything still alive would show up as changed files below

    assert not (killed / "manifest.json").exists()
    survivors = shard_digests(killed)
    progress = sorted(p.stem for p in (killed / "_progress").glob("*.json"))
    assert survivors and len(progress) < 28
    mtimes = {name: (killed / name).stat().st_mtime_ns for name in survivors}

    cfg = PrepareConfig(**SETTINGS)
    resumed = prepare(sources, str(killed), cfg)
    clean = prepare(sources, str(tmp_path / "clean"), cfg)

    # Every shard that was visible after the kill was complete: byte-identical to the clean run's, and the
    # rerun did not rewrite it (only incomplete shards are redone).
    clean_digests = shard_digests(tmp_path / "clean")
    for name, digest in survivors.items():
        assert clean_digests[name] == digest
        assert (killed / name).stat().st_mtime_ns == mtimes[name]
    assert shard_digests(killed) == clean_digests
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]  # leftovers of the killed writer are gone

    # None missing, none doubled.
    keys = [s["__key__"] for name in sorted(clean_digests) for s in read_shard(str(killed / name))]
    assert len(keys) == len(set(keys)) == resumed["num_samples"] == clean["num_samples"] == 56
    assert resumed["counts"] == clean["counts"] == {"video": 40, "image": 16}
    assert read_manifest(str(killed))["shards"] == clean["shards"]

    # And a finished run rerun does nothing.
    before = {p.name: p.stat().st_mtime_ns for p in killed.iterdir() if p.is_file()}
    assert prepare(sources, str(killed), cfg) == resumed
    assert {p.name: p.stat().st_mtime_ns for p in killed.iterdir() if p.is_file()} == before
