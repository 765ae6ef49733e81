"""tokenize(): clip shards -> token cache with a tiny real C-ViViT and the bundled MiniLM, on real Ray."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modeling.checkpoint import save_checkpoint
from modeling.cvivit import CViViT, cvivit_debug, usable_frames
from modeling.pixels import frames_to_video
from pipelines.media import decode_image, decode_video, encode_jpeg, encode_mp4
from pipelines.prepare import PrepareConfig, prepare
from pipelines.shard_scan import BadShardError
from pipelines.shards import (
    PlanMismatchError,
    file_sha256,
    list_shards,
    load_npy,
    read_manifest,
    read_shard,
    write_manifest,
)
from pipelines.tokenize import TokenizeConfig, token_dtype, tokenize

pytestmark = pytest.mark.ray

TINY = cvivit_debug()


def _tokenizer(path: Path, seed: int) -> tuple[CViViT, str]:
    torch.manual_seed(seed)
    model = CViViT(TINY).eval()
    return model, save_checkpoint(path, model, TINY)


def _clips(root: Path) -> str:
    """3 videos + 2 images prepared into 3 clip shards of 32x32, 5-frame clips."""
    src = root / "src"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        (src / f"v{i}.mp4").write_bytes(
            encode_mp4(rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=8.0)
        )
        rows.append([str(i), f"v{i}.mp4", "1", "d", f"a moving thing {i}" + " very long" * i])
    pd.DataFrame(rows, columns=["videoid", "contentUrl", "duration", "page_dir", "name"]).to_csv(
        src / "webvid.csv", index=False
    )
    for i in range(2):
        (src / f"i{i}.jpg").write_bytes(encode_jpeg(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)))
    pd.DataFrame({"URL": ["i0.jpg", "i1.jpg"], "TEXT": ["a still", "another still"]}).to_parquet(
        src / "laion.parquet"
    )
    out = str(root / "clips")
    cfg = PrepareConfig(size=32, num_frames=5, fps=8.0, samples_per_shard=2, num_workers=2)
    sources = [
        f"{src / 'webvid.csv'}::weight=0.8::name=v-source",
        f"{src / 'laion.parquet'}::weight=0.2::name=i-source",
    ]
    manifest = prepare(sources, out, cfg)
    assert manifest["counts"] == {"video": 3, "image": 2}
    return out


def _snapshot(d: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_tokenize_end_to_end(tmp_path, ray_local) -> None:
    clips = _clips(tmp_path)
    model, digest = _tokenizer(tmp_path / "tok", seed=0)
    out = tmp_path / "tokens"
    cfg = TokenizeConfig(batch_size=2, num_workers=1)
    m = tokenize(str(tmp_path / "tok"), clips, str(out), cfg)

    assert m["counts"] == {"video": 3, "image": 2} and m["num_samples"] == 5 and m["skips"] == {}
    assert m["tokenizer_digest"] == digest == (tmp_path / "tok" / "digest.txt").read_text().strip()
    assert m["text_encoder"]["name"] == "minilm" and len(m["text_encoder"]["digest"]) == 16
    assert m["codebook_size"] == 64 and m["token_dtype"] == "int16"
    assert (
        [Path(s).name for s in list_shards(str(out))]
        == [Path(s).name for s in list_shards(clips)]
        == m["shards"]
    )
    assert read_manifest(str(out)) == m
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    clip_samples = {s["__key__"]: s for uri in list_shards(clips) for s in read_shard(uri)}
    tokens = [s for uri in list_shards(str(out)) for s in read_shard(uri)]
    assert sorted(s["__key__"] for s in tokens) == sorted(clip_samples)
    for s in tokens:
        assert set(s) == {"__key__", "tokens.npy", "txt", "text.npy", "text_mask.npy", "json"}
        info = json.loads(s["json"])
        codes, emb, mask = load_npy(s["tokens.npy"]), load_npy(s["text.npy"]), load_npy(s["text_mask.npy"])
        assert codes.dtype == np.int16 and codes.min() >= 0 and codes.max() < 64
        assert info["tokenizer_digest"] == digest and info["text_encoder"] == "minilm"
        clip = clip_samples[s["__key__"]]
        assert s["txt"] == clip["txt"]
        clip_info = json.loads(clip["json"])  # the mixer's source group and weight travel with the sample
        assert info["source_name"] == clip_info["source_name"] == f"{info['kind'][0]}-source"
        assert (
            info["source_weight"] == clip_info["source_weight"] == (0.8 if info["kind"] == "video" else 0.2)
        )
        if info["kind"] == "video":
            assert codes.shape == (3, 4, 4) and info["num_frames"] == 5  # 1 + (5-1)/2 latent frames
            frames = decode_video(clip["mp4"]).frames
        else:
            assert codes.shape == (1, 4, 4) and info["num_frames"] == 1
            frames = decode_image(clip["jpg"])[None]
        # the cache holds exactly what the tokenizer gives for the decoded clip
        expected = model.encode(frames_to_video(frames[None]))[0].numpy()
        np.testing.assert_array_equal(codes, expected)
        # text trimmed to the caption's real length: (L, 384) float16, all positions real
        assert emb.dtype == np.float16 and emb.ndim == 2 and emb.shape[1] == 384
        assert mask.dtype == bool and mask.shape == (emb.shape[0],) and mask.all()
    lengths = {json.loads(s["json"])["source_key"]: load_npy(s["text.npy"]).shape[0] for s in tokens}
    assert lengths["0"] < lengths["1"] < lengths["2"]  # longer captions keep more tokens

    # finished rerun: nothing rewritten
    before = _snapshot(out)
    assert tokenize(str(tmp_path / "tok"), clips, str(out), cfg) == m
    assert _snapshot(out) == before

    # another tokenizer must not be mixed into this cache
    _tokenizer(tmp_path / "tok2", seed=1)
    with pytest.raises(PlanMismatchError, match="new output directory"):
        tokenize(str(tmp_path / "tok2"), clips, str(out), cfg)


def test_token_dtype_and_frames() -> None:
    assert token_dtype(8192) == np.int16 and token_dtype(32767) == np.int16
    assert token_dtype(32768) == np.int32 and token_dtype(262144) == np.int32
    assert [usable_frames(n, 4) for n in (1, 4, 5, 8, 9, 17)] == [1, 1, 5, 5, 9, 17]


def test_missing_clip_manifest(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        tokenize(str(tmp_path / "tok"), str(tmp_path), str(tmp_path / "out"))


def _cut_inside(uri: str) -> str:
    """Truncate a shard halfway through the first member of its second sample; returns that sample's key."""
    data = Path(uri).read_bytes()
    with tarfile.open(uri) as tar:
        members = tar.getmembers()
    second = next(m for m in members if m.name.split(".")[0] != members[0].name.split(".")[0])
    Path(uri).write_bytes(data[: second.offset_data + second.size // 2])
    return second.name.split(".")[0]


def test_a_truncated_clip_shard_is_one_skip_not_a_failed_job(tmp_path, ray_local) -> None:
    clips = _clips(tmp_path)
    _tokenizer(tmp_path / "tok", seed=0)
    first = list_shards(clips)[0]
    keys = [s["__key__"] for s in read_shard(first)]
    lost = _cut_inside(first)
    assert lost == keys[1]
    # strict: the job fails, naming the shard and the fix (before the manifest is written)
    free_cpus = ray_local.available_resources().get("CPU", 0)
    with pytest.raises(
        BadShardError, match=r"bad_shard in shard shard-000000.tar.*Delete that shard"
    ) as failed:
        tokenize(
            str(tmp_path / "tok"), clips, str(tmp_path / "strict"), TokenizeConfig(strict=True, num_workers=1)
        )
    assert not (tmp_path / "strict" / "manifest.json").exists()
    # ... and its actor pool is gone although the error is still held (`failed`): a Ray Train job started next
    # would otherwise wait forever for the CPU it kept
    deadline = time.monotonic() + 60
    while ray_local.available_resources().get("CPU", 0) < free_cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_local.available_resources().get("CPU", 0) >= free_cpus and failed.value is not None

    # a clip dataset made before checksums: the truncated shard's first sample is still tokenized
    manifest = read_manifest(clips)
    del manifest["shard_sha256"]
    write_manifest(clips, manifest)
    out = tmp_path / "tokens"
    m = tokenize(str(tmp_path / "tok"), clips, str(out), TokenizeConfig(batch_size=2, num_workers=1))
    assert m["skips"] == {"bad_shard": 1} and m["num_samples"] == 4
    [record] = m["skipped_examples"]
    assert record["shard"] == "shard-000000.tar" and "unexpected end of data" in record["detail"]
    tokens = sorted(s["__key__"] for uri in list_shards(str(out)) for s in read_shard(uri))
    assert keys[0] in tokens and lost not in tokens and len(tokens) == 4
    # the token cache carries its own checksums
    assert m["shard_sha256"] == {Path(u).name: file_sha256(u) for u in list_shards(str(out))}


def test_mixed_fault_corpus_skips_exactly_what_was_injected(tmp_path, ray_local) -> None:
    """200 clips, 26.5% damaged (truncated and bit-flipped shards, split samples, undecodable videos): the
    manifest counts each fault by reason, and every good clip is tokenized with its caption."""
    from test_loaders import clip_samples

    from pipelines.fault_corpus import build_fault_corpus, fault_table, write_fault_corpus

    samples = clip_samples(videos=200)
    corpus = build_fault_corpus(samples, per_shard=20)
    clips = write_fault_corpus(corpus, tmp_path / "clips", {"plan_digest": "fault-corpus"})
    _tokenizer(tmp_path / "tok", seed=0)
    out = tmp_path / "tokens"
    m = tokenize(str(tmp_path / "tok"), clips, str(out), TokenizeConfig(batch_size=16, num_workers=1))
    print(fault_table(corpus, m))
    assert corpus.num_records == 200 and corpus.num_bad >= 20
    assert m["skips"] == corpus.expected_skips == {"bad_shard": 2, "undecodable": 8}
    assert m["repaired"] == corpus.expected_repaired == {"split_sample": 5}
    assert m["num_samples"] == len(corpus.good_keys) == 152
    tokens = {s["__key__"]: s for uri in list_shards(str(out)) for s in read_shard(uri)}
    assert sorted(tokens) == sorted(corpus.good_keys)
    captions = {s["__key__"]: s["txt"] for s in samples}
    assert all(tokens[k]["txt"].decode() == captions[k] for k in corpus.faults["split"])
