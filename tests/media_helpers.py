"""Shared helpers for tests/test_media.py and tests/test_media_limits.py (not a test module)."""

from __future__ import annotations

import io

import av
import numpy as np

from pipelines.media import DecodedVideo


def _counter_video(num_frames: int = 24, size: int = 64) -> np.ndarray:
    """(T, size, size, 3) uint8 where frame i is flat grey 10 * i: the frame index survives H.264."""
    return np.stack([np.full((size, size, 3), 10 * i, dtype=np.uint8) for i in range(num_frames)])


def _indices(video: DecodedVideo) -> list[int]:
    return np.round(video.frames[:, 32, 32, 0] / 10).astype(int).tolist()


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
