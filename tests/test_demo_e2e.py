"""End to end: `phenaki demo --fast` as a user runs it — every stage real (Ray Data, Ray Train + DeepSpeed on
2 CPU workers, Ray Serve over HTTP), at debug size."""

from __future__ import annotations

import json
import re

import pytest

from pipelines.media import decode_video
from pipelines.shards import list_shards, read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_readme_quick_start(tmp_path):
    """The README's two commands as written, in the checkout: `bash scripts/demo.sh` with `--fast --out` added
    (the full demo is ~14 minutes; `phenaki demo --fast` runs every stage at debug size), and `bash
    scripts/test.sh` through ruff to pytest collecting one module (running it here would recurse; CI runs it
    whole)."""
    from tests.doc_blocks import REPO, doc_block, run_block, venv_env

    out = tmp_path / "demo"
    env = venv_env(OMP_WAIT_POLICY="PASSIVE")
    env.pop("RAY_ADDRESS", None)
    block = doc_block("README.md", "tests/test_demo_e2e.py::test_readme_quick_start")
    proc = run_block(block, {"bash scripts/demo.sh ": f"bash scripts/demo.sh --fast --out {out} ",
                             "bash scripts/test.sh ": "bash scripts/test.sh --collect-only -q tests/test_docs.py "},
                     cwd=REPO, env=env, timeout=900)  # fmt: skip
    assert re.search(r"^\d+ tests collected", proc.stdout, re.M), proc.stdout[
        -2000:
    ]  # ruff passed, suite found

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
