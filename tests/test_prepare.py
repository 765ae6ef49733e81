"""prepare(): listings -> clip shards on a real local Ray; skips counted; reruns resume and are idempotent."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.clip_samples import cut_clips
from pipelines.media import decode_image, decode_video, encode_jpeg, encode_mp4
from pipelines.prepare import (
    PrepareConfig,
    dedupe_records,
    plan_shards,
    prepare,
)
from pipelines.shards import PlanMismatchError, list_shards, read_manifest, read_shard
from pipelines.sources import SourceRecord

pytestmark = pytest.mark.ray


def _frames(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth gradient moving over time (compresses well, decodes exactly enough)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        for c in range(3):
            out[i, :, :, c] = (base[c] + 2 * x + 3 * y + 8 * i * (c + 1)) % 256
    return out


def make_dataset(root: Path) -> list[str]:
    """4 good videos, 2 good images; bad: missing file, corrupt mp4, empty caption, too short, corrupt jpg."""
    vids = root / "videos"
    vids.mkdir(parents=True)
    rows = []
    for i in range(4):  # 12 fps sources of 2 s: resampled to 8 fps -> 16 frames
        (vids / f"v{i}.mp4").write_bytes(encode_mp4(_frames(24, 40, 56, i), fps=12.0))
        rows.append([f"{100 + i}", f"videos/v{i}.mp4", "2.0", "d", f"video number {i}"])
    (vids / "short.mp4").write_bytes(encode_mp4(_frames(3, 40, 56, 9), fps=8.0))
    (vids / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (vids / "nocap.mp4").write_bytes(encode_mp4(_frames(16, 40, 56, 7), fps=8.0))
    rows += [
        ["200", "videos/missing.mp4", "1", "d", "a missing video"],
        ["201", "videos/corrupt.mp4", "1", "d", "a corrupt video"],
        ["202", "videos/nocap.mp4", "2", "d", ""],
        ["203", "videos/short.mp4", "0.4", "d", "too short"],
    ]
    csv = root / "webvid.csv"
    pd.DataFrame(rows, columns=["videoid", "contentUrl", "duration", "page_dir", "name"]).to_csv(
        csv, index=False
    )

    imgs = root / "images"
    imgs.mkdir()
    urls, caps = [], []
    for i in range(2):
        (imgs / f"i{i}.jpg").write_bytes(encode_jpeg(_frames(1, 48, 30, 20 + i)[0]))
        urls.append(f"file://{imgs}/i{i}.jpg")
        caps.append(f"image number {i}")
    (imgs / "bad.jpg").write_bytes(b"not a jpeg")
    urls.append("images/bad.jpg")
    caps.append("bad image")
    pq = root / "laion.parquet"
    pd.DataFrame({"URL": urls, "TEXT": caps, "WIDTH": [30] * 3, "HEIGHT": [48] * 3}).to_parquet(pq)
    return [str(csv), "file://" + str(pq)]


CFG = PrepareConfig(size=32, num_frames=5, fps=8.0, samples_per_shard=3, num_workers=2)


def _snapshot(d: Path) -> dict[str, tuple[str, int]]:
    """name -> (sha256, mtime_ns) for every file under d."""
    return {
        str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_prepare_counts_resume_and_idempotence(tmp_path, ray_local) -> None:
    sources = make_dataset(tmp_path / "src")
    out = tmp_path / "clips"
    m = prepare(sources, str(out), CFG)

    assert m["num_records"] == 11
    assert m["counts"] == {"video": 4, "image": 2}
    assert m["skips"] == {"empty_caption": 1, "missing": 1, "too_few_frames": 1, "undecodable": 2}
    assert m["num_samples"] == 6 and m["schema_version"] == 3
    assert m["config"]["size"] == 32
    assert {e["reason"] for e in m["skipped_examples"]} == set(m["skips"])
    # 11 records sorted by key ("laion-..." < "webvid-..."), 3 per shard -> 4 shards; the last holds
    # webvid-201..203, all bad, so it has no tar (only its progress record)
    assert m["shards"] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert json.loads((out / "_progress" / "shard-000003.json").read_text())["num_samples"] == 0
    assert [Path(s).name for s in list_shards(str(out))] == m["shards"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert read_manifest(str(out)) == m

    samples = [s for uri in list_shards(str(out)) for s in read_shard(uri)]
    assert sum(v["num_samples"] for v in m["shard_counts"].values()) == len(samples) == 6
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(keys) and len(set(keys)) == 6
    by_kind = {"video": [], "image": []}
    for s in samples:
        meta = json.loads(s["json"])
        by_kind[meta["kind"]].append((s, meta))
        assert meta["height"] == meta["width"] == 32
    for s, meta in by_kind["video"]:
        assert set(s) == {"__key__", "mp4", "txt", "json"}
        assert meta["num_frames"] == 5 and meta["fps"] == 8.0 and meta["source"] == "webvid"
        assert s["txt"].decode().startswith("video number ")
        assert decode_video(s["mp4"]).frames.shape == (5, 32, 32, 3)
    for s, meta in by_kind["image"]:
        assert set(s) == {"__key__", "jpg", "txt", "json"} and meta["num_frames"] == 1
        assert decode_image(s["jpg"]).shape == (32, 32, 3)
        assert meta["source"] == "laion" and meta["meta"]["WIDTH"] == 30

    # A finished rerun does nothing: every file (shards, progress, manifest) untouched.
    before = _snapshot(out)
    assert prepare(sources, str(out), CFG) == m
    assert _snapshot(out) == before

    # A job killed mid-way: shard 2's tar lost, shard 1 never finished (no tar, no progress record,
    # a half-written temp file). The rerun remakes exactly those, byte-identical, and clears the temp.
    (out / "shard-000002.tar").unlink()
    (out / "shard-000001.tar").unlink()
    (out / "_progress" / "shard-000001.json").unlink()
    (out / "shard-000001.tar.tmp-deadbeef").write_bytes(b"partial")
    assert prepare(sources, str(out), CFG) == m
    after = _snapshot(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    for name in ("shard-000001.tar", "shard-000002.tar"):
        assert after[name][1] != before[name][1]  # really rewritten
    for name in ("shard-000000.tar", "_progress/shard-000000.json", "_progress/shard-000003.json"):
        assert after[name] == before[name]  # untouched


def test_strict_raises_naming_input(tmp_path, ray_local) -> None:
    src = tmp_path / "webvid.csv"
    pd.DataFrame(
        [["1", "nothere.mp4", "1", "d", "x"]],
        columns=["videoid", "contentUrl", "duration", "page_dir", "name"],
    ).to_csv(src, index=False)
    strict = PrepareConfig(size=32, num_frames=5, strict=True, num_workers=1)
    with pytest.raises(Exception, match="nothere.mp4") as info:
        prepare([str(src)], str(tmp_path / "out"), strict)
    assert "without strict" in str(info.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_changed_inputs_refuse_to_mix(tmp_path) -> None:
    # Progress from one plan, then a rerun with another config: refused before any work (no Ray needed).
    src = tmp_path / "webvid.csv"
    pd.DataFrame(
        [["1", "a.mp4", "1", "d", ""]], columns=["videoid", "contentUrl", "duration", "page_dir", "name"]
    ).to_csv(src, index=False)
    from pipelines.prepare import process_shard, shard_digest
    from pipelines.sources import read_source

    recs = read_source(str(src))
    process_shard(0, recs, shard_digest(recs, CFG), str(tmp_path / "out"), CFG)  # empty caption: 0 samples
    with pytest.raises(PlanMismatchError, match="new output directory"):
        prepare([str(src)], str(tmp_path / "out"), PrepareConfig(size=48, num_frames=5, samples_per_shard=3))
    # a shorter listing than the one that made the directory: shard 1 is foreign
    (tmp_path / "out" / "_progress" / "shard-000001.json").write_text("{}")
    with pytest.raises(PlanMismatchError, match="shard-000001"):
        prepare([str(src)], str(tmp_path / "out"), CFG)


def test_cut_clips() -> None:
    f = np.zeros((12, 4, 4, 3), np.uint8)
    f[:, 0, 0, 0] = np.arange(12)
    cfg = PrepareConfig(size=4, num_frames=5)
    clip = cut_clips(f, cfg)  # frames decoded from a clip's start -> exactly num_frames of them
    assert clip.shape == (5, 4, 4, 3) and list(clip[:, 0, 0, 0]) == [0, 1, 2, 3, 4]
    padded = cut_clips(f[:3], PrepareConfig(size=4, num_frames=5, min_frames=3))
    assert padded.shape == (5, 4, 4, 3) and list(padded[:, 0, 0, 0]) == [0, 1, 2, 2, 2]
    with pytest.raises(Exception, match="too_few_frames"):
        cut_clips(f[:3], PrepareConfig(size=4, num_frames=5))


def test_dedupe_and_plan() -> None:
    def rec(key: str, url: str) -> SourceRecord:
        return SourceRecord(key, url, "c", "image", "laion", key)

    recs, dropped = dedupe_records([rec("b", "u1"), rec("a", "u2"), rec("b", "u1"), rec("b", "u3")])
    assert dropped == 1
    assert [r.key for r in recs][:2] == ["a", "b"] and recs[2].key.startswith("b-") and len(recs) == 3
    assert [len(s) for s in plan_shards(recs, 2)] == [2, 1]
