"""How prepare stores a video clip: resized in the decoder's scaler, then H.264 (`mp4`, x264 preset and crf from
the config) or the frames unencoded (`frames.npy`, video_format="npy"), and every clip-shard reader takes both."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.clip_samples import video_samples
from pipelines.loaders import ClipBatches, ClipLoaderConfig
from pipelines.media import (
    MediaError,
    decode_raw_clip,
    decode_video,
    decode_video_clips,
    encode_mp4,
    probe_video,
    resize_center_crop,
)
from pipelines.media import scaled_size as media_scaled_size
from pipelines.prepare import PrepareConfig
from pipelines.shards import RAW_CLIP_KEY, npy_bytes, read_shard, write_shard
from pipelines.sources import SourceRecord
from pipelines.tokenize import decode_clip
from tests.test_loaders import write_shard_dir


def _smooth(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a drifting gradient with a bright square, smooth enough that two resamplers agree."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        for c in range(3):
            out[i, :, :, c] = np.clip(
                60 + 0.8 * x + 0.5 * y + 6 * i * (c + 1) + rng.normal(0, 1, (h, w)), 0, 255
            )
        out[i, h // 4 : h // 2, w // 3 + i : w // 3 + i + h // 4] = 230
    return out


def _record(key: str = "k0") -> SourceRecord:
    return SourceRecord(key, f"file:///videos/{key}.mp4", "a caption", "video", "webvid", key)


@pytest.fixture(scope="module")
def source_mp4() -> bytes:
    return encode_mp4(_smooth(24, 96, 128, 0), fps=12.0)  # 2 s at 12 fps, 4:3 like web video


def test_scaled_size_keeps_the_aspect_and_the_short_side() -> None:
    assert media_scaled_size(320, 240, 128) == (171, 128)
    assert media_scaled_size(240, 320, 128) == (128, 171)
    assert media_scaled_size(64, 64, 32) == (32, 32)
    assert media_scaled_size(20, 16, 32) == (40, 32)  # upscaling too


def test_decode_with_size_matches_decode_then_resize(source_mp4: bytes) -> None:
    full = decode_video(source_mp4, fps=8.0, max_frames=9).frames
    scaled = decode_video(source_mp4, fps=8.0, max_frames=9, size=32).frames
    assert full.shape == (9, 96, 128, 3) and scaled.shape == (9, 32, 32, 3) and scaled.dtype == np.uint8
    assert scaled.flags["C_CONTIGUOUS"]
    reference = resize_center_crop(full, 32)  # Pillow's bicubic, what prepare used before
    diff = np.abs(scaled.astype(np.int16) - reference.astype(np.int16))
    assert diff.mean() < 4.0, diff.mean()  # another filter, the same picture
    # the same frames are picked by the fps resample: the moving square is where it was
    assert np.array_equal(scaled.mean(axis=(1, 2, 3)).argsort(), reference.mean(axis=(1, 2, 3)).argsort())
    with pytest.raises(MediaError, match="size must be positive"):
        decode_video(source_mp4, size=0)


def test_raw_clip_round_trip_and_max_frames() -> None:
    frames = _smooth(5, 16, 16, 1)
    data = npy_bytes(frames)
    assert np.array_equal(decode_raw_clip(data), frames)
    assert np.array_equal(decode_raw_clip(data, 3), frames[:3])


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((4, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "T > 0"),
    ],
)
def test_raw_clip_refuses_other_arrays(array: np.ndarray, match: str) -> None:
    with pytest.raises(MediaError, match=match):
        decode_raw_clip(npy_bytes(array))


def test_raw_clip_refuses_truncated_junk_and_pickles() -> None:
    data = npy_bytes(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(MediaError, match="bytes of pixels"):
        decode_raw_clip(data[:-10])
    with pytest.raises(MediaError, match="cannot read frames.npy"):
        decode_raw_clip(b"not an npy file at all")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MediaError):
        decode_raw_clip(buf.getvalue())


def test_video_format_is_validated() -> None:
    with pytest.raises(ValueError, match="video_format"):
        PrepareConfig(video_format="gif")
    assert PrepareConfig().video_format == "mp4" and PrepareConfig().x264_preset == "superfast"


def test_npy_and_mp4_samples_hold_the_same_clip(source_mp4: bytes) -> None:
    cfg = PrepareConfig(size=32, num_frames=9, fps=8.0)
    (mp4_sample,) = video_samples(_record(), source_mp4, cfg)
    (npy_sample,) = video_samples(
        _record(), source_mp4, PrepareConfig(size=32, num_frames=9, video_format="npy")
    )
    assert set(mp4_sample) == {"__key__", "mp4", "txt", "json"}
    assert set(npy_sample) == {"__key__", RAW_CLIP_KEY, "txt", "json"}
    assert mp4_sample["json"] == npy_sample["json"]
    raw = npy_sample[RAW_CLIP_KEY]
    assert np.array_equal(raw, decode_video(source_mp4, fps=8.0, max_frames=9, size=32).frames)
    decoded_mp4 = decode_video(mp4_sample["mp4"]).frames  # the mp4 holds the same clip, lossy
    assert decoded_mp4.shape == raw.shape
    assert np.abs(decoded_mp4.astype(np.int16) - raw.astype(np.int16)).mean() < 4.0


def test_x264_preset_reaches_the_encoder(source_mp4: bytes) -> None:
    fast = video_samples(_record(), source_mp4, PrepareConfig(size=32, num_frames=9, x264_preset="ultrafast"))
    slow = video_samples(_record(), source_mp4, PrepareConfig(size=32, num_frames=9, x264_preset="medium"))
    assert fast[0]["mp4"] != slow[0]["mp4"]
    # the same settings give the same bytes (content hashes and resume rely on it)
    again = video_samples(
        _record(), source_mp4, PrepareConfig(size=32, num_frames=9, x264_preset="ultrafast")
    )
    assert fast[0]["mp4"] == again[0]["mp4"]


def test_npy_samples_survive_a_shard_and_reach_tokenize(tmp_path: Path, source_mp4: bytes) -> None:
    cfg = PrepareConfig(size=32, num_frames=9, video_format="npy")
    (sample,) = video_samples(_record(), source_mp4, cfg)
    write_shard(str(tmp_path / "shard-000000.tar"), [sample])
    (read,) = list(read_shard(str(tmp_path / "shard-000000.tar")))
    clip = decode_clip(read, image_size=32, temporal_patch=2, want_frames=9)
    assert clip.kind == "video" and np.array_equal(clip.frames, sample[RAW_CLIP_KEY])
    assert clip.caption == "a caption"
    # a tokenizer of another size resizes the frames as it does an mp4 clip's
    assert decode_clip(read, image_size=16, temporal_patch=2, want_frames=9).frames.shape == (9, 16, 16, 3)


def test_clip_loader_reads_npy_and_mp4_shards_alike(tmp_path: Path, source_mp4: bytes) -> None:
    samples = []
    for i, fmt in enumerate(["npy", "mp4"] * 3):  # one directory may mix both (shards of two runs)
        cfg = PrepareConfig(size=32, num_frames=5, video_format=fmt)
        samples.extend(video_samples(_record(f"k{i}"), source_mp4, cfg))
    data_dir = write_shard_dir(tmp_path, samples, 4, {"kind": "clips", "counts": {"video": 6, "image": 0}})
    loader = ClipBatches(data_dir, ClipLoaderConfig(video_batch_size=6, seed=0))
    (video,) = loader.step_batches(0)
    assert video["video"].shape == (6, 3, 5, 32, 32) and video["video"].dtype == torch.float32
    assert loader.frame_shape == (5, 32, 32)
    raw = samples[0][RAW_CLIP_KEY]  # the npy clips reach the loader exactly as prepare decoded them
    assert sum(np.array_equal(v, raw) for v in loader.videos) == 3


def test_decode_video_clips_is_probe_then_decode_per_start(source_mp4: bytes) -> None:
    info, clips = decode_video_clips(source_mp4, lambda info: [0.0, 0.75], fps=8.0, max_frames=5, size=32)
    assert info == probe_video(source_mp4)
    assert [start for start, _ in clips] == [0.0, 0.75]
    for start, clip in clips:
        alone = decode_video(source_mp4, fps=8.0, max_frames=5, start_sec=start, size=32)
        assert np.array_equal(clip.frames, alone.frames) and clip.duration == alone.duration


def test_decode_video_clips_decodes_nothing_when_the_plan_refuses(source_mp4: bytes) -> None:
    seen = []

    def refuse(info):
        seen.append((info.width, info.height))
        raise ValueError("too small")

    with pytest.raises(ValueError, match="too small"):
        decode_video_clips(source_mp4, refuse, fps=8.0, max_frames=5)
    assert seen == [(128, 96)]
    assert decode_video_clips(source_mp4, lambda info: [])[1] == []
