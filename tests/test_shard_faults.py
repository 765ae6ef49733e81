"""The training loaders over damaged shards: counted skips (or, strict, an error naming the shard), never a crash
and never a silent loss. The shard-level reader is tested in tests/test_shards.py."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from test_loaders import clip_samples, make_token_cache, write_shard_dir

from pipelines.loaders import ClipBatches, ClipLoaderConfig, TokenBatches, TokenLoaderConfig, token_cache_info
from pipelines.shard_scan import BadShardError
from pipelines.shards import read_manifest, shard_name, write_manifest


def _cut_inside(uri: str, key: str) -> None:
    """Truncate a shard halfway through the data of `key`'s first member."""
    data = Path(uri).read_bytes()
    with tarfile.open(uri) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith(key + "."))
    Path(uri).write_bytes(data[: member.offset_data + member.size // 2])


def test_clip_loader_counts_a_damaged_shard_and_an_undecodable_clip(tmp_path: Path) -> None:
    samples = clip_samples(videos=12)
    samples[1]["mp4"] = b"not a video at all"
    root = tmp_path / "clips"
    write_shard_dir(root, samples, 4, {"kind": "clips"})
    _cut_inside(str(root / shard_name(1)), "v0006")

    loader = ClipBatches(str(root), ClipLoaderConfig(video_batch_size=2))
    # the manifest's sha256 no longer matches: none of shard 1's samples is used
    assert loader.videos.shape[0] == 12 - 4 - 1
    assert dict(loader.skipped) == {"bad_shard": 1, "undecodable": 1}
    [record] = loader.skip_records
    assert record["shard"] == shard_name(1) and "sha256" in record["detail"]
    assert loader.step_batches(0)[0]["video"].shape == (2, 3, 5, 32, 32)

    with pytest.raises(BadShardError, match=rf"bad_shard in shard {shard_name(1)}.*without strict"):
        ClipBatches(str(root), ClipLoaderConfig(video_batch_size=2, strict=True))

    # a dataset made before checksums: the shard's samples before the cut are still read
    manifest = read_manifest(str(root))
    del manifest["shard_sha256"]
    write_manifest(str(root), manifest)
    loader = ClipBatches(str(root), ClipLoaderConfig(video_batch_size=2))
    assert loader.videos.shape[0] == 12 - 2 - 1  # v0006 (being read at the cut) and v0007 lost
    assert dict(loader.skipped) == {"bad_shard": 1, "undecodable": 1}
    assert "unexpected end of data" in loader.skip_records[0]["detail"]


def test_token_loader_refuses_a_shard_that_fails_its_checksum(tmp_path: Path) -> None:
    root = make_token_cache(tmp_path / "tokens", videos=8, images=4, per_shard=4)
    shard = Path(root) / shard_name(0)
    data = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == "v0001.tokens.npy")
    data[member.offset_data + member.size - 1] ^= 0x01  # one code changes; the tar still parses
    shard.write_bytes(bytes(data))

    loader = TokenBatches(root, TokenLoaderConfig(batch_size=4))
    assert loader.num_samples == {"video": 4, "image": 4}  # shard 0 (v0000-v0003) is refused whole
    assert dict(loader.skipped) == {"bad_shard": 1} and loader.skip_records[0]["shard"] == shard_name(0)
    assert token_cache_info(root).token_grid == (3, 2, 2)  # sized from the sound shards
    for strict in (
        lambda: TokenBatches(root, TokenLoaderConfig(batch_size=4, strict=True)),
        lambda: token_cache_info(root, strict=True),
    ):
        with pytest.raises(BadShardError, match=rf"{shard_name(0)}: sha256"):
            strict()
