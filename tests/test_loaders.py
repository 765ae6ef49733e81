"""Training data readers: shapes, determinism under (seed, rank, step), rank disjointness, mixing, padding.

The tiny dataset builders here are also used by tests/test_train_jobs.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.loaders import (
    ClipBatches,
    ClipLoaderConfig,
    EpochStream,
    TokenBatches,
    TokenLoaderConfig,
    rank_split,
    token_cache_info,
)
from pipelines.media import encode_jpeg, encode_mp4
from pipelines.shards import shard_name, write_manifest, write_shard_sha256

# --------------------------------------------------------------------------------------------- builders


def render_clip(index: int, num_frames: int, size: int) -> np.ndarray:
    """A coloured square moving over a grey background: (T, size, size, 3) uint8, distinct per index."""
    rng = np.random.default_rng(index)
    colour = rng.integers(40, 255, 3, dtype=np.uint8)
    side = size // 4
    x0, y0 = rng.integers(0, size - side, 2)
    dx, dy = rng.integers(-2, 3, 2)
    frames = np.full((num_frames, size, size, 3), 96, dtype=np.uint8)
    for t in range(num_frames):
        x = int(np.clip(x0 + dx * t, 0, size - side))
        y = int(np.clip(y0 + dy * t, 0, size - side))
        frames[t, y : y + side, x : x + side] = colour
    return frames


def clip_samples(*, videos: int, images: int = 0, num_frames: int = 5, size: int = 32) -> list[dict]:
    """Clip-shard samples as prepare writes them (mp4/jpg + txt + json): videos `v0000...`, stills `i0000...`."""
    samples = []
    for i in range(videos):
        frames = render_clip(i, num_frames, size)
        samples.append(
            {
                "__key__": f"v{i:04d}",
                "mp4": encode_mp4(frames, fps=8.0),
                "txt": f"square {i} moving",
                "json": {
                    "kind": "video",
                    "source": "test",
                    "source_key": str(i),
                    "fps": 8.0,
                    "num_frames": num_frames,
                    "height": size,
                    "width": size,
                },
            }
        )
    for i in range(images):
        image = render_clip(10_000 + i, 1, size)[0]
        samples.append(
            {
                "__key__": f"i{i:04d}",
                "jpg": encode_jpeg(image),
                "txt": f"square still {i}",
                "json": {
                    "kind": "image",
                    "source": "test",
                    "source_key": str(i),
                    "fps": 0.0,
                    "num_frames": 1,
                    "height": size,
                    "width": size,
                },
            }
        )
    return samples


def make_clip_shards(
    root: Path, *, videos: int, images: int, num_frames: int = 5, size: int = 32, per_shard: int = 8
) -> str:
    """A clip-shard directory in the prepare job's layout (shards, then a manifest with their sha256)."""
    samples = clip_samples(videos=videos, images=images, num_frames=num_frames, size=size)
    return write_shard_dir(
        root, samples, per_shard, {"kind": "clips", "counts": {"video": videos, "image": images}}
    )


def make_token_cache(
    root: Path,
    *,
    videos: int,
    images: int,
    grid=(3, 2, 2),
    codebook_size: int = 16,
    text_dim: int = 8,
    digest: str = "tok-digest",
    seed: int = 0,
    sources: dict[str, float] | None = None,
    key_prefix: str = "",
    per_shard: int | None = None,
) -> str:
    """A token cache: random codes and random per-token text embeddings of varying length (in one shard, or
    shards of `per_shard`), its manifest recording the shards' sha256.

    With `sources` (name -> weight), sample i belongs to source i % len(sources) (so a source holds videos
    and images) and its first token code is that source's index, which tells a batch row's source.
    """
    rng = np.random.default_rng(seed)
    t, h, w = grid
    names = list(sources or {})
    samples = []
    for i in range(videos + images):
        image = i >= videos
        length = int(rng.integers(2, 7))
        codes = rng.integers(0, codebook_size, (1 if image else t, h, w)).astype(np.int16)
        meta = {
            "kind": "image" if image else "video",
            "num_frames": 1 if image else 5,
            "tokenizer_digest": digest,
            "text_encoder": "test",
        }
        if names:
            codes.flat[0] = i % len(names)
            meta.update(source_name=names[i % len(names)], source_weight=sources[names[i % len(names)]])
        samples.append(
            {
                "__key__": f"{key_prefix}{'i' if image else 'v'}{i:04d}",
                "tokens.npy": codes,
                "text.npy": rng.standard_normal((length, text_dim)).astype(np.float16),
                "text_mask.npy": np.ones(length, dtype=bool),
                "txt": f"caption {i}",
                "json": meta,
            }
        )
    manifest = {"kind": "tokens", "tokenizer_digest": digest, "counts": {"video": videos, "image": images}}
    return write_shard_dir(root, samples, per_shard or len(samples), manifest)


def write_shard_dir(root: Path, samples: list[dict], per_shard: int, manifest: dict) -> str:
    """Shards of `per_shard` samples, then the manifest (with their sha256, as the jobs write it)."""
    root.mkdir(parents=True, exist_ok=True)
    sums = {
        shard_name(s // per_shard): write_shard_sha256(
            str(root / shard_name(s // per_shard)), samples[s : s + per_shard]
        )[1]
        for s in range(0, len(samples), per_shard)
    }
    write_manifest(str(root), {**manifest, "shard_sha256": sums})
    return str(root)


def _clip_hashes(frames: np.ndarray) -> set[str]:
    return {hashlib.sha1(c.tobytes()).hexdigest() for c in frames}


# --------------------------------------------------------------------------------------------- indexing


def test_rank_split_partitions_every_index_once() -> None:
    parts = [rank_split(11, seed=3, rank=r, world_size=3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]
    assert np.array_equal(parts[0], rank_split(11, seed=3, rank=0, world_size=3))
    assert not np.array_equal(parts[0], rank_split(11, seed=4, rank=0, world_size=3))


def test_epoch_stream_visits_every_item_once_per_epoch() -> None:
    stream = EpochStream(5, (1, 2))
    items = stream.take(0, 15)
    for e in range(3):
        assert sorted(items[5 * e : 5 * e + 5].tolist()) == list(range(5))
    assert np.array_equal(stream.take(7, 4), items[7:11])  # random access agrees with the stream


# --------------------------------------------------------------------------------------------- clips


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    return make_clip_shards(tmp_path_factory.mktemp("clips"), videos=12, images=6, num_frames=5)


def test_clip_batches_shapes_and_range(clip_dir: str) -> None:
    cfg = ClipLoaderConfig(video_batch_size=3, image_batch_size=2, seed=0)
    loader = ClipBatches(clip_dir, cfg)
    video, image = loader.step_batches(0)
    assert video["video"].shape == (3, 3, 5, 32, 32) and video["video"].dtype == torch.float32
    assert image["video"].shape == (2, 3, 1, 32, 32)
    assert video["video"].min() >= -1.0 and video["video"].max() <= 1.0
    assert loader.frame_shape == (5, 32, 32) and loader.has_images


def test_clip_batches_deterministic_and_resumable(clip_dir: str) -> None:
    cfg = ClipLoaderConfig(video_batch_size=4, image_batch_size=1, seed=7)
    a, b = ClipBatches(clip_dir, cfg), ClipBatches(clip_dir, cfg)
    it = a.iterate(0)
    first = [next(it) for _ in range(5)]
    resumed = next(b.iterate(3))
    assert torch.equal(first[3][0]["video"], resumed[0]["video"])
    assert torch.equal(first[3][1]["video"], resumed[1]["video"])
    other = ClipBatches(clip_dir, ClipLoaderConfig(video_batch_size=4, image_batch_size=1, seed=8))
    assert not all(
        torch.equal(x[0]["video"], y[0]["video"]) for x, y in zip(first, other.iterate(0), strict=False)
    )


def test_clip_ranks_are_disjoint_and_holdout_is_excluded(clip_dir: str) -> None:
    cfg = ClipLoaderConfig(video_batch_size=2, image_batch_size=1, seed=1, holdout=2)
    ranks = [ClipBatches(clip_dir, cfg, rank=r, world_size=2) for r in range(2)]
    seen = [_clip_hashes(r.videos) for r in ranks]
    held = ranks[0].holdout_videos()
    assert held is not None and held.shape == (2, 3, 5, 32, 32)
    assert torch.equal(held, ranks[1].holdout_videos())  # same evaluation clips on every rank
    held_frames = ((held.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 10
    assert not (seen[0] | seen[1]) & _clip_hashes(held_frames)
    assert len(ranks[0].images) + len(ranks[1].images) == 6


def test_clip_images_skipped_when_not_requested_and_short_clips_rejected(clip_dir: str) -> None:
    loader = ClipBatches(clip_dir, ClipLoaderConfig(video_batch_size=2, image_batch_size=0))
    assert not loader.has_images and len(loader.step_batches(0)) == 1
    cropped = ClipBatches(clip_dir, ClipLoaderConfig(video_batch_size=2, num_frames=3))
    assert cropped.frame_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="no usable videos"):
        ClipBatches(clip_dir, ClipLoaderConfig(video_batch_size=2, num_frames=9))


# --------------------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory) -> str:
    return make_token_cache(tmp_path_factory.mktemp("tokens"), videos=40, images=20)


def test_token_batches_padding_and_fields(token_dir: str) -> None:
    loader = TokenBatches(token_dir, TokenLoaderConfig(batch_size=10, video_fraction=0.5, seed=0))
    assert loader.seq_len == 12 and loader.frame_tokens == 4 and loader.text_dim == 8
    batch = loader.next_batch()
    b = batch["tokens"].shape[0]
    assert batch["tokens"].shape == (10, 12) and batch["tokens"].dtype == torch.long
    assert batch["text"].shape == (10, loader.text_len, 8) and batch["text"].dtype == torch.float32
    img = batch["is_image"]
    assert 0 < int(img.sum()) < b
    assert torch.all(batch["num_scored"][img] == 4) and torch.all(batch["num_scored"][~img] == 12)
    assert torch.all(batch["tokens"][img][:, 4:] == -1)  # image rows padded past h_z*w_z
    assert torch.all(batch["tokens"][img][:, :4] >= 0) and torch.all(batch["tokens"][~img] >= 0)
    # text is zero where the mask is off, and each row's mask is a prefix
    assert torch.all(batch["text"][~batch["text_mask"]] == 0)
    lengths = batch["text_mask"].sum(1)
    assert torch.all(lengths >= 2)


def test_token_mixing_ratio(token_dir: str) -> None:
    loader = TokenBatches(token_dir, TokenLoaderConfig(batch_size=7, video_fraction=0.8, seed=3))
    flags = torch.cat([loader.next_batch()["is_image"] for _ in range(400)])
    assert abs(1.0 - flags.float().mean().item() - 0.8) < 0.02


def test_token_batches_deterministic_and_resume(token_dir: str) -> None:
    cfg = TokenLoaderConfig(batch_size=6, seed=5)
    run = TokenBatches(token_dir, cfg)
    batches = [run.next_batch() for _ in range(9)]
    assert run.state() == {"position": 9}
    resumed = TokenBatches(token_dir, cfg)
    resumed.load_state({"position": 6})
    for expected in batches[6:]:
        got = resumed.next_batch()
        assert all(torch.equal(got[k], expected[k]) for k in expected)
    other = TokenBatches(token_dir, TokenLoaderConfig(batch_size=6, seed=6)).next_batch()
    assert not torch.equal(other["tokens"], batches[0]["tokens"])


def test_token_ranks_disjoint(token_dir: str) -> None:
    cfg = TokenLoaderConfig(batch_size=4, seed=2)
    rows = []
    for r in range(2):
        loader = TokenBatches(token_dir, cfg, rank=r, world_size=2)
        assert loader.num_samples == {"video": 20, "image": 10}
        rows.append({tuple(t.tolist()) for kind in loader.kinds.values() for t in kind["tokens"]})
    assert not rows[0] & rows[1]
    assert len(rows[0] | rows[1]) == 60


def test_token_digest_check(tmp_path: Path, token_dir: str) -> None:
    ckpt = tmp_path / "tok"
    ckpt.mkdir()
    (ckpt / "digest.txt").write_text("tok-digest\n")
    TokenBatches(token_dir, TokenLoaderConfig(), tokenizer_dir=str(ckpt))  # matches: no error
    (ckpt / "digest.txt").write_text("other-digest\n")
    with pytest.raises(ValueError, match="tok-digest.*other-digest.*phenaki tokenize"):
        TokenBatches(token_dir, TokenLoaderConfig(), tokenizer_dir=str(ckpt))


# --------------------------------------------------------------------------------------------- sources and caches

MIX = {"webvid": 0.8, "laion-a": 0.1, "laion-b": 0.1}


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> str:
    return make_token_cache(tmp_path_factory.mktemp("sources"), videos=30, images=30, sources=MIX)


def _source_cfg(**kw) -> TokenLoaderConfig:
    return TokenLoaderConfig(**{"batch_size": 16, "seed": 3, "mix": "source", **kw})


def _batches(loader: TokenBatches, n: int) -> list[dict[str, torch.Tensor]]:
    return [loader.next_batch() for _ in range(n)]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_source_mixing_follows_the_weights(source_dir: str) -> None:
    loader = TokenBatches(source_dir, _source_cfg())
    assert loader.source_weights == {"laion-a": 0.1, "laion-b": 0.1, "webvid": 0.8}
    assert loader.num_samples == {"laion-a": 20, "laion-b": 20, "webvid": 20}
    batches = _batches(loader, 2000)
    rows = torch.cat([b["tokens"][:, 0] for b in batches])
    assert rows.numel() == 2000 * 16
    for index, (name, weight) in enumerate(MIX.items()):
        assert abs((rows == index).float().mean().item() - weight) < 0.01, name
    # a source holds both kinds; what is scored and padded follows each sample's own kind
    batch = torch.cat([b["is_image"] for b in batches[:50]])
    assert 0 < int(batch.sum()) < batch.numel()
    for b in batches[:50]:
        img = b["is_image"]
        assert b["tokens"].shape == (16, 12) and b["text"].shape == (16, loader.text_len, 8)
        assert torch.all(b["num_scored"][img] == 4) and torch.all(b["num_scored"][~img] == 12)
        assert torch.all(b["tokens"][img][:, 4:] == -1) and torch.all(b["tokens"][~img] >= 0)
        assert torch.all(b["text"][~b["text_mask"]] == 0)


def test_source_mixing_deterministic_and_resume(source_dir: str) -> None:
    full = _batches(TokenBatches(source_dir, _source_cfg(batch_size=5)), 12)
    again = _batches(TokenBatches(source_dir, _source_cfg(batch_size=5)), 12)
    assert all(_same(a, b) for a, b in zip(full, again, strict=True))
    for start in (1, 7, 11):
        resumed = TokenBatches(source_dir, _source_cfg(batch_size=5))
        resumed.load_state({"position": start})
        assert resumed.state() == {"position": start}
        assert all(_same(a, b) for a, b in zip(full[start:], _batches(resumed, 12 - start), strict=True))
    skipped = TokenBatches(source_dir, _source_cfg(batch_size=5))
    skipped.skip(3)
    skipped.load_state({"position": 4})  # skip and load_state compose
    assert _same(skipped.next_batch(), full[4])
    other = _batches(TokenBatches(source_dir, _source_cfg(batch_size=5, seed=4)), 12)
    assert not all(_same(a, b) for a, b in zip(full, other, strict=True))
    # the counts are a function of (seed, rank, step) only
    loader = TokenBatches(source_dir, _source_cfg(batch_size=5))
    assert loader.step_counts(9) == TokenBatches(source_dir, _source_cfg(batch_size=5)).step_counts(9)
    assert sum(loader.step_counts(9).values()) == 5


def test_source_ranks_disjoint(source_dir: str) -> None:
    rows = []
    for r in range(3):
        loader = TokenBatches(source_dir, _source_cfg(), rank=r, world_size=3)
        assert all(n in (6, 7) for n in loader.num_samples.values())  # 20 per source over 3 ranks
        rows.append({tuple(t.tolist()) for g in loader.groups.values() for t in g["tokens"]})
    assert not rows[0] & rows[1] and not rows[1] & rows[2] and not rows[0] & rows[2]
    assert len(rows[0] | rows[1] | rows[2]) == 60
    with pytest.raises(ValueError, match="fewer samples than the 30 workers"):
        TokenBatches(source_dir, _source_cfg(), rank=0, world_size=30)


def test_source_weight_override(source_dir: str) -> None:
    loader = TokenBatches(source_dir, _source_cfg(weights={"webvid": 0, "laion-b": 3}))
    assert loader.source_weights == {"laion-a": 0.1, "laion-b": 3.0, "webvid": 0.0}
    assert set(loader.groups) == {"laion-a", "laion-b"}  # a zero weight drops the source
    rows = torch.cat([b["tokens"][:, 0] for b in _batches(loader, 200)])
    assert not (rows == 0).any()
    assert abs((rows == 2).float().mean().item() - 3 / 3.1) < 0.02
    with pytest.raises(
        ValueError, match=r"unknown source\(s\) \['youtube'\].*\['laion-a', 'laion-b', 'webvid'\]"
    ):
        TokenBatches(source_dir, _source_cfg(weights={"youtube": 1.0}))
    with pytest.raises(ValueError, match="only with mix='source'"):
        TokenBatches(source_dir, TokenLoaderConfig(weights={"webvid": 1.0}))
    with pytest.raises(ValueError, match="mix must be one of"):
        TokenBatches(source_dir, TokenLoaderConfig(mix="dataset"))
    with pytest.raises(ValueError, match="every source weight is 0"):
        TokenBatches(source_dir, _source_cfg(weights=dict.fromkeys(MIX, 0)))


def test_source_mode_on_a_cache_without_source_names(token_dir: str) -> None:
    loader = TokenBatches(token_dir, _source_cfg(batch_size=6))
    assert loader.source_weights == {"": 1.0} and loader.num_samples == {"": 60}
    assert loader.next_batch()["tokens"].shape == (6, 12)


def test_several_caches_are_one_dataset(tmp_path: Path) -> None:
    videos = make_token_cache(tmp_path / "videos", videos=20, images=0, key_prefix="w-", sources={"wv": 0.8})
    stills = make_token_cache(
        tmp_path / "stills", videos=0, images=10, key_prefix="l-", seed=1, sources={"ln": 0.2}
    )
    merged = TokenBatches([videos, stills], _source_cfg(batch_size=10))
    assert merged.num_samples == {"ln": 10, "wv": 20} and merged.seq_len == 12
    assert merged.cache_dirs == [videos, stills]
    flags = torch.cat([b["is_image"] for b in _batches(merged, 300)])
    assert abs(flags.float().mean().item() - 0.2) < 0.02
    # a comma-separated string (the CLI's form) and the caches' order do not change the batches
    a = _batches(TokenBatches(f"{videos},{stills}", TokenLoaderConfig(batch_size=6, seed=1)), 5)
    b = _batches(TokenBatches([stills, videos], TokenLoaderConfig(batch_size=6, seed=1)), 5)
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))
    assert TokenBatches([videos, stills], TokenLoaderConfig()).num_samples == {"video": 20, "image": 10}
    info = token_cache_info([stills, videos])
    assert (info.seq_len, info.token_grid, info.text_dim) == (12, (3, 2, 2), 8)

    ckpt = tmp_path / "tok"
    ckpt.mkdir()
    (ckpt / "digest.txt").write_text("tok-digest\n")
    TokenBatches([videos, stills], TokenLoaderConfig(), tokenizer_dir=str(ckpt))
    (ckpt / "digest.txt").write_text("other-digest\n")
    with pytest.raises(ValueError, match="tok-digest.*other-digest"):
        TokenBatches([videos, stills], TokenLoaderConfig(), tokenizer_dir=str(ckpt))


def test_caches_that_cannot_be_merged(tmp_path: Path) -> None:
    base = make_token_cache(tmp_path / "base", videos=4, images=2, key_prefix="a-")

    def other(name: str, **kw) -> str:
        return make_token_cache(tmp_path / name, **{"videos": 4, "images": 2, "key_prefix": "b-", **kw})

    cases = {
        "digest": (other("digest", digest="old-digest"), "tokenizer digest.*base: tok-digest.*old-digest"),
        "keys": (other("keys", key_prefix="a-"), "also in token cache .*base.*keys must be unique"),
        "grid": (other("grid", grid=(3, 2, 3)), "token grid.*base: \\(2, 2\\).*grid: \\(2, 3\\)"),
        "frames": (other("frames", grid=(2, 2, 2)), "tokens per video.*base: 12.*frames: 8"),
        "text": (other("text", text_dim=4), "text embedding width.*base: 8.*text: 4"),
    }
    for name, (cache, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            TokenBatches([base, cache], TokenLoaderConfig())
        if name != "keys":  # the driver's check, before any worker starts
            with pytest.raises(ValueError, match=message.split(".*")[0]):
                token_cache_info([base, cache])
    with pytest.raises(ValueError, match="given more than once"):
        TokenBatches(f"{base},{base}", TokenLoaderConfig())

    # one source recorded with two weights: an error, unless the job sets its weight
    one = make_token_cache(tmp_path / "w1", videos=4, images=2, key_prefix="x-", sources={"s": 0.5})
    two = make_token_cache(tmp_path / "w2", videos=4, images=2, key_prefix="y-", sources={"s": 0.7})
    with pytest.raises(ValueError, match="source 's'.*record different weights \\[0.5, 0.7\\]"):
        TokenBatches([one, two], _source_cfg())
    assert TokenBatches([one, two], _source_cfg(weights={"s": 1.0})).num_samples == {"s": 12}


def test_token_names_stay_importable_from_loaders() -> None:
    import pipelines.loaders as loaders
    import pipelines.token_batches as token_batches

    for name in ("TokenBatches", "TokenLoaderConfig", "token_cache_info", "check_tokenizer_digest"):
        assert getattr(loaders, name) is getattr(token_batches, name)
    assert TokenBatches is token_batches.TokenBatches
    with pytest.raises(AttributeError):
        _ = loaders.NoSuchThing


def test_hue_rotation_in_the_loader_is_resumable_and_validated(clip_dir: str) -> None:
    cfg = ClipLoaderConfig(video_batch_size=4, image_batch_size=2, seed=3, hue_rotation=1.0)
    plain = ClipBatches(clip_dir, ClipLoaderConfig(video_batch_size=4, image_batch_size=2, seed=3))
    a, b = ClipBatches(clip_dir, cfg), ClipBatches(clip_dir, cfg)
    first = [next(it) for it in [a.iterate(0)] for _ in range(3)]
    resumed = next(b.iterate(2))
    for got, want in zip(resumed, first[2], strict=True):
        assert torch.equal(got["video"], want["video"])
    assert not torch.allclose(first[0][0]["video"], plain.step_batches(0)[0]["video"])
    with pytest.raises(ValueError, match="hue_rotation"):
        ClipLoaderConfig(hue_rotation=2.0)
