"""End to end: `phenaki demo --fast` as a user runs it — every stage real (Ray Data, Ray Train + DeepSpeed on
2 CPU workers, Ray Serve over HTTP), at debug size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipelines.media import decode_video
from pipelines.shards import list_shards, read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_demo_fast_runs_every_stage_and_keeps_artifacts(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--fast", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # Artifacts a user can reuse.
    assert read_manifest(str(out / "clips"))["counts"]["video"] > 0
    assert read_manifest(str(out / "clips"))["counts"]["image"] > 0
    assert list_shards(str(out / "tokens"))
    for ckpt in ("tokenizer", "transformer", "transformer/tokenizer"):
        assert (out / ckpt / "model.safetensors").exists(), ckpt

    results = json.loads((out / "results.json").read_text())
    kinds = [r["kind"] for r in results["records"]]
    assert kinds.count("held-out") >= 3 and "purple" in kinds and "story" in kinds
    story = next(r for r in results["records"] if r["kind"] == "story")
    assert len(story["prompts"]) >= 2 and len(story["segments"]) == len(story["prompts"])
    for record in results["records"]:
        video = decode_video(str(out / record["file"]))
        assert video.frames.shape[1:] == (32, 32, 3)
        assert (out / record["gif"]).exists()
    assert len(decode_video(str(out / story["file"])).frames) > 9  # the story extends the first clip

    assert set(results["adherence"]) == {"held-out", "purple", "story"}
    for summary in results["adherence"].values():
        assert summary["num_segments"] > 0 and 0.0 <= summary["colour"] <= 1.0
    for stage in ("synth", "prepare", "train-tokenizer", "tokenize", "train-transformer", "serve"):
        assert any(name.startswith(stage) for name in results["timings_s"]), stage

    html = (out / "index.html").read_text()
    assert all(r["file"] in html for r in results["records"])
    assert "phenaki generate --checkpoint" in proc.stdout and "index.html" in proc.stdout
