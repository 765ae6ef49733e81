"""Shard I/O: round trip, atomic writes, key sanitising, manifests."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest

from pipelines.shards import (
    PlanMismatchError,
    check_no_foreign_shards,
    completed_shard,
    list_shards,
    load_npy,
    npy_bytes,
    progress_indices,
    progress_uri,
    read_manifest,
    read_shard,
    remove_temp_files,
    sanitize_key,
    shard_index,
    shard_name,
    write_json,
    write_manifest,
    write_shard,
)


def _samples(n: int) -> list[dict]:
    return [
        {
            "__key__": f"s{i:03d}",
            "mp4": bytes([i]) * 10,
            "txt": f"caption {i} ✓",
            "json": {"kind": "video", "i": i},
            "tokens.npy": np.arange(12, dtype=np.int16).reshape(3, 2, 2) + i,
        }
        for i in range(n)
    ]


def test_shard_name_and_index() -> None:
    assert shard_name(0) == "shard-000000.tar"
    assert shard_name(123) == "shard-000123.tar"
    assert shard_index("gs://b/x/shard-000123.tar") == 123
    with pytest.raises(ValueError):
        shard_name(-1)


def test_round_trip(tmp_path) -> None:
    uri = str(tmp_path / shard_name(0))
    assert write_shard(uri, _samples(3)) == 3
    got = list(read_shard(uri))
    assert [s["__key__"] for s in got] == ["s000", "s001", "s002"]
    assert got[1]["mp4"] == bytes([1]) * 10
    assert got[1]["txt"].decode("utf-8") == "caption 1 ✓"
    assert json.loads(got[1]["json"]) == {"kind": "video", "i": 1}
    tokens = load_npy(got[2]["tokens.npy"])
    assert tokens.dtype == np.int16 and tokens.shape == (3, 2, 2) and tokens[0, 0, 0] == 2
    # webdataset layout: member names are <key>.<ext>
    with tarfile.open(uri) as tar:
        assert "s000.tokens.npy" in tar.getnames() and "s000.mp4" in tar.getnames()


def test_file_uri_and_listing(tmp_path) -> None:
    d = "file://" + str(tmp_path / "ds")
    for i in (2, 0, 1):
        write_shard(f"{d}/{shard_name(i)}", _samples(1))
    (tmp_path / "ds" / "notes.txt").write_text("x")
    shards = list_shards(d)
    assert shards == [f"{d}/{shard_name(i)}" for i in range(3)]
    assert list_shards(str(tmp_path / "missing")) == []


def test_write_is_deterministic(tmp_path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    write_shard(str(a), _samples(4))
    write_shard(str(b), _samples(4))
    assert a.read_bytes() == b.read_bytes()


def test_failure_mid_write_leaves_nothing(tmp_path) -> None:
    uri = str(tmp_path / shard_name(0))

    def failing():
        yield from _samples(2)
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError, match="decoder crashed"):
        write_shard(uri, failing())
    assert os.listdir(tmp_path) == []  # no shard, no temp file

    # an old complete shard stays intact when its rewrite fails
    write_shard(uri, _samples(1))
    before = (tmp_path / shard_name(0)).read_bytes()
    with pytest.raises(TypeError):
        write_shard(uri, [{"__key__": "a", "txt": object()}])
    assert (tmp_path / shard_name(0)).read_bytes() == before
    assert os.listdir(tmp_path) == [shard_name(0)]


def test_bad_keys_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="sanitize_key"):
        write_shard(str(tmp_path / "x.tar"), [{"__key__": "a.b", "txt": "t"}])
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(str(tmp_path / "x.tar"), [{"__key__": "a", "txt": "t"}, {"__key__": "a", "txt": "u"}])
    with pytest.raises(TypeError, match="npy"):
        write_shard(str(tmp_path / "x.tar"), [{"__key__": "a", "bin": np.zeros(2)}])
    assert not (tmp_path / "x.tar").exists()


def test_sanitize_key() -> None:
    assert sanitize_key("abc_123-X") == "abc_123-X"
    a, b = sanitize_key("a.b"), sanitize_key("a/b")
    assert a != b
    for k in (a, b, sanitize_key("https://x.org/v/1.mp4?q=1")):
        assert "." not in k and "/" not in k and k
    assert sanitize_key("a.b") == a  # deterministic
    with pytest.raises(ValueError):
        sanitize_key("")


def test_npy_helpers() -> None:
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float16)
    y = load_npy(npy_bytes(x))
    assert y.dtype == np.float16 and np.array_equal(x, y)


def test_manifest_round_trip(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest(str(tmp_path))
    m = {"schema_version": 1, "counts": {"video": 3}, "shards": [shard_name(0)]}
    write_manifest(str(tmp_path), m)
    assert read_manifest(str(tmp_path)) == m
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_resume_records(tmp_path) -> None:
    d = str(tmp_path)
    assert completed_shard(d, 0, "abc") is None  # never made
    write_shard(f"{d}/{shard_name(0)}", _samples(2))
    write_json(progress_uri(d, 0), {"digest": "abc", "num_samples": 2})
    write_json(progress_uri(d, 1), {"digest": "abc", "num_samples": 0})  # an all-skipped shard: no tar
    assert completed_shard(d, 0, "abc") == {"digest": "abc", "num_samples": 2}
    assert completed_shard(d, 1, "abc") is not None
    with pytest.raises(PlanMismatchError, match="new output directory"):
        completed_shard(d, 0, "other")
    assert progress_indices(d) == [0, 1]
    check_no_foreign_shards(d, {0, 1})
    with pytest.raises(PlanMismatchError, match="shard-000001"):
        check_no_foreign_shards(d, {0})
    (tmp_path / shard_name(0)).unlink()
    assert completed_shard(d, 0, "abc") is None  # tar lost: remake
    (tmp_path / "shard-000003.tar.tmp-0123").write_bytes(b"half")
    (tmp_path / "_progress" / "shard-000003.json.tmp-0123").write_bytes(b"{")
    assert remove_temp_files(d) == 2
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def _make_shards(out: str, made: list[int]):
    """What a job's workers do for each row: write the shard's tar, then its progress record (both atomic)."""

    def make(rows: list[dict]):
        for row in rows:
            i = row["index"]
            made.append(i)
            write_shard(f"{out}/{shard_name(i)}", _samples(i + 1))
            state = {"index": i, "name": shard_name(i), "digest": row["digest"], "num_samples": i + 1,
                     "counts": {"video": i + 1}, "skips": {"bad": 1}}  # fmt: skip
            write_json(progress_uri(out, i), state)
            yield state

    return make


def test_sharded_job_makes_only_what_is_missing_and_writes_the_manifest_last(tmp_path) -> None:
    """`prepare` and `tokenize` share this driver: a rerun makes only the missing shards, an unchanged
    finished plan returns its manifest untouched, another plan's directory is refused."""
    from pipelines.sharded_job import ShardPlan, run_sharded_job, shard_totals

    out = str(tmp_path)
    plan = ShardPlan("job", out, {0: "d0", 1: "d1", 2: "d2"}, plan_digest="p")
    made: list[int] = []

    def manifest(states: list[dict]) -> dict:
        assert not (tmp_path / "manifest.json").exists() or made == [1]  # written after every shard
        return {"plan_digest": "p", **shard_totals(states)}

    first = run_sharded_job(plan, lambda i, d: {"index": i, "digest": d}, _make_shards(out, made), manifest)
    assert made == [0, 1, 2] and read_manifest(out) == first
    assert first["num_samples"] == 6 and first["counts"] == {"video": 6, "image": 0}
    assert first["skips"] == {"bad": 3} and first["shards"] == [shard_name(i) for i in range(3)]
    assert first["shard_counts"][shard_name(2)] == {"num_samples": 3, "video": 3}

    made.clear()
    assert (
        run_sharded_job(plan, lambda i, d: {"index": i, "digest": d}, _make_shards(out, made), manifest)
        == first
    )
    assert made == []  # complete: nothing made, the manifest as it was

    (tmp_path / shard_name(1)).unlink()  # a lost shard is made again, and only it
    again = run_sharded_job(plan, lambda i, d: {"index": i, "digest": d}, _make_shards(out, made), manifest)
    assert made == [1] and again == first

    with pytest.raises(PlanMismatchError, match="new output directory"):
        other = ShardPlan("job", out, {0: "x0", 1: "d1", 2: "d2"}, plan_digest="q")
        run_sharded_job(other, lambda i, d: {"index": i, "digest": d}, _make_shards(out, made), manifest)
    with pytest.raises(PlanMismatchError, match="shard-000002"):
        shorter = ShardPlan("job", out, {0: "d0", 1: "d1"}, plan_digest="r")
        run_sharded_job(shorter, lambda i, d: {"index": i, "digest": d}, _make_shards(out, made), manifest)


def test_shard_totals_adds_the_jobs_own_skips_and_leaves_out_empty_shards() -> None:
    from collections import Counter

    from pipelines.sharded_job import shard_totals

    states = [
        {"name": "a", "num_samples": 2, "counts": {"video": 1, "image": 1}, "skips": {"undecodable": 1}},
        {"name": "b", "num_samples": 0, "counts": {}, "skips": {"undecodable": 4}},
    ]
    totals = shard_totals(states, Counter({"duplicate": 2}))
    assert totals == {
        "num_samples": 2,
        "counts": {"video": 1, "image": 1},
        "skips": {"duplicate": 2, "undecodable": 5},
        "shards": ["a"],
        "shard_counts": {"a": {"num_samples": 2, "video": 1, "image": 1}},
    }
