"""Sources -> SourceRecords: WebVid CSV, LAION parquet, WebDataset tars, folders, specs, detection."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.fetch import FetchError, FetchPolicy
from pipelines.media import encode_mp4
from pipelines.sources import (
    SourceRecord,
    SourceSpec,
    detect_format,
    parse_source_spec,
    read_source,
    read_sources,
    read_sources_with_stats,
    resolve_specs,
    resolve_url,
    source_root,
    split_format_prefix,
)
from pipelines.wds_source import read_tar_member


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


# --------------------------------------------------------------------------------------------- helpers
def _jpg(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    """Members in the order given, as img2dataset writes them (`<key>.jpg`, `<key>.txt`, `<key>.json`)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sample(key: str, media: tuple[str, bytes] | None, caption: str | None, meta: dict | None):
    out = []
    if media is not None:
        out.append((f"{key}.{media[0]}", media[1]))
    if caption is not None:
        out.append((f"{key}.txt", caption.encode()))
    if meta is not None:
        out.append((f"{key}.json", json.dumps(meta).encode()))
    return out


def _img2dataset_out(root) -> dict[str, bytes]:
    """Two tars + the stats/parquet files beside them. Returns member name -> media bytes."""
    root.mkdir()
    media: dict[str, bytes] = {}
    members0, members1 = [], []
    for i, (color, caption) in enumerate([((255, 0, 0), "a red square"), ((0, 255, 0), "a green one")]):
        key = f"{i:09d}"
        media[f"{key}.jpg"] = _jpg(color)
        meta = {"url": f"http://x/{i}.jpg", "caption": caption, "key": key, "status": "success", "width": 8}
        members0 += _sample(key, ("jpg", media[f"{key}.jpg"]), caption, meta)
    # caption only in the json; then a sample whose download left no image (dropped, counted)
    media["000000002.jpg"] = _jpg((0, 0, 255))
    members0 += _sample("000000002", ("jpg", media["000000002.jpg"]), None, {"caption": " json caption "})
    members0 += _sample("000000003", None, "no image", {"caption": "no image"})
    media["000010000.png"] = b"\x89PNG fake"
    members1 += _sample("000010000", ("png", media["000010000.png"]), "second tar", {"width": 4})
    _write_tar(root / "00000.tar", members0)
    _write_tar(root / "00001.tar", members1)
    (root / "00000_stats.json").write_text(json.dumps({"count": 4, "successes": 3}))
    (root / "00001_stats.json").write_text(json.dumps({"count": 1, "successes": 1}))
    pd.DataFrame({"url": ["http://x/0.jpg"], "status": ["success"]}).to_parquet(root / "00000.parquet")
    return media


# --------------------------------------------------------------------------------------------- webdataset
def test_img2dataset_output_by_dir_glob_and_braces(tmp_path) -> None:
    out = tmp_path / "laion_wds"
    media = _img2dataset_out(out)
    recs, stats = read_sources_with_stats([str(out)])
    assert [r.key for r in recs] == [
        "webdataset-laion_wds-00000-000000000",
        "webdataset-laion_wds-00000-000000001",
        "webdataset-laion_wds-00000-000000002",
        "webdataset-laion_wds-00001-000010000",
    ]
    r0, r1, r2, r3 = recs
    assert r0.url == f"tar+{out}/00000.tar#000000000.jpg"
    assert r0.caption == "a red square" and r0.kind == "image" and r0.source == "webdataset"
    assert r0.source_key == "00000/000000000" and r0.source_name == "webdataset-laion_wds"
    assert r0.meta["url"] == "http://x/0.jpg" and r0.meta["width"] == 8
    assert r2.caption == "json caption"  # no .txt -> the json caption
    assert r3.url.endswith("00001.tar#000010000.png") and r3.kind == "image" and r3.meta == {"width": 4}
    assert r1.caption == "a green one"
    (st,) = stats
    assert st["format"] == "webdataset" and st["files"] == 2 and st["records"] == 4
    assert st["dropped_no_media"] == 1 and st["empty_caption"] == 0
    # a glob and a brace list name the same tars -> the same records (the _stats/.parquet files ignored)
    assert read_sources([f"{out}/*.tar"]) == recs
    assert read_sources([f"{out}/{{00000..00001}}.tar"]) == recs
    assert read_sources([f"webdataset:file://{out}"])[0].url == f"tar+file://{out}/00000.tar#000000000.jpg"
    policy = FetchPolicy(local_roots=(str(out),))
    for r in recs:
        assert read_tar_member(r.url, policy) == media[r.url.rsplit("#", 1)[1]]
    # prepare ships records to workers as asdict() JSON
    assert SourceRecord(**json.loads(json.dumps(dataclasses.asdict(r0)))) == r0


def test_read_tar_member_errors(tmp_path) -> None:
    out = tmp_path / "o"
    media = _img2dataset_out(out)
    url = f"tar+file://{out}/00000.tar#000000001.jpg"
    size = len(media["000000001.jpg"])
    assert (
        read_tar_member(url, FetchPolicy(max_bytes=size, local_roots=(str(out),))) == media["000000001.jpg"]
    )
    with pytest.raises(FetchError, match=re.escape(url)) as e:
        read_tar_member(url, FetchPolicy(max_bytes=size - 1, local_roots=(str(out),)))
    assert e.value.reason == "too_large"
    policy = FetchPolicy(local_roots=(str(out),))
    with pytest.raises(FileNotFoundError, match="000000009.jpg"):
        read_tar_member(f"tar+{out}/00000.tar#000000009.jpg", policy)
    with pytest.raises(FetchError) as e:
        read_tar_member(f"tar+{out}/00042.tar#000000000.jpg", policy)
    assert e.value.reason == "missing"
    with pytest.raises(ValueError, match="not a tar member URL"):
        read_tar_member(f"{out}/00000.tar", policy)
    with pytest.raises(ValueError, match="uncompressed tar"):
        read_tar_member(f"tar+{out}/00000_stats.json#x.jpg", policy)
    # a tar outside the allowed folders is refused before it is opened
    with pytest.raises(FetchError) as e:
        read_tar_member(url, FetchPolicy(local_roots=(str(tmp_path / "elsewhere"),)))
    assert e.value.reason == "blocked" and "local_roots" in e.value.detail


def test_truncated_tar_keeps_complete_samples(tmp_path) -> None:
    out = tmp_path / "t"
    _img2dataset_out(out)
    data = (out / "00000.tar").read_bytes()
    idx = data.index(b"000000002.jpg")  # header of the third image: cut inside its data
    (out / "00000.tar").write_bytes(data[: idx + 512 + 100])
    recs, (st,) = read_sources_with_stats([str(out)])
    assert [r.source_key for r in recs] == ["00000/000000000", "00000/000000001", "00001/000010000"]
    assert st["truncated_members"] == 1 and st["dropped_no_media"] == 1
    assert read_tar_member(recs[1].url, FetchPolicy(local_roots=(str(out),)))[:2] == b"\xff\xd8"


def test_video2dataset_output(tmp_path) -> None:
    out = tmp_path / "v2d"
    out.mkdir()
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    mp4s = [encode_mp4(frames + 40 * i, fps=8) for i in range(2)]
    members = []
    for i, mp4 in enumerate(mp4s):
        meta = {"url": f"http://v/{i}.mp4", "caption": f"clip {i}", "duration": 0.5, "status": "success"}
        members += _sample(f"{i:09d}", ("mp4", mp4), f"clip {i}", meta)
    _write_tar(out / "00000.tar", members)
    (out / "00000_stats.json").write_text("{}")
    recs = read_source(f"{out}/00000.tar::name=v2d::weight=2.5")
    assert [(r.key, r.kind, r.caption) for r in recs] == [
        ("v2d-00000-000000000", "video", "clip 0"),
        ("v2d-00000-000000001", "video", "clip 1"),
    ]
    assert recs[0].meta["duration"] == 0.5 and recs[1].source_weight == 2.5
    assert [read_tar_member(r.url, FetchPolicy(local_roots=(str(out),))) for r in recs] == mp4s


# --------------------------------------------------------------------------------------------- folders
def test_folder_source_with_sidecars(tmp_path) -> None:
    d = tmp_path / "media"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(_jpg((1, 2, 3)))
    (d / "a.txt").write_text("  caption a \n", encoding="utf-8")
    (d / "sub" / "b.mp4").write_bytes(b"mp4")
    (d / "sub" / "b.txt").write_text("caption b — ünïcode", encoding="utf-8")
    (d / "c.PNG").write_bytes(b"png")  # no sidecar -> empty caption (prepare skips and counts it)
    (d / "notes.md").write_text("not media")
    (d / ".DS_Store").write_bytes(b"x")
    (d / "._a.jpg").write_bytes(b"x")  # macOS resource fork
    recs, (st,) = read_sources_with_stats([str(d)])
    by_key = {r.source_key: r for r in recs}
    assert sorted(by_key) == ["a.jpg", "c.PNG", "sub/b.mp4"]
    a, b, c = by_key["a.jpg"], by_key["sub/b.mp4"], by_key["c.PNG"]
    assert a.key == "folder-media-a" and a.caption == "caption a" and a.kind == "image"
    assert a.url == f"{d}/a.jpg" and a.source == "folder" and a.meta == {}
    assert b.kind == "video" and b.caption == "caption b — ünïcode" and "/" not in b.key
    assert c.kind == "image" and c.caption == ""
    assert st["files"] == 3 and st["empty_caption"] == 1
    # a glob of media files still finds the sidecars beside them
    assert {r.caption for r in read_sources([f"folder:{d}/*.jpg"])} == {"caption a"}
    picked = read_sources([f"folder:{d}/{{a.jpg,c.PNG,sub/b.mp4}}"])
    assert sorted((r.source_key, r.caption) for r in picked) == [
        ("a.jpg", "caption a"),
        ("b.mp4", "caption b — ünïcode"),
        ("c.PNG", ""),
    ]


def test_folder_sidecar_symlinked_out_is_refused(tmp_path) -> None:
    """A caption sidecar that is a symlink out of the source's folder would copy that file into the dataset's
    captions: it is refused (before it is opened), naming the file and the setting that would allow it."""
    d, secret = tmp_path / "media", tmp_path / "secret.txt"
    d.mkdir()
    secret.write_text("api-key=hunter2")
    (d / "a.jpg").write_bytes(_jpg((1, 2, 3)))
    (d / "a.txt").symlink_to(secret)
    with pytest.raises(FetchError, match="local_roots") as e:
        read_sources([str(d)])
    assert e.value.reason == "blocked" and str(secret) in e.value.detail
    # naming the folder as a root makes it readable again
    (rec,) = read_sources([str(d)], policy=FetchPolicy(local_roots=(str(tmp_path),)))
    assert rec.caption == "api-key=hunter2"


def test_source_root(tmp_path) -> None:
    (tmp_path / "wds").mkdir()
    table = {
        f"{tmp_path}/lists/webvid.csv": f"{tmp_path}/lists",
        f"file://{tmp_path}/lists/webvid.csv": f"{tmp_path}/lists",
        str(tmp_path / "wds"): str(tmp_path / "wds"),  # a directory source is its own folder
        f"{tmp_path}/wds/{{00000..00009}}.tar": f"{tmp_path}/wds",
        f"{tmp_path}/*/part-*.parquet": str(tmp_path),
        "gs://b/webvid.csv": None,
        "https://h/list.csv": None,
    }
    for uri, root in table.items():
        assert source_root(uri) == root, uri


def test_folder_metadata_table(tmp_path) -> None:
    d = tmp_path / "hf"
    d.mkdir()
    for n in ("x.jpg", "y.jpg"):
        (d / n).write_bytes(b"jpg")
    (d / "y.txt").write_text("sidecar wins")
    rows = [{"file_name": "x.jpg", "text": "from table", "score": 0.5}, {"file_name": "y.jpg", "text": "t"}]
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    x, y = read_source(str(d))
    assert (x.caption, x.meta) == ("from table", {"score": 0.5})
    assert y.caption == "sidecar wins"


# --------------------------------------------------------------------------------------------- specs
def test_detect_format_table(tmp_path) -> None:
    wds, folder = tmp_path / "wds", tmp_path / "imgs"
    wds.mkdir()
    folder.mkdir()
    (wds / "00000.tar").write_bytes(b"")
    (folder / "a.jpg").write_bytes(b"")
    table = {
        "gs://b/webvid/part-*.csv": "webvid",
        "/d/results_2M_val.tsv": "webvid",
        "data/{a,b}.parquet": "laion",
        "https://h/x.pq?sig=1": "laion",
        "gs://b/out/*.tar": "webdataset",
        "shards/{00000..00009}.tar": "webdataset",
        "data/{a.csv,b.csv}": "webvid",
        str(wds): "webdataset",
        f"file://{wds}/": "webdataset",
        str(folder): "folder",
    }
    for uri, fmt in table.items():
        assert detect_format(uri) == fmt, uri
    for bad in ("gs://b/list.txt", f"{tmp_path}/missing", "data/{a.csv,b.parquet}", "out/*"):
        with pytest.raises(ValueError, match="prefix|mixes"):
            detect_format(bad)


def test_parse_source_spec_table() -> None:
    table = {
        "laion:gs://b/x.parquet::weight=0.1::name=laion-a": SourceSpec(
            "gs://b/x.parquet", "laion", 0.1, "laion-a"
        ),
        "gs://b/webvid/part-*.csv": SourceSpec("gs://b/webvid/part-*.csv"),
        "out/{00000..00009}.tar::name=wds": SourceSpec("out/{00000..00009}.tar", name="wds"),
        "folder:/data/imgs::weight=3": SourceSpec("/data/imgs", "folder", 3.0),
        "https://h/x.csv?a=b::weight=2": SourceSpec("https://h/x.csv?a=b", weight=2.0),
        "simplecache::gs://b/x.csv": SourceSpec("simplecache::gs://b/x.csv"),
    }
    for text, spec in table.items():
        assert parse_source_spec(text) == spec, text
        assert parse_source_spec(spec.to_text()) == spec
    for bad, msg in [
        ("x.csv::weight=0", "positive"),
        ("x.csv::weight=abc", "not a number"),
        ("x.csv::wieght=2", "unknown option"),
        ("x.csv::name=a::name=b", "twice"),
        ("x.csv::name=a.b", "letters"),
        ("wds:out/", "unknown source format"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_source_spec(bad)


def test_many_sources_names_and_weights(tmp_path) -> None:
    csv = _webvid_csv(tmp_path / "webvid.csv", [["1", "/v/1.mp4", "2", "d", "cap"]])
    (tmp_path / "laion").mkdir()
    pd.DataFrame({"URL": ["/i.jpg"], "TEXT": ["t"]}).to_parquet(tmp_path / "laion" / "part-0.parquet")
    specs = [f"{csv}::weight=0.5", csv, f"{tmp_path}/laion/*.parquet::weight=2::name=lai"]
    resolved = resolve_specs(specs)
    assert [(s.format, s.name, s.weight) for s in resolved] == [
        ("webvid", "webvid-webvid", 0.5),
        ("webvid", "webvid-webvid-2", 1.0),
        ("laion", "lai", 2.0),
    ]
    recs, stats = read_sources_with_stats(specs)
    assert [(r.source_name, r.source_weight) for r in recs] == [
        ("webvid-webvid", 0.5),
        ("webvid-webvid-2", 1.0),
        ("lai", 2.0),
    ]
    assert all("weight" not in r.meta for r in recs)
    assert [s["records"] for s in stats] == [1, 1, 1] and stats[2]["files"] == 1
    with pytest.raises(ValueError, match="unique"):
        resolve_specs([f"{csv}::name=a", f"{csv}::name=a"])
    # a directory of listings (LAION ships folders of parquet parts) needs its format named
    (lai,) = read_sources([f"laion:{tmp_path}/laion"])
    assert lai.caption == "t" and lai.source_name == "laion-laion"


def test_globs_matching_nothing_and_empty_sources(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path}/part-*.csv")):
        read_sources([f"{tmp_path}/part-*.csv"])
    (tmp_path / "a").mkdir()
    (tmp_path / "w").mkdir()
    _write_tar(tmp_path / "w" / "00000.tar", _sample("0", ("jpg", b"j"), "c", None))
    assert len(read_sources([f"{tmp_path}/{{w,w}}/*.tar"])) == 1  # expansions are deduplicated
    with pytest.raises(FileNotFoundError, match=r"b/\*\.tar"):
        read_sources([f"{tmp_path}/{{w,b}}/*.tar"])  # one alternative matching nothing
    _webvid_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="no usable rows"):
        read_sources([str(tmp_path / "empty.csv")])
    with pytest.raises(ValueError, match="no .tar files"):
        read_sources([f"webdataset:{tmp_path}/a"])
    with pytest.raises(ValueError, match="no usable rows"):
        read_sources([str(tmp_path / "a")])  # an empty folder


def test_a_listing_over_max_bytes_is_a_clear_error(tmp_path) -> None:
    from pipelines.fetch import FetchPolicy
    from pipelines.table_source import read_table

    listing = tmp_path / "list.csv"
    listing.write_text("videoid,contentUrl,name\n" + "1,a.mp4,a cat\n" * 100)
    with pytest.raises(ValueError, match=r"list.csv is too large to read: .*raise prepare.fetch.max_bytes"):
        read_table(str(listing), "webvid", FetchPolicy(max_bytes=100, local_roots=(str(tmp_path),)))
    assert len(read_table(str(listing), "webvid", FetchPolicy(local_roots=(str(tmp_path),)))) == 100
