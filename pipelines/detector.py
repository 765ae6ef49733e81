"""A deterministic adherence detector for the synthetic world (numpy image analysis, no learning).

`detect(frames)` reads back the colour, shape and motion of the one shape in a video;
`parse_caption(text)` reads the same attributes out of a caption or prompt; `adherence` compares
them. It is validated on ground-truth renders after a real H.264 round trip (tests/test_detector.py,
benchmarks/detector_accuracy.py), so it can score what a model generates.

Method, per frame (T, H, W, 3):
- background = the frame's per-channel median (the shape covers well under half the frame);
- contrast = max-channel distance from background; foreground = the largest 4-connected blob with
  contrast above half the shape's own contrast (half-coverage is where an anti-aliased edge sits);
- soft coverage alpha = contrast / shape contrast, clipped to [0, 1], on that blob grown by one pixel.
Colour: nearest palette entry to the median colour of the fully covered pixels, compared by chroma
(RGB minus its mean) plus half-weighted brightness, since H.264's 4:2:0 chroma shifts colours a little.
Shape: fitted, the way a person matches a silhouette to the shapes they know. Each candidate shape is
drawn as the synthetic world draws it (`pipelines.synth.shape_coverage`), with alpha's mass as its area
and alpha's centroid as its centroid, blurred by each of `BLUR_SIGMAS_PX`; its fit is the least squared
difference to alpha per unit of mass. The best-fitting shape gets the frame's vote; the majority of
frames decides. Modelling the blur matters: a model's output is softer than a render, and the earlier
reading (fill ratio and row-profile skew) took a blurred triangle or a square with rounded corners for a
circle (docs/demo-quality.md, "Reading shape as a person does").
Motion: least-squares slope of the alpha centroid over frames, times the clip length; the dominant
axis gives the direction; under `MIN_DISPLACEMENT_PX` of travel it is "static".

One clean object (`clean_object`), the gate on every adherence figure: the attributes above are read
from the largest blob and would score a frame of "patch soup" (fragments tiled over the frame) as
whatever colour they average to. A frame is clean when at least `CLEAN_SHARE` of its foreground pixels
(max-channel distance > `CLEAN_CONTRAST` from the background) form one 4-connected component whose
bounding box is under `CLEAN_MAX_EXTENT` of the frame side; a video is clean when at least
`CLEAN_FRAMES` of its frames are.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from pipelines.synth import BACKGROUND, PALETTE, SHAPE_WORDS, SHAPES, shape_coverage

MIN_DISPLACEMENT_PX = 2.0
MIN_CONTRAST = 40.0  # max-channel distance below which nothing counts as a shape
MIN_AREA_PX = 12  # blobs smaller than this are noise, not a shape
# Each shape's area in units of r^2 (r = half its width, as `pipelines.synth` draws it), and how far its
# centroid sits below its centre in units of r (an upright triangle's centroid is a third of the way down).
_AREA_PER_R2 = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
_CENTROID_BELOW_CENTRE = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}
# Gaussian blurs (pixels) a fitted shape may have: a render (0), H.264 and resizing (~0.5), a soft model
# output (1-1.5). Ground truth blurred by sigma 1.0 still reads 71/72 shapes at 32x32.
BLUR_SIGMAS_PX = (0.0, 0.5, 1.0, 1.5)
CLEAN_CONTRAST = 60.0  # foreground for the clean-object test: max-channel distance above this
CLEAN_SHARE = 0.85  # the main component holds at least this share of the foreground
CLEAN_MAX_EXTENT = 0.45  # its bounding box is under this fraction of the frame side (both axes)
CLEAN_FRAMES = 0.8  # a video is clean when at least this share of its frames is


@dataclass(frozen=True)
class Detection:
    colour: str | None  # palette name, None if no shape was found
    shape: str | None  # "circle" | "square" | "triangle" | None
    motion: str | None  # "left" | "right" | "up" | "down" | "static"; None with < 2 usable frames
    frames_with_shape: int  # frames where a blob was found
    median_rgb: tuple[int, int, int] | None  # median colour of fully covered pixels
    shape_fit: dict[str, float] | None  # per shape, median fit over frames (0 = exact; lowest wins)
    displacement: tuple[float, float] | None  # (dx, dy) px over the clip, y down
    shape_votes: dict[str, int]  # per-frame shape votes
    clean: bool = False  # one clean object (see `clean_object`)
    clean_frames: float = 0.0  # share of frames that show one clean object
    frame_colours: tuple[str | None, ...] = ()  # palette colour of each frame's shape (None: no shape)


@dataclass(frozen=True)
class Attributes:
    colour: str | None
    shape: str | None
    motion: str | None


# ----------------------------------------------------------------------------- masks


def _neighbour_min(x: np.ndarray, fill: int | bool) -> np.ndarray:
    """(T, H, W) -> elementwise min of x and its four 4-neighbours (out-of-frame cells read `fill`)."""
    t, h, w = x.shape
    padded = np.full((t, h + 2, w + 2), fill, dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x
    out = x.copy()
    for view in (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]):
        np.minimum(out, view, out=out)
    return out


def largest_components(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, H, W) bool: each frame's largest 4-connected component.

    Min-label propagation, vectorised over all frames. A label is the flat index of a pixel in the
    same component; each pass takes the smallest label among a pixel and its neighbours, then
    jumps to that pixel's own label (pointer jumping), so it settles in a handful of passes rather
    than one per pixel of blob diameter. Labels are flat indices, so they never cross frames.
    """
    t, h, w = mask.shape
    big = t * h * w  # background label; also the sentinel slot appended for the jump
    labels = np.where(mask, np.arange(big, dtype=np.int32).reshape(t, h, w), np.int32(big))
    while True:
        new = np.where(mask, _neighbour_min(labels, big), np.int32(big))
        new = np.append(new.ravel(), np.int32(big))[new]  # jump: label of the label
        if np.array_equal(new, labels):
            break
        labels = new
    counts = np.bincount(labels[mask], minlength=big).reshape(t, h * w)  # pixels per label, per frame
    best = np.argmax(counts, axis=1) + np.arange(t) * h * w  # (T,) largest label of each frame
    return mask & (labels == best[:, None, None])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) bool, grown by one pixel (4-neighbourhood)."""
    # A pixel stays background only if it and all its neighbours are: min over "is background".
    return ~_neighbour_min(~mask, True)


@dataclass(frozen=True)
class _FrameShape:
    alpha: np.ndarray  # (H, W) float coverage in [0, 1]
    core_rgb: np.ndarray  # (N, 3) float colours of fully covered pixels


def _frame_shapes(frames: np.ndarray) -> list[_FrameShape | None]:
    """(T, H, W, 3) uint8 -> per frame, the shape found in it or None."""
    rgb = frames.astype(np.float32)
    t = rgb.shape[0]
    background = np.median(rgb.reshape(t, -1, 3), axis=1)  # (T, 3)
    contrast = np.abs(rgb - background[:, None, None, :]).max(axis=-1)  # (T, H, W)
    strong = contrast > MIN_CONTRAST
    # The shape's own contrast: a high percentile of its strong pixels (interior, not edges).
    full = np.array(
        [
            np.percentile(c[m], 75) if m.sum() >= MIN_AREA_PX else np.inf
            for c, m in zip(contrast, strong, strict=True)
        ]
    )
    blob = largest_components(contrast > full[:, None, None] / 2)
    alpha = np.where(_dilate(blob), np.clip(contrast / full[:, None, None], 0.0, 1.0), 0.0)
    core = blob & (contrast > 0.85 * full[:, None, None])
    out: list[_FrameShape | None] = []
    for i in range(t):
        if blob[i].sum() < MIN_AREA_PX:
            out.append(None)
            continue
        core_rgb = rgb[i][core[i]] if core[i].any() else rgb[i][blob[i]]
        out.append(_FrameShape(alpha=alpha[i], core_rgb=core_rgb))
    return out


def clean_frame_mask(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T,) bool: does each frame show one clean object?

    Foreground = max-channel distance > CLEAN_CONTRAST from the frame's median colour (the background
    covers most of a frame). Clean = at least MIN_AREA_PX foreground pixels, CLEAN_SHARE of them in the
    largest 4-connected component, and that component's bounding box under CLEAN_MAX_EXTENT of the
    frame's height and width; and the median itself is the world's background (within CLEAN_CONTRAST),
    since a frame flooded with colour has the flood as its median. An empty frame, a flooded frame and
    fragments tiled over the frame all fail.
    """
    rgb = frames.astype(np.float32)
    t, h, w, _ = rgb.shape
    background = np.median(rgb.reshape(t, -1, 3), axis=1)  # (T, 3)
    foreground = np.abs(rgb - background[:, None, None, :]).max(axis=-1) > CLEAN_CONTRAST  # (T, H, W)
    plain = np.abs(background - np.asarray(BACKGROUND, np.float32)).max(axis=-1) <= CLEAN_CONTRAST  # (T,)
    main = largest_components(foreground)
    total = foreground.sum(axis=(1, 2))  # (T,)
    size = main.sum(axis=(1, 2))
    rows, cols = main.any(axis=2), main.any(axis=1)  # (T, H), (T, W)

    def extent(occupied: np.ndarray) -> np.ndarray:
        """(T, N) bool -> (T,) span from the first to the last occupied index (0 if none)."""
        n = occupied.shape[1]
        first = np.argmax(occupied, axis=1)
        last = n - 1 - np.argmax(occupied[:, ::-1], axis=1)
        return np.where(occupied.any(axis=1), last - first + 1, 0)

    return (
        plain
        & (total >= MIN_AREA_PX)
        & (size >= CLEAN_SHARE * total)
        & (extent(rows) < CLEAN_MAX_EXTENT * h)
        & (extent(cols) < CLEAN_MAX_EXTENT * w)
    )


def clean_object(frames: np.ndarray) -> tuple[bool, float]:
    """(T, H, W, 3) or (H, W, 3) uint8 -> (one clean object?, share of clean frames)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    share = float(clean_frame_mask(frames).mean())
    return share >= CLEAN_FRAMES, share


# ----------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=64)
def gaussian_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian blur along one axis (identity for sigma 0); rows sum to 1 at the edges.
    `M @ x` blurs x along that axis (the shape fit's templates, and `benchmarks.shape_reading`'s test blurs)."""
    if sigma == 0:
        return np.eye(n)
    i = np.arange(n)
    k = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return k / k.sum(axis=1, keepdims=True)


def shape_fit(alpha: np.ndarray) -> dict[str, float]:
    """(H, W) coverage -> per shape, how far alpha is from that shape (0 = exact; the lowest fits best).

    The shape is drawn with alpha's mass as its area and alpha's centroid as its centroid (a blur keeps
    both), blurred by each of BLUR_SIGMAS_PX; the fit is the least sum of squared differences over those
    blurs, divided by the mass so that it does not grow with the shape's size.
    """
    h, w = alpha.shape
    mass = float(alpha.sum())
    # Continuous coordinates: pixel i spans [i, i + 1), as `shape_coverage` draws.
    cx = float((alpha.sum(axis=0) * (np.arange(w) + 0.5)).sum() / mass)
    cy = float((alpha.sum(axis=1) * (np.arange(h) + 0.5)).sum() / mass)
    blurs = [(gaussian_blur_matrix(h, s), gaussian_blur_matrix(w, s)) for s in BLUR_SIGMAS_PX]
    fit = {}
    for shape in SHAPES:
        r = float(np.sqrt(mass / _AREA_PER_R2[shape]))
        drawn = shape_coverage(shape, (cx, cy - _CENTROID_BELOW_CENTRE[shape] * r), r, h, w)
        fit[shape] = min(float(((gy @ drawn @ gx.T - alpha) ** 2).sum()) for gy, gx in blurs) / mass
    return fit


def classify_shape(fit: dict[str, float]) -> str:
    """The shape that fits best."""
    return min(fit, key=fit.__getitem__)


def _chroma_luma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.asarray(rgb, dtype=np.float64)
    luma = rgb.mean(axis=-1, keepdims=True)
    return rgb - luma, luma


def nearest_colour(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """Palette name nearest to `rgb`: chroma distance + half the brightness difference."""
    names = list(PALETTE)
    pal_chroma, pal_luma = _chroma_luma(np.array([PALETTE[n] for n in names]))  # (P, 3), (P, 1)
    chroma, luma = _chroma_luma(np.asarray(rgb)[None])
    d = np.linalg.norm(pal_chroma - chroma, axis=-1) + 0.5 * np.abs(pal_luma - luma)[:, 0]
    return names[int(np.argmin(d))]


def _centroid(alpha: np.ndarray) -> tuple[float, float]:
    h, w = alpha.shape
    total = alpha.sum()
    return float((alpha.sum(axis=0) * np.arange(w)).sum() / total), float(
        (alpha.sum(axis=1) * np.arange(h)).sum() / total
    )


def motion_from_centroids(t: np.ndarray, xy: np.ndarray, num_frames: int) -> tuple[str, tuple[float, float]]:
    """Frame indices (N,), centroids (N, 2) -> (direction, (dx, dy) over the clip).

    A least-squares slope uses every frame, so one noisy frame cannot flip the direction.
    """
    tc = t - t.mean()
    slope = (tc[:, None] * (xy - xy.mean(axis=0))).sum(axis=0) / max((tc**2).sum(), 1e-9)  # (2,) px/frame
    dx, dy = (float(v) for v in slope * (num_frames - 1))
    if max(abs(dx), abs(dy)) < MIN_DISPLACEMENT_PX:
        return "static", (dx, dy)
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), (dx, dy)
    return ("down" if dy > 0 else "up"), (dx, dy)


# ----------------------------------------------------------------------------- public API


def detect(frames: np.ndarray) -> Detection:
    """(T, H, W, 3) or (H, W, 3) uint8 -> what the video shows."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    clean, clean_frames = clean_object(frames)
    shapes = _frame_shapes(frames)
    frame_colours = tuple(
        None if s is None else nearest_colour(np.median(s.core_rgb, axis=0)) for s in shapes
    )
    found = [(i, s) for i, s in enumerate(shapes) if s is not None]
    if not found:
        return Detection(None, None, None, 0, None, None, None, {}, clean, clean_frames, frame_colours)
    median_rgb = np.median(np.concatenate([s.core_rgb for _, s in found]), axis=0)
    fits = [shape_fit(s.alpha) for _, s in found]
    votes: dict[str, int] = {}
    for fit in fits:
        label = classify_shape(fit)
        votes[label] = votes.get(label, 0) + 1
    # Majority vote; ties go to the shape with the best median fit.
    median_fit = {shape: float(np.median([fit[shape] for fit in fits])) for shape in SHAPES}
    best = max(votes.values())
    tied = [s for s in SHAPES if votes.get(s) == best]
    shape = tied[0] if len(tied) == 1 else min(tied, key=median_fit.__getitem__)
    motion, displacement = None, None
    if len(found) >= 2:
        t = np.array([i for i, _ in found], dtype=np.float64)
        xy = np.array([_centroid(s.alpha) for _, s in found])
        motion, displacement = motion_from_centroids(t, xy, frames.shape[0])
    return Detection(
        colour=nearest_colour(median_rgb),
        shape=shape,
        motion=motion,
        frames_with_shape=len(found),
        median_rgb=tuple(int(round(v)) for v in median_rgb),
        shape_fit=median_fit,
        displacement=displacement,
        shape_votes=votes,
        clean=clean,
        clean_frames=clean_frames,
        frame_colours=frame_colours,
    )


_COLOUR_WORDS = {c: c for c in PALETTE} | {"violet": "purple"}
_SHAPE_LOOKUP = {w: s for s, words in SHAPE_WORDS.items() for w in words} | {
    "disk": "circle",
    "dot": "circle",
    "cube": "square",
    "rectangle": "square",
}
_MOTION_LOOKUP = {
    **{w: "left" for w in ("left", "leftward", "leftwards")},
    **{w: "right" for w in ("right", "rightward", "rightwards")},
    **{w: "up" for w in ("up", "upward", "upwards", "rising", "rises")},
    **{w: "down" for w in ("down", "downward", "downwards", "falling", "falls")},
}


def parse_caption(text: str) -> Attributes:
    """The first colour, shape and direction words in `text` (captions, synonyms, user prompts)."""
    words = re.findall(r"[a-z]+", text.lower())

    def first(lookup: dict[str, str]) -> str | None:
        return next((lookup[w] for w in words if w in lookup), None)

    return Attributes(colour=first(_COLOUR_WORDS), shape=first(_SHAPE_LOOKUP), motion=first(_MOTION_LOOKUP))


def unscored_note(prompt: str) -> str | None:
    """None when the prompt names a colour, a shape and a direction the detector knows; else one line saying
    which attributes go unscored and the words that would be read (the detector knows the synthetic world)."""
    want = parse_caption(prompt)
    vocab = {
        "colour": sorted(set(_COLOUR_WORDS)),
        "shape": sorted(set(_SHAPE_LOOKUP)),
        "motion": sorted(set(_MOTION_LOOKUP)),
    }
    missing = [name for name in vocab if getattr(want, name) is None]
    if not missing:
        return None
    words = "; ".join(f"{name}: {', '.join(vocab[name])}" for name in missing)
    return (
        f"prompt {prompt!r} names no {' / '.join(missing)} the detector knows, so that is not scored (only "
        f"'one clean object' and what it does name); words it reads: {words}"
    )


def adherence_of(want: Attributes, got: Detection) -> dict[str, bool | None]:
    """`clean` plus one entry per attribute the prompt names (None where it is silent). An attribute
    counts only on a video that shows one clean object: patch soup can average to any colour.
    `colour_every_frame`: clean, and every frame's shape reads as the asked colour (a colour seen only in
    stills may hold for the first frame and fade after it)."""
    result: dict[str, bool | None] = {"clean": got.clean}
    for name, wanted in (("colour", want.colour), ("shape", want.shape), ("motion", want.motion)):
        result[name] = None if wanted is None else got.clean and wanted == getattr(got, name)
    result["colour_every_frame"] = (
        None if want.colour is None else (got.clean and all(c == want.colour for c in got.frame_colours))
    )
    return result


def adherence(prompt: str, frames: np.ndarray) -> dict[str, bool | None]:
    """Does the video show what the prompt asks? See `adherence_of`."""
    return adherence_of(parse_caption(prompt), detect(frames))
