"""write_gallery: a self-contained index.html and a results.json that round-trips."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np

from pipelines.gallery import summarise_records, to_jsonable, write_gallery
from pipelines.media import encode_mp4_file, write_gif

RECORDS = [
    {
        "kind": "held-out",
        "prompts": ["a red circle moving left"],
        "file": "videos/a.mp4",
        "gif": "videos/a.gif",
        "seed": 0,
        "adherence": {"colour": True, "shape": False, "motion": 1.0},
        "request_seconds": 0.42,
    },
    {
        "kind": "held-out",
        "prompts": ["a green square moving up"],
        "file": "videos/b.mp4",
        "gif": "videos/b.gif",
        "seed": np.int64(1),
        "adherence": {"colour": np.float32(0.5), "shape": True, "motion": 0.0},
    },
    {"kind": "purple", "prompts": ["a purple <script>alert(1)</script> square"], "file": "videos/c.mp4"},
    {
        "kind": "story",
        "prompts": ["a blue circle", "a red square"],
        "file": "videos/d.mp4",
        "gif": "videos/d.gif",
        "segments": [[0, 9], [9, 13]],
        "adherence": [{"colour": True, "motion": True}, {"colour": False, "motion": True}],
    },
    {
        "kind": "story",
        "prompts": ["x", "y"],
        "file": "videos/e.gif",
        "segments": [{"prompt": "x", "start": 0, "end": 9}, {"prompt": "y", "start": 9, "end": 13}],
    },
]
SUMMARY = {
    "adherence": {"held-out": {"colour": 0.75, "shape": 0.5, "motion": 0.5, "all": None, "num_segments": 2}},
    "timings_s": {"prepare": 12.5, "total": 301.0},
    "tokenizer_eval": {"psnr": np.float64(24.1)},
    "config": "demo",
    "nested": {"a": {"b": {"c": 1}}},
}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_write_gallery(tmp_path):
    index, results = write_gallery(tmp_path / "out", RECORDS, "demo <run>", SUMMARY)
    assert index == tmp_path / "out" / "index.html" and results == tmp_path / "out" / "results.json"
    data = json.loads(results.read_text())
    assert data["title"] == "demo <run>" and len(data["records"]) == 5
    assert data["records"][1]["seed"] == 1 and data["summary"]["tokenizer_eval"]["psnr"] == 24.1

    page = index.read_text()
    parser = Tags()
    parser.feed(page)
    videos = [a for t, a in parser.tags if t == "video"]
    assert [v["src"] for v in videos] == ["videos/a.mp4", "videos/b.mp4", "videos/c.mp4", "videos/d.mp4"]
    assert all({"controls", "loop", "muted", "autoplay"} <= set(v) for v in videos)
    imgs = [a["src"] for t, a in parser.tags if t == "img"]
    # the GIFs as fallbacks inside <video>, and a GIF-only record as an <img>
    assert imgs == ["videos/a.gif", "videos/b.gif", "videos/d.gif", "videos/e.gif"]
    # self-contained: no external scripts, stylesheets or URLs
    assert not any(t in ("script", "link") for t, _ in parser.tags)
    assert not re.search(r"(https?:)?//[a-z]", page)
    # prompts are escaped, shown with segment frame ranges; marks and summary tables rendered
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "frames 9–12" in page and "a red square" in page
    assert page.count('class="ok">✓') >= 3 and 'class="bad">✗' in page
    for caption in ("summary", "videos by kind", "adherence", "timings_s", "tokenizer_eval"):
        assert f"<caption>{caption}</caption>" in page
    assert "301" in page and "24.10" in page and "&quot;c&quot;: 1" in page
    assert "demo &lt;run&gt;" in page


def test_summarise_records_means_per_kind():
    summary = summarise_records(to_jsonable(RECORDS))
    assert summary["held-out"] == {"videos": 2, "colour": 0.75, "shape": 0.5, "motion": 0.5}
    assert summary["story"] == {"videos": 2, "colour": 0.5, "motion": 1.0}
    assert summary["purple"] == {"videos": 1}


def test_gallery_with_real_media_and_no_summary(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    encode_mp4_file(frames, tmp_path / "videos" / "x.mp4", 8.0)
    write_gif(frames, tmp_path / "videos" / "x.gif", 8.0)
    index, results = write_gallery(
        tmp_path, [{"prompts": ["p"], "file": "videos/x.mp4", "gif": "videos/x.gif"}], "t"
    )
    page = index.read_text()
    assert 'src="videos/x.mp4"' in page and (tmp_path / page.split('src="')[1].split('"')[0]).exists()
    assert json.loads(results.read_text())["summary"] is None
    index, _ = write_gallery(tmp_path / "empty", [], "nothing")
    assert "No videos." in index.read_text()
