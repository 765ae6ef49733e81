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
)
from pipelines.media import encode_jpeg, encode_mp4
from pipelines.shards import shard_name, write_manifest, write_shard

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


def make_clip_shards(
    root: Path, *, videos: int, images: int, num_frames: int = 5, size: int = 32, per_shard: int = 8
) -> str:
    """A clip-shard directory in the prepare job's layout (mp4/jpg + txt + json, manifest last)."""
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
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(samples), per_shard):
        write_shard(str(root / shard_name(s // per_shard)), samples[s : s + per_shard])
    write_manifest(str(root), {"kind": "clips", "counts": {"video": videos, "image": images}})
    return str(root)


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
) -> str:
    """A token cache: random codes and random per-token text embeddings of varying length."""
    rng = np.random.default_rng(seed)
    t, h, w = grid
    samples = []
    for i in range(videos + images):
        image = i >= videos
        length = int(rng.integers(2, 7))
        samples.append(
            {
                "__key__": f"{'i' if image else 'v'}{i:04d}",
                "tokens.npy": rng.integers(0, codebook_size, (1 if image else t, h, w)).astype(np.int16),
                "text.npy": rng.standard_normal((length, text_dim)).astype(np.float16),
                "text_mask.npy": np.ones(length, dtype=bool),
                "txt": f"caption {i}",
                "json": {
                    "kind": "image" if image else "video",
                    "num_frames": 1 if image else 5,
                    "tokenizer_digest": digest,
                    "text_encoder": "test",
                },
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    write_shard(str(root / shard_name(0)), samples)
    write_manifest(
        str(root),
        {"kind": "tokens", "tokenizer_digest": digest, "counts": {"video": videos, "image": images}},
    )
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
