"""The synthetic world: coloured shapes moving on a plain background, written as real source data.

Videos are H.264 MP4s listed in a WebVid-style CSV; stills are JPEGs listed in a LAION-style
parquet, so the same download -> decode -> shard pipeline runs on them as on the real data sets.
Everything is a function of `seed`.

The world is small enough that a deterministic detector (pipelines/detector.py) can check whether a
generated video shows what its prompt asked for, and it is built to test generalisation:
- purple appears only in stills, never in videos (can a model move a colour it only saw still?);
- `HELD_OUT` colour/shape/motion triples appear in no video, although each of their pairs does
  (can a model compose attributes it saw only separately?).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipelines.media import encode_jpeg, encode_mp4

RGB = tuple[int, int, int]
Triple = tuple[str, str, str]  # (colour, shape, motion)

BACKGROUND: RGB = (245, 245, 245)
PALETTE: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "orange": (240, 140, 30),
    "purple": (150, 60, 200),
}
IMAGE_ONLY_COLOURS: tuple[str, ...] = ("purple",)
VIDEO_COLOURS: tuple[str, ...] = tuple(c for c in PALETTE if c not in IMAGE_ONLY_COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down")

# Ten of the 5 x 3 x 4 = 60 video triples, never rendered as video. Triple i is
# (VIDEO_COLOURS[i % 5], SHAPES[i % 3], MOTIONS[i % 4]) for i = 0..9: by the Chinese remainder
# theorem the ten are distinct, and no two share a (colour, shape), (shape, motion) or
# (colour, motion) pair (i mod 15, 12, 20 are all distinct for i < 10), so every pair of every
# held-out triple still occurs in training videos, and every colour, shape and motion does too.
HELD_OUT: tuple[Triple, ...] = (
    ("red", "circle", "left"),
    ("green", "square", "right"),
    ("blue", "triangle", "up"),
    ("yellow", "circle", "down"),
    ("orange", "square", "left"),
    ("red", "triangle", "right"),
    ("green", "circle", "up"),
    ("blue", "square", "down"),
    ("yellow", "triangle", "left"),
    ("orange", "circle", "right"),
)
TRAIN_TRIPLES: tuple[Triple, ...] = tuple(
    t for t in itertools.product(VIDEO_COLOURS, SHAPES, MOTIONS) if t not in HELD_OUT
)

# ----------------------------------------------------------------------------- captions

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
# Per motion: bare direction, adverb, and the phrase after "moves"/"slides".
_MOTION_WORDS: dict[str, tuple[str, str, str]] = {
    "left": ("left", "leftward", "to the left"),
    "right": ("right", "rightward", "to the right"),
    "up": ("up", "upward", "up"),
    "down": ("down", "downward", "down"),
}
VIDEO_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape} moving {dir}",
    "{a} {colour} {shape} moves {to}",
    "a small {colour} {shape} drifting {adv}",
    "{colour} {shape}, moving {dir}",
    "the {colour} {shape} slides {to}",
    "{a} {colour} {shape} travelling {adv} across the frame",
)
IMAGE_TEMPLATES: tuple[str, ...] = (
    "{a} {colour} {shape}",
    "a picture of {a} {colour} {shape}",
    "{a} {colour} {shape} on a white background",
    "a photo of {a} {colour} {shape}",
    "{colour} {shape}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(colour: str, shape: str, motion: str, template_index: int, synonym_index: int = 0) -> str:
    """Video caption, e.g. (red, circle, left, 2, 2) -> "a small red disc drifting leftward"."""
    words = SHAPE_WORDS[shape]
    direction, adverb, to = _MOTION_WORDS[motion]
    template = VIDEO_TEMPLATES[template_index % len(VIDEO_TEMPLATES)]
    noun = words[synonym_index % len(words)]
    return template.format(a=_article(colour), colour=colour, shape=noun, dir=direction, adv=adverb, to=to)


def image_caption_for(colour: str, shape: str, template_index: int, synonym_index: int = 0) -> str:
    """Still caption, e.g. (purple, circle, 1, 1) -> "a picture of a purple ball"."""
    words = SHAPE_WORDS[shape]
    template = IMAGE_TEMPLATES[template_index % len(IMAGE_TEMPLATES)]
    return template.format(a=_article(colour), colour=colour, shape=words[synonym_index % len(words)])


# ----------------------------------------------------------------------------- rendering

_SUPERSAMPLE = 4  # draw at 4x and box-filter down: anti-aliased edges, quarter-pixel positions
_DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class MotionParams:
    start_xy: tuple[float, float]  # shape centre at frame 0, pixels (x right, y down)
    radius: float  # half the shape's width (and height), pixels
    speed: float  # pixels per frame along the motion direction


def sample_motion_params(
    rng: np.random.Generator, motion: str, *, num_frames: int, size: int
) -> MotionParams:
    """Random size, speed and start so the whole shape stays inside the frame on every frame.

    Radius 7-11 px and speed 1-1.5 px/frame at size 64 (scaled with `size`); the speed is capped
    when `num_frames` is too long for the shape to cross the frame at that speed.
    """
    scale = size / 64
    radius = float(rng.uniform(7.0, 11.0) * scale)
    margin = 1.0 * scale
    room = size - 2 * (radius + margin)  # range of centre positions that keep the shape inside
    speed = float(rng.uniform(1.0, 1.5) * scale)
    speed = min(speed, room / max(num_frames - 1, 1))
    travel = speed * (num_frames - 1)
    lo = radius + margin
    dx, dy = _DIRECTIONS[motion]
    along = lo + (travel if (dx + dy) < 0 else 0.0) + rng.uniform(0.0, room - travel)
    across = lo + rng.uniform(0.0, room)
    start = (along, across) if dx != 0 else (across, along)
    return MotionParams(start_xy=(float(start[0]), float(start[1])), radius=radius, speed=speed)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: RGB | int
) -> None:
    """Draws one shape centred at (cx, cy) with half-width r, all in supersampled pixels."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=fill)
    elif shape == "triangle":
        # Upright isoceles: apex at top centre, base along the bottom; as wide as it is tall.
        draw.polygon(((cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_frame(
    colour: str, shape: str, center_xy: tuple[float, float], radius: float, size: int
) -> np.ndarray:
    """One (size, size, 3) uint8 frame: the shape centred at `center_xy` on BACKGROUND."""
    s = _SUPERSAMPLE
    canvas = Image.new("RGB", (size * s, size * s), BACKGROUND)
    cx, cy = center_xy
    _draw_shape(ImageDraw.Draw(canvas), shape, cx * s, cy * s, radius * s, PALETTE[colour])
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))


def shape_coverage(
    shape: str, center_xy: tuple[float, float], radius: float, height: int, width: int
) -> np.ndarray:
    """(height, width) float32 in [0, 1]: the share of each pixel the shape covers, drawn exactly as
    `render_frame` draws it (same geometry, same supersampling), so a reader can fit it to a frame."""
    s = _SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    cx, cy = center_xy
    _draw_shape(ImageDraw.Draw(canvas), shape, cx * s, cy * s, radius * s, 255)
    return np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float32) / 255.0


def render_video(
    colour: str,
    shape: str,
    motion: str,
    *,
    num_frames: int = 24,
    size: int = 64,
    start_xy: tuple[float, float],
    radius: float,
    speed: float,
) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: the shape moving at constant velocity `speed` px/frame."""
    dx, dy = _DIRECTIONS[motion]
    x0, y0 = start_xy
    return np.stack(
        [
            render_frame(colour, shape, (x0 + dx * speed * t, y0 + dy * speed * t), radius, size)
            for t in range(num_frames)
        ]
    )


def sample_video(
    rng: np.random.Generator, colour: str, shape: str, motion: str, *, num_frames: int = 24, size: int = 64
) -> np.ndarray:
    """(num_frames, size, size, 3) uint8 ground-truth video with random placement, size and speed."""
    p = sample_motion_params(rng, motion, num_frames=num_frames, size=size)
    return render_video(
        colour,
        shape,
        motion,
        num_frames=num_frames,
        size=size,
        start_xy=p.start_xy,
        radius=p.radius,
        speed=p.speed,
    )


def render_image(
    colour: str,
    shape: str,
    *,
    size: int = 64,
    center_xy: tuple[float, float] | None = None,
    radius: float | None = None,
) -> np.ndarray:
    """(size, size, 3) uint8 still; defaults to a centred shape of radius size * 9/64."""
    radius = size * 9 / 64 if radius is None else radius
    center_xy = (size / 2, size / 2) if center_xy is None else center_xy
    return render_frame(colour, shape, center_xy, radius, size)


def sample_image_params(rng: np.random.Generator, *, size: int) -> tuple[tuple[float, float], float]:
    """Random (centre, radius) for a still, shape wholly inside the frame."""
    p = sample_motion_params(rng, "right", num_frames=1, size=size)
    return p.start_xy, p.radius


# ----------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class SynthSummary:
    out_dir: Path
    webvid_csv: Path  # columns: videoid, contentUrl, duration, page_dir, name
    laion_parquet: (
        Path  # columns: URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark, LICENSE, NSFW
    )
    videos_dir: Path
    images_dir: Path
    num_videos: int
    num_images: int
    seed: int


WEBVID_COLUMNS: tuple[str, ...] = ("videoid", "contentUrl", "duration", "page_dir", "name")
LAION_SCHEMA = pa.schema(
    [
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("WIDTH", pa.int64()),
        ("HEIGHT", pa.int64()),
        ("similarity", pa.float64()),
        ("hash", pa.int64()),
        ("punsafe", pa.float64()),
        ("pwatermark", pa.float64()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
    ]
)
_FIRST_VIDEO_ID = 1_000_000  # WebVid ids are integers; a fixed width keeps file names sortable
_VIDEO_STREAM, _IMAGE_STREAM, _ORDER_STREAM = 0, 1, 2  # independent seed streams per purpose


def _rng(seed: int, *keys: int) -> np.random.Generator:
    # One generator per item: item i is the same whatever num_videos/num_images is asked for.
    return np.random.default_rng([seed, *keys])


def _balanced(items: tuple, seed: int, stream: int, index: int):
    """items[...] for position `index`: each consecutive block of len(items) is a seeded permutation,
    so every item appears equally often (within one) whatever the count."""
    block, pos = divmod(index, len(items))
    return items[int(_rng(seed, _ORDER_STREAM, stream, block).permutation(len(items))[pos])]


def iso_duration(seconds: float) -> str:
    """WebVid's duration format, whole seconds: 3.0 -> "PT00H00M03S"."""
    s = int(seconds)
    return f"PT{s // 3600:02d}H{s % 3600 // 60:02d}M{s % 60:02d}S"


def _stable_hash(text: str) -> int:
    # LAION's `hash` is a signed 64-bit hash of the URL and caption; Python's hash() is salted per run.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_videos(
    videos_dir: Path, csv_path: Path, n: int, seed: int, num_frames: int, size: int, fps: int
) -> None:
    rows = []
    for i in range(n):
        colour, shape, motion = _balanced(TRAIN_TRIPLES, seed, _VIDEO_STREAM, i)
        rng = _rng(seed, _VIDEO_STREAM, i)
        # Frames first, then caption: the draw order fixes what each seed produces.
        frames = sample_video(rng, colour, shape, motion, num_frames=num_frames, size=size)
        template, synonym = int(rng.integers(len(VIDEO_TEMPLATES))), int(rng.integers(3))
        caption = caption_for(colour, shape, motion, template, synonym)
        videoid = _FIRST_VIDEO_ID + i
        path = videos_dir / f"{videoid}.mp4"
        _atomic_write(path, encode_mp4(frames, fps))
        page = i // 50 * 50  # WebVid groups results pages of 50, e.g. "000001_000050"
        page_dir = f"{page + 1:06d}_{page + 50:06d}"
        rows.append((videoid, path.as_uri(), iso_duration(num_frames / fps), page_dir, caption))
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(WEBVID_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def _write_images(images_dir: Path, parquet_path: Path, n: int, seed: int, size: int) -> None:
    pairs = tuple(itertools.product(PALETTE, SHAPES))  # all 6 colours x 3 shapes, purple included
    cols: dict[str, list] = {name: [] for name in LAION_SCHEMA.names}
    for i in range(n):
        colour, shape = _balanced(pairs, seed, _IMAGE_STREAM, i)
        rng = _rng(seed, _IMAGE_STREAM, i)
        center, radius = sample_image_params(rng, size=size)
        caption = image_caption_for(
            colour, shape, int(rng.integers(len(IMAGE_TEMPLATES))), int(rng.integers(3))
        )
        path = images_dir / f"{i:06d}.jpg"
        _atomic_write(
            path, encode_jpeg(render_image(colour, shape, size=size, center_xy=center, radius=radius))
        )
        uri = path.as_uri()
        # Plausible LAION metadata: CLIP similarity above LAION's 0.28 cut, low unsafe/watermark scores.
        row = {
            "URL": uri, "TEXT": caption, "WIDTH": size, "HEIGHT": size,
            "similarity": round(float(rng.uniform(0.28, 0.42)), 6), "hash": _stable_hash(uri + caption),
            "punsafe": round(float(rng.uniform(0.0, 0.05)), 6), "pwatermark": round(float(rng.uniform(0.0, 0.2)), 6),
            "LICENSE": "?", "NSFW": "UNLIKELY",
        }  # fmt: skip
        for name, value in row.items():
            cols[name].append(value)
    tmp = parquet_path.with_name(f".{parquet_path.name}.tmp")
    pq.write_table(pa.table(cols, schema=LAION_SCHEMA), tmp)
    os.replace(tmp, parquet_path)


def synthesize(
    out_dir: str | os.PathLike,
    num_videos: int = 100,
    num_images: int = 100,
    seed: int = 0,
    num_frames: int = 24,
    size: int = 64,
    fps: int = 8,
) -> SynthSummary:
    """Writes the synthetic source data under `out_dir` and returns where it is.

    out_dir/videos/<videoid>.mp4 + out_dir/webvid.csv (videos cycle through TRAIN_TRIPLES in
    seeded order), out_dir/images/<index>.jpg + out_dir/laion.parquet (all colour x shape pairs),
    and out_dir/synth.json recording the arguments and the held-out triples. `size` must be even.
    """
    out = Path(out_dir).resolve()
    summary = SynthSummary(
        out_dir=out, webvid_csv=out / "webvid.csv", laion_parquet=out / "laion.parquet",
        videos_dir=out / "videos", images_dir=out / "images",
        num_videos=num_videos, num_images=num_images, seed=seed,
    )  # fmt: skip
    summary.videos_dir.mkdir(parents=True, exist_ok=True)
    summary.images_dir.mkdir(parents=True, exist_ok=True)
    _write_videos(summary.videos_dir, summary.webvid_csv, num_videos, seed, num_frames, size, fps)
    _write_images(summary.images_dir, summary.laion_parquet, num_images, seed, size)
    meta = {
        "seed": seed, "num_videos": num_videos, "num_images": num_images, "num_frames": num_frames,
        "size": size, "fps": fps, "held_out": [list(t) for t in HELD_OUT],
        "image_only_colours": list(IMAGE_ONLY_COLOURS),
    }  # fmt: skip
    _atomic_write(out / "synth.json", json.dumps(meta, indent=2).encode())
    return summary
