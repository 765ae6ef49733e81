"""pipelines.media: real H.264 / JPEG / GIF round trips on small arrays."""

from __future__ import annotations

import io
import struct
import zlib

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines import media
from pipelines.media import (
    DEFAULT_LIMITS,
    LIMIT_REASONS,
    DecodedVideo,
    DecodeLimits,
    ImageInfo,
    MediaError,
    MediaLimitError,
    VideoInfo,
    check_image_filters,
    check_video_filters,
    clip_starts,
    decode_image,
    decode_video,
    encode_jpeg,
    encode_mp4,
    encode_mp4_file,
    probe_image,
    probe_video,
    resize_center_crop,
    write_gif,
)


def _counter_video(num_frames: int = 24, size: int = 64) -> np.ndarray:
    """(T, size, size, 3) uint8 where frame i is flat grey 10 * i: the frame index survives H.264."""
    return np.stack([np.full((size, size, 3), 10 * i, dtype=np.uint8) for i in range(num_frames)])


def _indices(video: DecodedVideo) -> list[int]:
    return np.round(video.frames[:, 32, 32, 0] / 10).astype(int).tolist()


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


# ----------------------------------------------------------------------------- limits, bad inputs


def _mux(
    frames: np.ndarray, fmt: str = "mp4", codec: str = "libx264", fps: int = 8, streams: int = 1, **opts
) -> bytes:
    """Frames muxed with any PyAV encoder / container (encode_mp4 only writes H.264 MP4)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        outs = []
        for _ in range(streams):
            s = c.add_stream(codec, rate=fps)
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            s.options = {k.replace("_", "-"): str(v) for k, v in opts.items()}
            outs.append(s)
        for i, f in enumerate(frames):
            for s in outs:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                vf.pts = i
                c.mux(s.encode(vf))
        for s in outs:
            c.mux(s.encode())
    return buf.getvalue()


def _keyint8(frames: np.ndarray, fmt: str = "mp4") -> bytes:
    """H.264 with a keyframe every 8 frames and B-frames, so seeks land mid-video."""
    return _mux(frames, fmt, x264_params="keyint=8:min-keyint=8:scenecut=0", threads=1)


def _png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG, built row by row: 20000 x 20000 is ~50 KB of bytes and
    never exists as pixels here."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = (b"\x00" * (1 + (width + 7) // 8)) * 100  # filter byte 0 + packed bits, 100 rows
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(rows) for _ in range(height // 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _reason(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.reason


def test_media_limit_error_reasons() -> None:
    assert MediaError("x").reason == "undecodable"
    e = MediaLimitError("too_many_frames", "x")
    assert (
        isinstance(e, MediaError) and e.reason == "too_many_frames" and str(e).startswith("too_many_frames")
    )
    assert set(LIMIT_REASONS) == {
        "too_many_pixels",
        "too_many_frames",
        "too_many_streams",
        "decode_timeout",
        "unexpected_format",
    }
    with pytest.raises(ValueError):
        MediaLimitError("bogus", "x")
    with pytest.raises(ValueError):
        DecodeLimits(max_frames=0)


@pytest.mark.parametrize("cut", ["half", "into_moov", "moov_tail"])
def test_truncated_mp4_is_media_error(counter_mp4: bytes, cut: str) -> None:
    # encode_mp4 writes the moov (index) after the frames: cuts lose the index, or part of it.
    moov = counter_mp4.find(b"moov") - 4
    end = {"half": len(counter_mp4) // 2, "into_moov": moov + 50, "moov_tail": len(counter_mp4) - 300}[cut]
    with pytest.raises(MediaError) as e:
        decode_video(counter_mp4[:end])
    assert _reason(e) == "undecodable"


def test_truncated_faststart_mp4(tmp_path) -> None:
    # Index first (as streaming sites serve it), frames cut off: opening works, decoding past the
    # cut fails; a prefix that is intact still decodes.
    path = tmp_path / "fast.mp4"
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i, f in enumerate(_counter_video()):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode())
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    for end in (len(data) // 2, len(data) - 50):
        assert probe_video(data[:end]).duration_s == pytest.approx(3.0)
        with pytest.raises(MediaError, match="cannot decode"):
            decode_video(data[:end])
    assert _indices(decode_video(data[:-50], max_frames=9)) == list(range(9))
    # Zero frames: the moov lists 24 frames, the bytes stop where the frame data would start.
    zero = data[: data.find(b"mdat") + 4]
    assert probe_video(zero).width == 64
    with pytest.raises(MediaError, match="no frames decoded"):
        decode_video(zero)


@pytest.mark.parametrize(("fmt", "codec"), [("mp4", "libx264"), ("webm", "libvpx"), ("matroska", "libx264")])
def test_zero_frame_containers(fmt: str, codec: str) -> None:
    # Header written, no frame ever encoded. FFmpeg's MP4 muxer drops a track with no samples (so
    # "no video stream"); Matroska keeps the track and the demuxer hits EOF probing it.
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()
    with pytest.raises(MediaError) as e:
        decode_video(buf.getvalue())
    assert _reason(e) == "undecodable"


def test_jpeg_named_mp4_is_unexpected_format(tmp_path) -> None:
    # Without the demuxer whitelist FFmpeg opens this with jpeg_pipe: a one-frame "video".
    jpg = encode_jpeg(_counter_video(4)[3])
    path = tmp_path / "clip.mp4"
    path.write_bytes(jpg)
    png = _save(Image.new("RGB", (8, 8)), "PNG")
    for src in (jpg, path, str(path), png):
        with pytest.raises(MediaLimitError, match="allowed demuxers") as e:
            decode_video(src)
        assert _reason(e) == "unexpected_format"
    with pytest.raises(MediaLimitError, match="JPEG"):
        probe_video(jpg)


def test_not_a_url(tmp_path) -> None:
    # Paths are opened by Python: FFmpeg protocols ("concat:", "pipe:") are never reached.
    with pytest.raises(MediaError, match="cannot open video") as e:
        decode_video(f"concat:{tmp_path / 'a.mp4'}|{tmp_path / 'b.mp4'}")
    assert _reason(e) == "undecodable"


def test_mpegts_only_when_allowed() -> None:
    ts = _mux(_counter_video(8), "mpegts")
    with pytest.raises(MediaLimitError) as e:
        decode_video(ts)
    assert _reason(e) == "unexpected_format"
    limits = DecodeLimits(video_formats=(*DEFAULT_LIMITS.video_formats, "mpegts"))
    assert _indices(decode_video(ts, limits=limits)) == list(range(8))


@pytest.mark.parametrize(("encoder", "codec"), [("libvpx", "vp8"), ("libvpx-vp9", "vp9")])
def test_webm_decodes(encoder: str, codec: str) -> None:
    if encoder not in av.codecs_available:
        pytest.skip(f"this PyAV wheel has no {encoder} encoder")
    webm = _mux(_counter_video(16), "webm", encoder, threads=1)
    info = probe_video(webm)
    assert (info.format_name, info.codec, info.width, info.fps) == ("matroska,webm", codec, 64, 8.0)
    assert _indices(decode_video(webm, fps=4)) == list(range(0, 16, 2))


def test_probe_video(counter_mp4: bytes) -> None:
    info = probe_video(counter_mp4)
    assert info == VideoInfo(64, 64, 8.0, 3.0, 1, "mov,mp4,m4a,3gp,3g2,mj2", "h264")


def test_video_limits(counter_mp4: bytes, monkeypatch) -> None:
    def reason(**kw) -> str:
        with pytest.raises(MediaLimitError) as e:
            decode_video(counter_mp4, limits=DecodeLimits(**kw))
        return _reason(e)

    assert reason(max_pixels=64 * 64 - 1) == "too_many_pixels"
    assert reason(max_frames=10) == "too_many_frames"
    assert reason(max_output_bytes=64 * 64 * 3 * 5) == "too_many_frames"
    assert reason(max_decode_s=0.0) == "decode_timeout"
    # Enough for what is asked: fine.
    assert len(decode_video(counter_mp4, max_frames=9, limits=DecodeLimits(max_frames=12)).frames) == 9
    with pytest.raises(MediaLimitError, match="too_many_pixels"):
        probe_video(counter_mp4, DecodeLimits(max_pixels=100))

    # A decoder that takes 1 s per frame: the clock is read between frames, so 24 frames under a
    # 5 s limit stop after about 5.
    class SlowClock:
        now = 0.0

        def monotonic(self) -> float:
            self.now += 0.5
            return self.now

    monkeypatch.setattr(media, "time", SlowClock())
    with pytest.raises(MediaLimitError, match="decode_timeout"):
        decode_video(counter_mp4, limits=DecodeLimits(max_decode_s=5.0))


def test_too_many_streams() -> None:
    three = _mux(_counter_video(2, 32), streams=3)
    assert probe_video(three).num_streams == 3
    assert decode_video(three, limits=DecodeLimits(max_streams=3)).frames.shape == (2, 32, 32, 3)
    with pytest.raises(MediaLimitError) as e:
        decode_video(three, limits=DecodeLimits(max_streams=2))
    assert _reason(e) == "too_many_streams"


# ----------------------------------------------------------------------------- seeking


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


# ----------------------------------------------------------------------------- filters, clips


@pytest.mark.parametrize(
    ("w", "h", "duration", "kw", "reason"),
    [
        (64, 64, 3.0, {}, None),
        (64, 64, 3.0, {"min_duration_s": 3.0, "max_duration_s": 3.0}, None),
        (64, 64, 2.9, {"min_duration_s": 3.0}, "too_short"),
        (64, 64, 30.0, {"max_duration_s": 20.0}, "too_long"),
        (64, 64, None, {"min_duration_s": 3.0, "max_duration_s": 20.0}, None),  # unknown: decode decides
        (320, 240, 3.0, {"min_side": 256}, "too_small"),
        (640, 240, 3.0, {"max_aspect": 2.0}, "bad_aspect"),
        (100, 400, 1.0, {"min_duration_s": 2.0, "min_side": 128, "max_aspect": 2.0}, "too_short"),
        (100, 400, 3.0, {"min_duration_s": 2.0, "min_side": 128, "max_aspect": 2.0}, "too_small"),
    ],
)
def test_video_filters(w: int, h: int, duration: float | None, kw: dict, reason: str | None) -> None:
    assert check_video_filters(VideoInfo(w, h, 8.0, duration, 1, "avi", "mpeg4"), **kw) == reason


@pytest.mark.parametrize(
    ("w", "h", "kw", "reason"),
    [
        (320, 240, {}, None),
        (320, 240, {"min_side": 256}, "too_small"),
        (240, 320, {"min_side": 240}, None),
        (640, 240, {"max_aspect": 2.0}, "bad_aspect"),  # long / short side, either orientation
        (240, 480, {"max_aspect": 2.0}, None),
        (0, 240, {"max_aspect": 2.0}, "bad_aspect"),
        (100, 400, {"min_side": 128, "max_aspect": 2.0}, "too_small"),  # the first failing check
    ],
)
def test_image_filters(w: int, h: int, kw: dict, reason: str | None) -> None:
    assert check_image_filters(w, h, **kw) == reason


@pytest.mark.parametrize(
    ("duration", "clip", "n", "mode", "starts"),
    [
        (10.0, 1.125, 1, "consecutive", [0.0]),
        (10.0, 1.125, 3, "consecutive", [0.0, 1.125, 2.25]),
        (3.375, 1.125, 5, "consecutive", [0.0, 1.125, 2.25]),  # only whole clips
        (0.5, 1.125, 3, "consecutive", [0.0]),  # shorter than a clip: one (short) clip
        (0.5, 1.125, 3, "spread", [0.0]),
        (10.0, 1.0, 3, "spread", [0.0, 4.5, 9.0]),  # first at 0, last ends at 10
        (10.0, 2.5, 9, "spread", [0.0, 2.5, 5.0, 7.5]),  # at most duration / clip: no overlap
        (10.0, 1.0, 1, "spread", [0.0]),
    ],
)
def test_clip_starts(duration: float, clip: float, n: int, mode: str, starts: list[float]) -> None:
    assert clip_starts(duration, clip, n, mode=mode) == pytest.approx(starts)


def test_clip_starts_rejects_bad_arguments() -> None:
    for args, kw in [((10.0, 0.0, 1), {}), ((10.0, 1.0, 0), {}), ((10.0, 1.0, 2), {"mode": "random"})]:
        with pytest.raises(ValueError):
            clip_starts(*args, **kw)


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    return _png(20_000, 20_000)


def test_image_bomb_rejected_from_header(png_bomb: bytes, monkeypatch) -> None:
    assert len(png_bomb) < 100_000  # 400 M pixels in under 100 KB

    def no_pixels(self):
        pytest.fail("pixels decoded")  # a BaseException: decode_image cannot turn it into a MediaError

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    # 20000^2 is past twice Pillow's global limit (its own DecompressionBombError), 6000^2 below it:
    # both are refused; so are they when an importer switched Pillow's global check off.
    for bomb in (png_bomb, _png(6000, 6000)):
        for pillow_limit in (Image.MAX_IMAGE_PIXELS, None):
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
            for call in (decode_image, probe_image):
                with pytest.raises(MediaLimitError) as e:
                    call(bomb)
                assert _reason(e) == "too_many_pixels"
    with pytest.raises(MediaLimitError, match="too_many_pixels"):
        decode_image(_png(200, 100), DecodeLimits(max_pixels=200 * 100 - 1))


def test_image_within_limits_decodes() -> None:
    assert probe_image(_png(200, 100)) == ImageInfo(200, 100, "PNG", "1")
    np.testing.assert_array_equal(decode_image(_png(200, 100)), np.zeros((100, 200, 3), np.uint8))


def test_corrupt_images_are_media_errors() -> None:
    jpg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    png = _save(Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)), "PNG")
    idat = png.find(b"IDAT") + 10
    broken_crc = png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1 :]
    for bad in (
        b"",
        b"\x00garbage" * 10,
        jpg[: len(jpg) // 2],
        png[: len(png) // 2],
        broken_crc,
        jpg[:3] + b"\x00" * 40,
    ):
        with pytest.raises(MediaError) as e:
            decode_image(bad)
        assert _reason(e) == "undecodable", bad[:16]


def test_unexpected_image_formats(counter_mp4: bytes) -> None:
    tiff = _save(Image.new("RGB", (8, 8)), "TIFF")
    for src in (tiff, counter_mp4):
        with pytest.raises(MediaLimitError, match="allowed") as e:
            decode_image(src)
        assert _reason(e) == "unexpected_format"
    assert decode_image(tiff, DecodeLimits(image_formats=("TIFF",))).shape == (8, 8, 3)
    with pytest.raises(MediaLimitError, match="unexpected_format"):
        decode_image(_save(Image.new("RGB", (8, 8)), "PNG"), DecodeLimits(image_formats=("JPEG",)))


@pytest.mark.parametrize(
    ("image", "fmt", "pixel"),
    [
        (Image.new("1", (6, 4), 1), "PNG", (255, 255, 255)),
        (Image.new("L", (6, 4), 100), "PNG", (100, 100, 100)),
        (Image.new("P", (6, 4), 0), "GIF", (0, 0, 0)),
        (Image.new("RGB", (6, 4), (10, 200, 30)), "BMP", (10, 200, 30)),
        (Image.new("RGB", (6, 4), (10, 200, 30)), "WEBP", (10, 200, 30)),
        (Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),  # pure red in CMYK
        (Image.new("RGBA", (6, 4), (0, 0, 0, 0)), "PNG", (255, 255, 255)),  # transparent: white
        (Image.fromarray(np.full((4, 6), 0x8000, np.uint16)), "PNG", (128, 128, 128)),  # I;16 scaled
    ],
)
def test_image_modes_to_rgb(image: Image.Image, fmt: str, pixel: tuple[int, int, int]) -> None:
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_save(image, fmt, **kw))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert np.abs(out[2, 3].astype(int) - pixel).max() <= 3, out[2, 3]


def test_exif_orientation_applied() -> None:
    # Stored 4 x 8 with the left quarter white; orientation 6 = "rotate 90 degrees clockwise to
    # display", so the displayed 8 x 4 image has the white at the top.
    stored = np.zeros((4, 8, 3), np.uint8)
    stored[:, :2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_save(Image.fromarray(stored), "JPEG", exif=exif, quality=100))
    assert out.shape == (8, 4, 3)
    assert out[:2].mean() > 200 and out[3:].mean() < 30


def test_corrupted_bytes_only_raise_media_error(counter_mp4: bytes) -> None:
    # Random byte flips and cuts: every failure must be a MediaError (prepare counts it), never an
    # arbitrary exception. This found junk metadata (UnicodeDecodeError), streams without a decoder
    # and mid-stream size changes.
    rng = np.random.default_rng(0)
    frames = _counter_video(8, 32)
    sources = {
        "mp4": counter_mp4,
        "webm": _mux(frames, "webm", "libvpx", g=4),
        "jpg": encode_jpeg(frames[3]),
        "png": _save(Image.fromarray(frames[3]).convert("P"), "PNG"),
    }
    for name, data in sources.items():
        for trial in range(40):
            b = bytearray(data)
            for _ in range(rng.integers(1, 20)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
            b = b[: rng.integers(0, len(b))] if trial % 4 == 0 else b
            try:
                if name in ("jpg", "png"):
                    decode_image(bytes(b))
                else:
                    decode_video(bytes(b), fps=8 if trial % 2 else None, start_sec=0.5 * (trial % 3))
            except MediaError:
                pass
