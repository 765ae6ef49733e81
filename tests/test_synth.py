"""pipelines.synth: the synthetic world's design invariants and its on-disk formats."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.detector import detect, parse_caption
from pipelines.media import decode_image, decode_video
from pipelines.synth import (
    BACKGROUND,
    HELD_OUT,
    MOTIONS,
    PALETTE,
    SHAPES,
    TRAIN_TRIPLES,
    VIDEO_COLOURS,
    SynthSummary,
    caption_for,
    image_caption_for,
    iso_duration,
    render_video,
    sample_motion_params,
    synthesize,
)

WEBVID_COLUMNS = ["videoid", "contentUrl", "duration", "page_dir", "name"]
LAION_COLUMNS = [
    "URL",
    "TEXT",
    "WIDTH",
    "HEIGHT",
    "similarity",
    "hash",
    "punsafe",
    "pwatermark",
    "LICENSE",
    "NSFW",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SynthSummary:
    # 50 videos = one seeded pass over the 50 training triples; 18 images = every colour x shape.
    return synthesize(tmp_path_factory.mktemp("synth"), num_videos=50, num_images=18, seed=0)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _local(uri: str) -> Path:
    assert uri.startswith("file:///")
    return Path(urlparse(uri).path)


# ----------------------------------------------------------------------------- design


def test_held_out_design() -> None:
    all_triples = set(itertools.product(VIDEO_COLOURS, SHAPES, MOTIONS))
    assert len(all_triples) == 60 and len(set(HELD_OUT)) == 10 and len(TRAIN_TRIPLES) == 50
    assert set(HELD_OUT) <= all_triples and set(TRAIN_TRIPLES) == all_triples - set(HELD_OUT)
    train = set(TRAIN_TRIPLES)
    for c, s, m in HELD_OUT:  # every pair of a held-out triple is still seen in training videos
        assert any(t[:2] == (c, s) for t in train)
        assert any(t[1:] == (s, m) for t in train)
        assert any((t[0], t[2]) == (c, m) for t in train)
    for axis, values in enumerate((VIDEO_COLOURS, SHAPES, MOTIONS)):
        assert {t[axis] for t in train} == set(values)


def test_purple_is_image_only() -> None:
    assert set(PALETTE) == set(VIDEO_COLOURS) | {"purple"} and "purple" not in VIDEO_COLOURS


def test_caption_templates_match_the_examples() -> None:
    assert caption_for("red", "circle", "left", 0, 0) == "a red circle moving left"
    assert caption_for("red", "circle", "left", 1, 1) == "a red ball moves to the left"
    assert caption_for("red", "circle", "left", 2, 2) == "a small red disc drifting leftward"
    assert caption_for("red", "circle", "left", 3, 0) == "red circle, moving left"
    assert caption_for("orange", "square", "up", 0, 1) == "an orange box moving up"
    assert image_caption_for("purple", "circle", 1, 1) == "a picture of a purple ball"
    assert image_caption_for("purple", "square", 2, 0) == "a purple square on a white background"


def test_iso_duration() -> None:
    assert iso_duration(3.0) == "PT00H00M03S"
    assert iso_duration(3725.9) == "PT01H02M05S"


def test_sampled_motion_keeps_the_shape_inside() -> None:
    rng = np.random.default_rng(0)
    for motion in MOTIONS * 50:
        p = sample_motion_params(rng, motion, num_frames=24, size=64)
        assert 7 <= p.radius <= 11 and 1.0 <= p.speed <= 1.5
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion]
        for t in (0, 23):
            x, y = p.start_xy[0] + dx * p.speed * t, p.start_xy[1] + dy * p.speed * t
            assert p.radius <= x <= 64 - p.radius and p.radius <= y <= 64 - p.radius


def test_render_video_moves_and_stays_inside() -> None:
    frames = render_video(
        "blue", "square", "right", num_frames=24, size=64, start_xy=(12.3, 30.6), radius=9.7, speed=1.5
    )
    assert frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1)
    assert (border == BACKGROUND).all()
    blue = (np.abs(frames.astype(int) - PALETTE["blue"]).max(-1) < 10).any(1)  # (T, W) columns with blue
    left_edges = blue.argmax(axis=1)
    assert left_edges[-1] - left_edges[0] == pytest.approx(1.5 * 23, abs=1)
    edges = frames[0][
        (frames[0] != BACKGROUND).any(-1) & (np.abs(frames[0].astype(int) - PALETTE["blue"]).max(-1) > 10)
    ]
    assert len(edges) > 0  # anti-aliased: blended pixels between shape and background exist


# ----------------------------------------------------------------------------- on disk


def test_webvid_csv_format(world: SynthSummary) -> None:
    with world.webvid_csv.open(newline="") as f:
        assert next(csv.reader(f)) == WEBVID_COLUMNS
    rows = _csv_rows(world.webvid_csv)
    assert len(rows) == world.num_videos == 50
    for row in rows:
        path = _local(row["contentUrl"])
        assert path.is_file() and path.parent == world.videos_dir and path.stem == row["videoid"]
        assert row["duration"] == "PT00H00M03S" and row["page_dir"] == "000001_000050"
    assert len({r["videoid"] for r in rows}) == 50


def test_laion_parquet_format(world: SynthSummary) -> None:
    table = pq.read_table(world.laion_parquet)
    assert table.column_names == LAION_COLUMNS and table.num_rows == world.num_images == 18
    rows = table.to_pylist()
    for row in rows:
        image = decode_image(str(_local(row["URL"])))
        assert image.shape == (row["HEIGHT"], row["WIDTH"], 3) == (64, 64, 3)
        assert 0 <= row["punsafe"] <= 1 and 0 <= row["pwatermark"] <= 1 and row["similarity"] > 0.28
    pairs = {(a.colour, a.shape) for a in (parse_caption(r["TEXT"]) for r in rows)}
    assert pairs == set(itertools.product(PALETTE, SHAPES))  # purple included, every shape


def test_videos_cover_training_triples_only(world: SynthSummary) -> None:
    triples = [
        (a.colour, a.shape, a.motion) for a in (parse_caption(r["name"]) for r in _csv_rows(world.webvid_csv))
    ]
    assert set(triples) == set(TRAIN_TRIPLES)  # one pass: each training triple once
    assert not set(triples) & set(HELD_OUT)
    assert all(c != "purple" for c, _, _ in triples)


def test_videos_show_their_captions(world: SynthSummary) -> None:
    for row in _csv_rows(world.webvid_csv)[:10]:
        video = decode_video(str(_local(row["contentUrl"])))
        assert video.frames.shape == (24, 64, 64, 3) and video.fps == 8.0
        want, got = parse_caption(row["name"]), detect(video.frames)
        assert (got.colour, got.shape, got.motion) == (want.colour, want.shape, want.motion)
        assert got.colour != "purple"


def test_same_seed_same_data_and_prefix_stable(world: SynthSummary, tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", num_videos=6, num_images=5, seed=0)
    # Same seed -> the same rows (up to the directory in the URIs) and the same decoded frames,
    # and item i does not depend on how many items were asked for.
    strip = lambda uri, root: uri.replace(root.as_uri(), "")  # noqa: E731
    rows_a = [{**r, "contentUrl": strip(r["contentUrl"], world.out_dir)} for r in _csv_rows(world.webvid_csv)]
    rows_b = [{**r, "contentUrl": strip(r["contentUrl"], again.out_dir)} for r in _csv_rows(again.webvid_csv)]
    assert rows_b == rows_a[:6]
    laion_a = pq.read_table(world.laion_parquet).to_pylist()[:5]
    laion_b = pq.read_table(again.laion_parquet).to_pylist()
    assert [{k: v for k, v in r.items() if k not in ("URL", "hash")} for r in laion_b] == [
        {k: v for k, v in r.items() if k not in ("URL", "hash")} for r in laion_a
    ]
    for name in sorted(p.name for p in again.videos_dir.glob("*.mp4")):
        a, b = (world.videos_dir / name).read_bytes(), (again.videos_dir / name).read_bytes()
        assert a == b
        np.testing.assert_array_equal(decode_video(a).frames, decode_video(b).frames)
    other = synthesize(tmp_path / "other", num_videos=6, num_images=0, seed=1)
    assert [r["name"] for r in _csv_rows(other.webvid_csv)] != [r["name"] for r in rows_a[:6]]
