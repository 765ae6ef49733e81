"""pipelines.media on hostile and out-of-range inputs: decode limits and their reasons, truncated and
mislabelled containers, probing, video / image filters, clip_starts, image bombs, image modes and
random corruption. Round trips and seeking are in tests/test_media.py.
"""

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
    probe_image,
    probe_video,
)
from tests.media_helpers import _counter_video, _indices, _mux


@pytest.fixture(scope="module")
def counter_mp4() -> bytes:
    return encode_mp4(_counter_video(), fps=8)


# ----------------------------------------------------------------------------- limits, bad inputs


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
