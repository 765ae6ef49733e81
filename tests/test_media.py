"""pipelines.media: real H.264 / JPEG / GIF round trips on small arrays: encoding, decoding,
resampling, resizing, GIFs and seeking. Decode limits, probing, filters, clip starts and bad inputs are
in tests/test_media_limits.py.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from pipelines import media
from pipelines.media import (
    DecodeLimits,
    MediaError,
    MediaLimitError,
    decode_image,
    decode_video,
    encode_jpeg,
    encode_mp4,
    encode_mp4_file,
    resize_center_crop,
    write_gif,
)
from tests.media_helpers import _counter_video, _indices, _mux


@pytest.fixture(scope="module")
def counter_mp4() -> bytes:
    return encode_mp4(_counter_video(), fps=8)


def test_encode_mp4_is_h264_yuv420p_at_fps(counter_mp4: bytes, tmp_path) -> None:
    path = tmp_path / "v.mp4"
    path.write_bytes(counter_mp4)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert (s.width, s.height) == (64, 64)
        assert float(s.average_rate) == 8.0
        assert s.frames == 24


def test_encode_mp4_is_deterministic(counter_mp4: bytes) -> None:
    assert encode_mp4(_counter_video(), fps=8) == counter_mp4
    # Moving, noisy content at small sizes: x264's default mbtree gave run-to-run differences here.
    rng = np.random.default_rng(0)
    for size in (32, 48, 64):
        y, x = np.mgrid[0:size, 0:size]
        frames = np.stack([np.stack([(x + 2 * t) * 4, y * 4, (x * y) % 255], -1) for t in range(16)])
        frames = np.clip(frames + rng.integers(-4, 5, frames.shape), 0, 255).astype(np.uint8)
        first = encode_mp4(frames, fps=8)
        for _ in range(3):
            decode_video(first)  # decoding in between reshuffles the heap, which exposed the bug
            assert encode_mp4(frames, fps=8) == first


def test_decode_round_trip_is_close(counter_mp4: bytes) -> None:
    video = decode_video(counter_mp4)
    assert video.frames.shape == (24, 64, 64, 3) and video.frames.dtype == np.uint8
    assert video.fps == 8.0 and video.duration == pytest.approx(3.0)
    err = np.abs(video.frames.astype(int) - _counter_video().astype(int))
    assert err.max() <= 3  # crf 18 on flat frames: near lossless


def test_decode_from_path_equals_from_bytes(counter_mp4: bytes, tmp_path) -> None:
    path = encode_mp4_file(_counter_video(), tmp_path / "sub" / "v.mp4", fps=8)
    assert path.read_bytes() == counter_mp4
    np.testing.assert_array_equal(decode_video(str(path)).frames, decode_video(counter_mp4).frames)


@pytest.mark.parametrize(
    ("fps", "expected"),
    [
        (8, list(range(24))),
        (4, list(range(0, 24, 2))),
        (16, [i // 2 for i in range(48)]),
        # t = k/3: the latest source frame with pts <= t, e.g. t=1/3 -> frame 2 (pts 0.25).
        (3, [0, 2, 5, 8, 10, 13, 16, 18, 21]),
    ],
)
def test_decode_resamples_by_timestamp(counter_mp4: bytes, fps: float, expected: list[int]) -> None:
    video = decode_video(counter_mp4, fps=fps)
    assert _indices(video) == expected
    assert video.fps == fps


def test_decode_start_and_max_frames(counter_mp4: bytes) -> None:
    assert _indices(decode_video(counter_mp4, start_sec=1.0, max_frames=5)) == [8, 9, 10, 11, 12]
    assert _indices(decode_video(counter_mp4, fps=4, start_sec=1.1, max_frames=3)) == [8, 10, 12]
    assert _indices(decode_video(counter_mp4, max_frames=9)) == list(range(9))


@pytest.mark.parametrize("bad", [b"", b"not a video at all" * 20, "truncated"])
def test_decode_garbage_raises_media_error(counter_mp4: bytes, bad) -> None:
    src = counter_mp4[:200] if bad == "truncated" else bad
    with pytest.raises(MediaError):
        decode_video(src)


def test_decode_past_the_end_names_the_problem(counter_mp4: bytes) -> None:
    with pytest.raises(MediaError, match="no frames decoded"):
        decode_video(counter_mp4, start_sec=10.0)


def test_media_error_is_value_error() -> None:
    assert issubclass(MediaError, ValueError)


def test_encode_rejects_odd_size_and_wrong_dtype() -> None:
    with pytest.raises(MediaError, match="even"):
        encode_mp4(np.zeros((2, 63, 64, 3), np.uint8), fps=8)
    with pytest.raises(MediaError, match="uint8"):
        encode_mp4(np.zeros((2, 64, 64, 3), np.float32), fps=8)


def test_jpeg_round_trip() -> None:
    y, x = np.mgrid[0:64, 0:80]
    image = np.stack([x * 3, y * 4, 255 - x * 3], axis=-1).astype(np.uint8)  # (64, 80, 3) smooth ramps
    out = decode_image(encode_jpeg(image, quality=95))
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image.astype(int)).mean() < 2


def test_decode_image_always_rgb(tmp_path) -> None:
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((6, 4), 100, np.uint8), mode="L").save(grey)
    assert decode_image(str(grey)).shape == (6, 4, 3)
    rgba = tmp_path / "a.png"
    pixels = np.zeros((4, 4, 4), np.uint8)  # fully transparent black: composited on white
    Image.fromarray(pixels, mode="RGBA").save(rgba)
    np.testing.assert_array_equal(decode_image(rgba.read_bytes()), np.full((4, 4, 3), 255, np.uint8))
    with pytest.raises(MediaError):
        decode_image(b"\x00garbage")


def test_resize_center_crop_shapes_and_content() -> None:
    # A 60 x 120 image: left third red, middle blue, right third green. Short side -> 32 gives
    # 32 x 64; the centre crop keeps x in [16, 48) of the resized image: mostly blue.
    image = np.zeros((60, 120, 3), np.uint8)
    image[:, :40] = (255, 0, 0)
    image[:, 40:80] = (0, 0, 255)
    image[:, 80:] = (0, 255, 0)
    out = resize_center_crop(image, 32)
    assert out.shape == (32, 32, 3)
    assert (out[:, 8:24, 2] > 200).all() and (out[:, 8:24, :2] < 60).all()
    video = resize_center_crop(np.stack([image, image]), 16)
    assert video.shape == (2, 16, 16, 3)
    assert resize_center_crop(np.zeros((10, 10, 3), np.uint8), 20).shape == (20, 20, 3)  # upscale


def test_write_gif(tmp_path) -> None:
    path = write_gif(_counter_video(6, 16), tmp_path / "a.gif", fps=8)
    with Image.open(path) as gif:
        assert gif.n_frames == 6
        assert abs(gif.info["duration"] - 125) <= 10  # GIF delays are whole 10 ms units


# ----------------------------------------------------------------------------- seeking


def _keyint8(frames: np.ndarray, fmt: str = "mp4") -> bytes:
    """H.264 with a keyframe every 8 frames and B-frames, so seeks land mid-video."""
    return _mux(frames, fmt, x264_params="keyint=8:min-keyint=8:scenecut=0", threads=1)


def _long_video(num_frames: int) -> np.ndarray:
    """(T, 32, 32, 3): frame i has R = 10 * (i % 25), G = 10 * (i // 25), so i survives H.264."""
    i = np.arange(num_frames)
    frames = np.zeros((num_frames, 32, 32, 3), np.uint8)
    frames[..., 0] = (10 * (i % 25))[:, None, None]
    frames[..., 1] = (10 * (i // 25))[:, None, None]
    return frames


def _long_indices(frames: np.ndarray) -> list[int]:
    r, g = (np.round(frames[:, 16, 16, c] / 10).astype(int) for c in (0, 1))
    return (g * 25 + r).tolist()


@pytest.fixture(scope="module")
def seekable() -> dict[str, bytes]:
    """48 frames at 8 fps, a keyframe each second, in the containers we accept."""
    frames = _long_video(48)
    return {
        "mp4-h264": _keyint8(frames),
        "mkv-h264": _keyint8(frames, "matroska"),
        "webm-vp9": _mux(frames, "webm", "libvpx-vp9", g=8, threads=1),
        "avi-mpeg4": _mux(frames, "avi", "mpeg4", g=8),
    }


@pytest.mark.parametrize("kind", ["mp4-h264", "mkv-h264", "webm-vp9", "avi-mpeg4"])
def test_seek_equals_slicing_full_decode(seekable: dict[str, bytes], kind: str, monkeypatch) -> None:
    src = seekable[kind]
    seek = media._decode_seeking

    def seek_must_work(*args):  # the fallback (decode from the start) would make this test vacuous
        got = seek(*args)
        assert got is not None, f"{kind}: seek fell back to decoding from the start"
        return got

    monkeypatch.setattr(media, "_decode_seeking", seek_must_work)
    for fps in (8, 16):
        full = decode_video(src, fps=fps).frames
        for start in (0.125, 1.0, 2.875, 4.5):
            clip = decode_video(src, fps=fps, start_sec=start)
            np.testing.assert_array_equal(clip.frames, full[round(start * fps) :])
            assert clip.duration == pytest.approx(6.0)
    full = decode_video(src).frames  # source rate: frames at or after start_sec
    np.testing.assert_array_equal(decode_video(src, start_sec=1.05, max_frames=4).frames, full[9:13])
    # Off-grid starts: output k is the latest source frame at or before start + k / fps (source
    # frame i is at i / 8 s), until the last one has been on screen for 1/8 s.
    for fps, start in ((3, 1.05), (5, 2.9), (8, 0.3)):
        clip = decode_video(src, fps=fps, start_sec=start).frames
        n = len(clip)
        np.testing.assert_array_equal(clip, full[[int((start + k / fps) * 8 + 1e-6) for k in range(n)]])
        assert start + (n - 1) / fps < 6.0 <= start + n / fps + 1e-6


def test_seek_skips_decoding_the_start(seekable: dict[str, bytes]) -> None:
    # 30 s: a clip at 25 s under a 30-frame budget decodes only from the keyframe at 25 s.
    src = _keyint8(_long_video(240))
    limits = DecodeLimits(max_frames=30)
    clip = decode_video(src, fps=8, start_sec=25.0, max_frames=9, limits=limits)
    assert _long_indices(clip.frames) == list(range(200, 209))
    with pytest.raises(MediaLimitError, match="too_many_frames"):
        decode_video(src, fps=8, limits=limits)


def test_seek_falls_back_to_decoding_from_start(seekable: dict[str, bytes], monkeypatch) -> None:
    src = seekable["mp4-h264"]
    expected = decode_video(src, fps=8, start_sec=2.0).frames

    def never_trusted(frames, t0, start_sec):
        raise media._Overshoot("test")
        yield  # pragma: no cover

    monkeypatch.setattr(media, "_after_keyframe", never_trusted)
    np.testing.assert_array_equal(decode_video(src, fps=8, start_sec=2.0).frames, expected)
