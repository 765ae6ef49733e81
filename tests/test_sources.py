"""Source listings -> SourceRecords: WebVid CSV, LAION parquet, URL resolution, format detection."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.sources import (
    detect_format,
    read_source,
    read_sources,
    resolve_url,
    split_format_prefix,
)


def _webvid_csv(path, rows) -> str:
    pd.DataFrame(rows, columns=["videoid", "contentUrl", "duration", "page_dir", "name"]).to_csv(
        path, index=False
    )
    return str(path)


def test_webvid_csv(tmp_path) -> None:
    (tmp_path / "videos").mkdir()
    uri = _webvid_csv(
        tmp_path / "webvid.csv",
        [
            ["000123", "videos/a.mp4", "PT00H00M05S", "dir1", "A cat jumps"],
            ["456", f"file://{tmp_path}/videos/b.mp4", "3.5", "dir2", "  A dog runs  "],
            ["789", "/abs/c.mp4", "2", "dir3", ""],
        ],
    )
    recs = read_source(uri)
    assert [r.source_key for r in recs] == ["000123", "456", "789"]  # ids stay strings
    a, b, c = recs
    assert a.key == "webvid-000123" and a.kind == "video" and a.source == "webvid"
    assert a.url == f"{tmp_path}/videos/a.mp4"  # relative -> next to the CSV
    assert b.url == f"file://{tmp_path}/videos/b.mp4" and b.caption == "A dog runs"
    assert c.url == "/abs/c.mp4" and c.caption == ""
    assert a.meta == {"duration": "PT00H00M05S", "page_dir": "dir1"}
    assert b.meta["duration"] == 3.5


def test_laion_parquet(tmp_path) -> None:
    df = pd.DataFrame(
        {
            "URL": ["imgs/0.jpg", "http://example.com/x.png"],
            "TEXT": ["a red ball", None],
            "WIDTH": [640, 320],
            "HEIGHT": [480, None],
            "similarity": [0.31, 0.29],
        }
    )
    path = tmp_path / "laion.parquet"
    df.to_parquet(path)
    recs = read_source("file://" + str(path))
    assert len(recs) == 2
    r0, r1 = recs
    assert r0.kind == "image" and r0.source == "laion" and r0.source_key == "laion-000000000"
    assert r0.url == f"file://{tmp_path}/imgs/0.jpg"
    assert r0.caption == "a red ball" and r1.caption == ""  # missing caption -> "" (skipped later)
    assert r0.meta == {"WIDTH": 640, "HEIGHT": 480.0, "similarity": 0.31}
    assert r1.meta["HEIGHT"] is None  # NaN -> None keeps meta JSON-safe
    assert r1.url == "http://example.com/x.png"
    assert "." not in r0.key and "/" not in r0.key


def test_lowercase_laion_columns_and_override(tmp_path) -> None:
    path = tmp_path / "list.csv"
    pd.DataFrame({"url": ["/a.jpg"], "caption": ["hi"], "key": ["k0"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="video id"):
        read_source(str(path))  # .csv means webvid by default
    recs = read_source(f"laion:{path}")
    assert recs[0].kind == "image" and recs[0].caption == "hi" and recs[0].meta == {"key": "k0"}
    assert read_source(str(path), fmt="laion") == recs
    assert len(read_sources([f"laion:{path}", f"laion:{path}"])) == 2


def test_detect_format_and_prefix() -> None:
    assert detect_format("gs://b/x/webvid.csv") == "webvid"
    assert detect_format("https://h/p/part-0.parquet?sig=1") == "laion"
    with pytest.raises(ValueError, match="prefix"):
        detect_format("gs://b/list.txt")
    assert split_format_prefix("laion:gs://b/x.csv") == ("laion", "gs://b/x.csv")
    assert split_format_prefix("gs://b/x.csv") == (None, "gs://b/x.csv")
    assert split_format_prefix("/tmp/x.csv") == (None, "/tmp/x.csv")


def test_resolve_url() -> None:
    assert resolve_url("v/a.mp4", "gs://bucket/data/webvid.csv") == "gs://bucket/data/v/a.mp4"
    assert resolve_url("../v/a.mp4", "/data/lists/webvid.csv") == "/data/v/a.mp4"
    assert resolve_url("a.mp4", "webvid.csv") == "a.mp4"
    assert resolve_url("https://x/a.mp4", "gs://b/w.csv") == "https://x/a.mp4"
    assert resolve_url("/abs/a.mp4", "gs://b/w.csv") == "/abs/a.mp4"
