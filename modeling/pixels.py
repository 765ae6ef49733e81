"""Pixels <-> the tensors the tokenizers take: frames are (T, H, W, 3) uint8, videos (B, 3, T, H, W) float in
[-1, 1]. The one place these conversions are written (loaders, tokenize, fidelity, generation, serving), and
the one resize (`prepare` and image animation)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def frames_to_video(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) or (B, T, H, W, 3) uint8 -> (1 or B, 3, T, H, W) float32 in [-1, 1]: the one conversion from
    pixels to what the tokenizers take (training loaders, tokenize, fidelity, generation)."""
    x = torch.as_tensor(np.ascontiguousarray(frames))
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) or (B, T, H, W, 3) frames, got {tuple(x.shape)}")
    return (
        x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
    )  # never in place: a float input is the caller's


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) float in [-1, 1] -> (B, T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size`, then centre-crop to size x size: how `prepare` brings every clip and
    still to the tokenizer's size, and how generation brings a user's image to it (the same pixels both ways).

    (T, H, W, 3) -> (T, size, size, 3) or (H, W, 3) -> (size, size, 3), uint8.
    Pillow's bicubic widens its kernel by the scale factor when shrinking, so it averages over
    the source area (no aliasing) when downscaling and interpolates smoothly when upscaling.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return resize_center_crop(frames[None], size)[0]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"expected (T, H, W, 3) or (H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}"
        )
    _, h, w, _ = frames.shape
    if (h, w) == (size, size):
        return frames.copy()
    # Resample only the centred source square that survives the crop (Pillow's `box`), instead of the whole
    # frame followed by a crop: same filter, a fraction of the work for wide frames.
    side = min(h, w)
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    out = np.empty((frames.shape[0], size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC, box=box))
    return out
