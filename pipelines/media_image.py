"""Images <-> numpy arrays: JPEG encoding, decoding any allowed format to RGB (EXIF upright, alpha on white).

Split out of `pipelines.media`, which re-exports these names: callers keep importing from there. Arrays are
uint8 RGB `(H, W, 3)`; failures raise `MediaError` as the video functions do.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

from pipelines.media_probe import DEFAULT_LIMITS, DecodeLimits, MediaError, open_image


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise MediaError(f"expected (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(src: bytes | str | os.PathLike, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """JPEG / PNG / WEBP / GIF / BMP (bytes or path; `limits.image_formats`) -> (H, W, 3) uint8 RGB.

    EXIF orientation is applied (phones store portrait photos as rotated landscape pixels).
    Transparent images are composited on white: their RGB under alpha 0 is arbitrary (often
    black), which would otherwise show up as junk around the subject. Animated images: frame 0.
    """
    with open_image(src, limits) as im:
        try:
            im.load()  # truncated / corrupt data fails here (LOAD_TRUNCATED_IMAGES left as it is)
            return _to_rgb(_exif_upright(im))
        except MediaError:
            raise
        except Exception as e:
            raise MediaError(f"cannot decode {im.format} image: {type(e).__name__}: {e}") from e


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF: the pixels are still good, keep them as stored
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    elif im.mode.startswith("I") or im.mode == "F":
        # 16-bit grey (PNG "I;16") or 32-bit int / float: convert("RGB") would clip at 255, not
        # scale. "I;16*" is scaled 0..65535 -> 0..255; "I" / "F" only when values exceed 8 bits.
        grey = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16") or (grey.size and grey.max() > 255):
            grey = grey / 257.0
        grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
