"""Shard I/O: round trip, atomic writes, key sanitising, manifests."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

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

    bad = {"shard": "b", "reason": "bad_shard", "detail": "truncated"}
    states = [
        {"name": "a", "num_samples": 2, "counts": {"video": 1, "image": 1}, "skips": {"undecodable": 1},
         "sha256": "aa", "repaired": {"split_sample": 1}},
        {"name": "b", "num_samples": 0, "counts": {}, "skips": {"undecodable": 4}, "skipped": [bad]},
        {"name": "c", "num_samples": 1, "counts": {"video": 1}, "skips": {}},  # a record from before checksums
    ]  # fmt: skip
    totals = shard_totals(states, Counter({"duplicate": 2}))
    assert totals == {
        "num_samples": 3,
        "counts": {"video": 2, "image": 1},
        "skips": {"duplicate": 2, "undecodable": 5},
        "repaired": {"split_sample": 1},
        "skipped_examples": [bad],
        "shards": ["a", "c"],
        "shard_counts": {
            "a": {"num_samples": 2, "video": 1, "image": 1},
            "c": {"num_samples": 1, "video": 1},
        },
        "shard_sha256": {"a": "aa"},
    }


# --------------------------------------------------------------------------------------------- damaged shards
def _truncate_in(uri: str, key: str) -> None:
    """Cut the tar file off halfway through the data of `key`'s first member (a killed copy leaves this)."""
    data = Path(uri).read_bytes()
    with tarfile.open(uri) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith(key + "."))
    Path(uri).write_bytes(data[: member.offset_data + member.size // 2])


def test_truncated_shard_gives_its_readable_samples_and_one_bad_shard_skip(tmp_path) -> None:
    from pipelines.shard_scan import BadShardError, scan_shard

    uri = str(tmp_path / shard_name(4))
    write_shard(uri, _samples(5))
    _truncate_in(uri, "s003")
    scan = scan_shard(uri)
    assert [s["__key__"] for s in scan.samples] == ["s000", "s001", "s002"]  # s003 was being read: dropped
    assert scan.samples[2]["txt"].decode("utf-8") == "caption 2 ✓"
    assert dict(scan.skips) == {"bad_shard": 1} and not scan.repaired
    [record] = scan.skipped
    assert record["shard"] == shard_name(4) and record["reason"] == "bad_shard"
    assert "unexpected end of data" in record["detail"] and "'s003'" in record["detail"]

    # the plain reader (and scan_shard with strict) refuses it, naming the shard and the fix
    for read in (lambda: list(read_shard(uri)), lambda: scan_shard(uri, strict=True)):
        with pytest.raises(BadShardError, match=rf"{shard_name(4)}.*Delete that shard and rerun"):
            read()


def test_truncation_at_a_header_is_noticed(tmp_path) -> None:
    """tarfile itself ends quietly at a missing or invalid header past the first; the scan does not."""
    from pipelines.shard_scan import scan_shard

    uri = str(tmp_path / shard_name(0))
    write_shard(uri, _samples(3))
    data = Path(uri).read_bytes()
    with tarfile.open(uri) as tar:
        s002 = next(m for m in tar.getmembers() if m.name.startswith("s002."))
    Path(uri).write_bytes(data[: s002.offset])  # ends exactly where a header would start
    with tarfile.open(uri) as tar:
        assert len(tar.getmembers()) == 8  # tarfile sees a whole, shorter tar
    scan = scan_shard(uri)
    assert dict(scan.skips) == {"bad_shard": 1} and "truncated" in scan.skipped[0]["detail"]
    assert [s["__key__"] for s in scan.samples] == ["s000"]  # s001 might have had more members

    bad = bytearray(data)
    bad[s002.offset + 10] ^= 0xFF  # a corrupt header
    Path(uri).write_bytes(bytes(bad))
    scan = scan_shard(uri)
    assert dict(scan.skips) == {"bad_shard": 1} and "invalid header" in scan.skipped[0]["detail"]


def test_checksum_mismatch_refuses_the_shard_before_reading_a_sample(tmp_path) -> None:
    from pipelines.shard_scan import BadShardError, scan_shard
    from pipelines.shards import file_sha256, write_shard_sha256

    uri = str(tmp_path / shard_name(1))
    count, sha = write_shard_sha256(uri, _samples(3))
    assert count == 3 and sha == file_sha256(uri)
    assert len(scan_shard(uri, sha256=sha).samples) == 3
    data = bytearray(Path(uri).read_bytes())
    with tarfile.open(uri) as tar:
        mp4 = next(m for m in tar.getmembers() if m.name == "s001.mp4")
    data[mp4.offset_data] ^= 0x01  # one bit of one sample's payload: the tar still parses
    Path(uri).write_bytes(bytes(data))
    assert len(scan_shard(uri).samples) == 3  # unverified, the damage passes
    scan = scan_shard(uri, sha256=sha)
    assert scan.samples == [] and dict(scan.skips) == {"bad_shard": 1}
    assert "sha256" in scan.skipped[0]["detail"] and scan.skipped[0]["shard"] == shard_name(1)
    with pytest.raises(BadShardError, match=rf"{shard_name(1)}: sha256"):
        scan_shard(uri, sha256=sha, strict=True)


def test_non_contiguous_keys_are_merged_and_counted(tmp_path) -> None:
    """a.mp4, b.mp4, a.txt: a WebDataset grouping of consecutive members would give `a` without its caption."""
    from pipelines.shard_scan import BadShardError, scan_shard
    from pipelines.shards import members_tar_bytes

    uri = tmp_path / shard_name(0)
    uri.write_bytes(
        members_tar_bytes(
            [("a.mp4", b"A"), ("b.mp4", b"B"), ("a.txt", b"cap a"), ("b.txt", b"cap b"), ("c.mp4", b"C")]
        )
    )
    scan = scan_shard(str(uri))
    assert scan.samples == [
        {"__key__": "a", "mp4": b"A", "txt": b"cap a"},
        {"__key__": "b", "mp4": b"B", "txt": b"cap b"},
        {"__key__": "c", "mp4": b"C"},
    ]
    assert dict(scan.repaired) == {"split_sample": 2} and not scan.skips  # kept, and counted
    assert {r["reason"] for r in scan.skipped} == {"split_sample"}
    with pytest.raises(BadShardError, match="split_sample"):
        list(read_shard(str(uri)))

    uri.write_bytes(members_tar_bytes([("a.mp4", b"A"), ("a.mp4", b"A2"), ("b.mp4", b"B")]))
    scan = scan_shard(str(uri))  # which `a.mp4` is meant cannot be told: `a` is dropped
    assert [s["__key__"] for s in scan.samples] == ["b"] and dict(scan.skips) == {"duplicate_member": 1}


def _fake_videos(n: int) -> list[dict]:
    return [
        {"__key__": f"v{i:04d}", "mp4": bytes([i % 251]) * (600 + i), "txt": f"clip {i}"} for i in range(n)
    ]


def test_fault_corpus_builder_injects_what_it_reports(tmp_path) -> None:
    from pipelines.fault_corpus import build_fault_corpus, fault_table, write_fault_corpus
    from pipelines.loaders import read_samples

    corpus = build_fault_corpus(_fake_videos(200), per_shard=20)
    assert corpus == build_fault_corpus(_fake_videos(200), per_shard=20)  # seeded
    assert corpus.num_records == 200 and corpus.num_bad / corpus.num_records >= 0.10
    assert {k: len(v) for k, v in corpus.faults.items()} == {
        "truncated": 20, "flipped": 20, "split": 5, "undecodable": 8
    }  # fmt: skip
    touched = [k for keys in corpus.faults.values() for k in keys]
    assert len(touched) == len(set(touched))  # no sample damaged twice
    assert corpus.expected_skips == {"bad_shard": 2, "undecodable": 8}
    assert corpus.expected_repaired == {"split_sample": 5}
    assert len(corpus.good_keys) == 200 - 40 - 8

    # read back from disk with the manifest's checksums: the loaders' path (undecodable media is kept here:
    # only a decoder can tell)
    scan = read_samples(write_fault_corpus(corpus, tmp_path / "clips"))
    assert dict(scan.skips) == {"bad_shard": 2} and dict(scan.repaired) == {"split_sample": 5}
    assert sorted(s["__key__"] for s in scan.samples) == sorted(
        corpus.good_keys + corpus.faults["undecodable"]
    )
    by_key = {s["__key__"]: s for s in scan.samples}
    assert all(by_key[k]["txt"] == f"clip {int(k[1:])}".encode() for k in corpus.faults["split"])
    # without checksums, a truncated shard still gives the samples before the cut
    for name, keys in corpus.salvageable.items():
        from pipelines.shard_scan import scan_tar

        assert [s["__key__"] for s in scan_tar(corpus.shards[name], name).samples] == keys and len(keys) == 10
    table = fault_table(corpus, {"skips": dict(scan.skips), "repaired": dict(scan.repaired)})
    assert "bad_shard" in table and "26.5%" in table
