"""`prepare` end to end on a real local Ray over every source kind: a bad-input corpus with exact counts,
img2dataset- and video2dataset-style WebDataset output, media folders, an HTTP source on a loopback server,
and gs:// (listing, media and output) against gcp-storage-emulator."""

from __future__ import annotations

import functools
import http.server
import io
import json
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.fetch import FetchError
from pipelines.media import encode_jpeg, encode_mp4
from pipelines.prepare import PrepareConfig, prepare
from pipelines.shards import list_shards, read_shard
from tests.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401

pytestmark = pytest.mark.ray
WEBVID_COLUMNS = ["videoid", "contentUrl", "duration", "page_dir", "name"]


def frames(t: int, seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(base[None, None] + (2 * x + 3 * y + 9 * i)[..., None]) % 256 for i in range(t)]).astype(
        np.uint8
    )


def good_mp4(seed: int) -> bytes:
    return encode_mp4(frames(16, seed), fps=8.0)


def jpeg(seed: int) -> bytes:
    return encode_jpeg(frames(1, seed, 40, 40)[0])


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/slow"):
            time.sleep(2.0)  # longer than the test's fetch timeout
        return super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A loopback HTTP server over tmp_path/www; yields (root dir, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def loopback_cfg(fetch: dict | None = None, **kw) -> PrepareConfig:
    fetch = {"allow_loopback": True, "timeout_s": 0.5, "retries": 0, **(fetch or {})}
    return PrepareConfig(
        **{"size": 32, "num_frames": 9, "samples_per_shard": 4, "num_workers": 2, "fetch": fetch, **kw}
    )


def test_bad_input_corpus_exact_counts(tmp_path, http_root, ray_local):
    """One row of every bad-input kind among good ones: exact sample and skip counts, nothing lost."""
    www, base = http_root
    media = tmp_path / "media"
    media.mkdir()
    (media / "good0.mp4").write_bytes(good_mp4(0))
    (media / "good1.mp4").write_bytes(good_mp4(1))
    (www / "good2.mp4").write_bytes(good_mp4(2))
    (www / "slow.mp4").write_bytes(good_mp4(3))
    full = good_mp4(4)
    (media / "truncated.mp4").write_bytes(full[: len(full) // 2])
    faststart = tmp_path / "faststart.mp4"  # moov first; cut where the frame data starts: zero frames left
    import av

    with av.open(str(faststart), mode="w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 48, 40, "yuv420p"
        for i, f in enumerate(frames(8, 5)):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode())
    data = faststart.read_bytes()
    (media / "zero_frames.mp4").write_bytes(data[: data.find(b"mdat") + 4])
    (media / "jpeg_named.mp4").write_bytes(jpeg(6))
    (media / "for_captions.mp4").write_bytes(good_mp4(7))
    rows = [
        ("1", str(media / "good0.mp4"), "a good video"),
        ("2", "good1.mp4", "a good video, relative URL"),
        ("3", f"{base}/good2.mp4", "a good video over http"),
        ("4", str(media / "missing.mp4"), "a missing file"),
        ("5", f"{base}/not-there.mp4", "a 404"),
        ("6", f"{base}/slow.mp4", "a timeout"),
        ("7", str(media / "truncated.mp4"), "a truncated mp4"),
        ("8", str(media / "zero_frames.mp4"), "a zero-frame video"),
        ("9", str(media / "jpeg_named.mp4"), "a JPEG named .mp4"),
        ("10", str(media / "for_captions.mp4"), ""),
        ("11", str(media / "for_captions.mp4"), "x" * 1_000_000),
    ]
    csv = media / "webvid.csv"
    body = pd.DataFrame([(i, u, "2", "d", c) for i, u, c in rows], columns=WEBVID_COLUMNS).to_csv(index=False)
    # and one caption that is not UTF-8 (Latin-1 bytes), written raw
    csv.write_bytes(
        body.encode() + b"12," + str(media / "for_captions.mp4").encode() + b",2,d,caf\xe9 au lait\n"
    )

    (media / "good.jpg").write_bytes(jpeg(8))
    (media / "corrupt.jpg").write_bytes(jpeg(9)[:200] + b"\x00" * 50)
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 400 M pixels in a few KB
    (media / "bomb.png").write_bytes(bomb.getvalue())
    pq = media / "laion.parquet"
    pd.DataFrame(
        {"URL": ["good.jpg", "corrupt.jpg", "bomb.png"], "TEXT": ["a still", "corrupt", "a bomb"]}
    ).to_parquet(pq)

    m = prepare([str(csv), str(pq)], str(tmp_path / "out"), loopback_cfg())
    assert m["counts"] == {"video": 3, "image": 1}
    assert m["skips"] == {
        "missing": 2,
        "timeout": 1,
        "undecodable": 3,
        "unexpected_format": 1,
        "empty_caption": 1,
        "caption_too_long": 1,
        "caption_not_utf8": 1,
        "too_many_pixels": 1,
    }
    # every input row is accounted for: a sample or a counted skip
    assert m["num_records"] == 15 == m["num_samples"] + sum(m["skips"].values())
    examples = {e["url"].rsplit("/", 1)[-1]: e["reason"] for e in m["skipped_examples"]}
    assert examples["bomb.png"] == "too_many_pixels" and examples["jpeg_named.mp4"] == "unexpected_format"
    assert examples["slow.mp4"] == "timeout" and examples["not-there.mp4"] == "missing"
    keys = [s["__key__"] for uri in list_shards(str(tmp_path / "out")) for s in read_shard(uri)]
    assert len(keys) == len(set(keys)) == 4


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_and_folder_sources_end_to_end(tmp_path, ray_local):
    """img2dataset-style (jpg) and video2dataset-style (mp4) tars made here, plus a media folder, weighted."""
    images, videos, folder = tmp_path / "img2dataset", tmp_path / "video2dataset", tmp_path / "folder"
    for d in (images, videos, folder):
        d.mkdir()
    for shard in range(2):
        members = []
        for i in range(3):
            key = f"{shard:05d}{i:04d}"
            members += [
                (f"{key}.jpg", jpeg(10 * shard + i)),
                (f"{key}.txt", f"still {shard}-{i}".encode()),
                (f"{key}.json", json.dumps({"key": key, "status": "success", "width": 40}).encode()),
            ]
        _tar(images / f"{shard:05d}.tar", members)
        (images / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": 3}))
        pd.DataFrame({"key": [f"{shard:05d}{i:04d}" for i in range(3)]}).to_parquet(
            images / f"{shard:05d}.parquet"
        )
    members = []
    for i in range(2):
        members += [
            (f"{i:09d}.mp4", good_mp4(20 + i)),
            (f"{i:09d}.txt", f"clip {i}".encode()),
            (f"{i:09d}.json", json.dumps({"url": f"https://example.com/{i}.mp4"}).encode()),
        ]
    members += [("000000009.txt", b"caption without media")]  # counted as no_media
    _tar(videos / "00000.tar", members)
    (folder / "a.mp4").write_bytes(good_mp4(30))
    (folder / "a.txt").write_text("a folder video")
    (folder / "b.jpg").write_bytes(jpeg(31))
    (folder / "b.txt").write_text("a folder still")

    sources = [
        f"{images}/{{00000..00001}}.tar::weight=0.1::name=laion-a",
        f"webdataset:{videos}::weight=0.8::name=videos",
        f"{folder}::weight=0.1",
    ]
    m = prepare(sources, str(tmp_path / "out"), PrepareConfig(size=32, num_frames=9, num_workers=2))
    assert m["counts"] == {"video": 3, "image": 7}
    assert m["skips"] == {"no_media": 1}
    by_name = {s["name"]: s for s in m["sources"]}
    assert by_name["laion-a"]["weight"] == 0.1 and by_name["videos"]["weight"] == 0.8
    samples = [s for uri in list_shards(str(tmp_path / "out")) for s in read_shard(uri)]
    metas = {s["txt"].decode(): json.loads(s["json"]) for s in samples}
    assert metas["still 1-2"]["source_name"] == "laion-a" and metas["still 1-2"]["source_weight"] == 0.1
    assert metas["clip 1"]["kind"] == "video" and metas["clip 1"]["meta"]["url"].endswith("/1.mp4")
    assert metas["a folder video"]["kind"] == "video" and metas["a folder still"]["kind"] == "image"


def test_http_source_needs_loopback_opt_in(tmp_path, http_root, ray_local):
    www, base = http_root
    for i in range(3):
        (www / f"v{i}.mp4").write_bytes(good_mp4(40 + i))
    rows = [
        (str(i), f"v{i}.mp4", "2", "d", f"http video {i}") for i in range(3)
    ]  # relative to the listing URL
    pd.DataFrame(rows, columns=WEBVID_COLUMNS).to_csv(www / "webvid.csv", index=False)
    with pytest.raises(FetchError, match="allow_loopback"):
        prepare([f"{base}/webvid.csv"], str(tmp_path / "refused"), PrepareConfig(size=32, num_frames=9))
    m = prepare([f"{base}/webvid.csv"], str(tmp_path / "out"), loopback_cfg())
    assert m["counts"] == {"video": 3, "image": 0} and m["skips"] == {}


def test_gcs_listing_media_and_output(gcs_emulator: GcsEmulator, ray_local):  # noqa: F811
    """Listing, media and shards all on gs:// (gcsfs against the emulator); Ray tasks get the storage env."""
    bucket = gcs_emulator.make_bucket("phenaki-prepare")
    fs = gcs_emulator.filesystem()
    rows = []
    for i in range(3):
        fs.pipe(f"{bucket}/media/v{i}.mp4", good_mp4(50 + i))
        rows.append((str(i), f"media/v{i}.mp4", "2", "d", f"gcs video {i}"))
    fs.pipe(f"{bucket}/webvid.csv", pd.DataFrame(rows, columns=WEBVID_COLUMNS).to_csv(index=False).encode())
    cfg = PrepareConfig(size=32, num_frames=9, samples_per_shard=2, num_workers=2)
    m = prepare([f"gs://{bucket}/webvid.csv"], f"gs://{bucket}/clips", cfg)
    assert m["counts"] == {"video": 3, "image": 0} and m["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    assert json.loads(fs.cat(f"{bucket}/clips/manifest.json")) == m
    keys = [s["__key__"] for uri in list_shards(f"gs://{bucket}/clips") for s in read_shard(uri)]
    assert len(keys) == 3
    assert prepare([f"gs://{bucket}/webvid.csv"], f"gs://{bucket}/clips", cfg) == m  # idempotent rerun


def test_local_paths_outside_the_listing_folder_are_counted_blocked(tmp_path, ray_local):
    """A listing naming files outside its own folder gets them refused and counted (reason 'blocked'),
    unless the user names their folder in `fetch.local_roots`."""
    lists, elsewhere = tmp_path / "lists", tmp_path / "elsewhere"
    lists.mkdir()
    elsewhere.mkdir()
    (lists / "good.mp4").write_bytes(good_mp4(60))
    (elsewhere / "extra.mp4").write_bytes(good_mp4(61))
    (elsewhere / "target.mp4").write_bytes(good_mp4(62))
    (lists / "link.mp4").symlink_to(elsewhere / "target.mp4")
    rows = [
        ("1", "good.mp4", "beside the listing"),
        ("2", "file:///etc/passwd", "an absolute file URL"),
        ("3", "../../../../../../../../etc/passwd", "climbing out"),
        ("4", "/proc/self/environ", "the worker's environment"),
        ("5", "link.mp4", "a symlink out of the folder"),
        ("6", str(elsewhere / "extra.mp4"), "another folder"),
    ]
    csv = lists / "webvid.csv"
    pd.DataFrame([(i, u, "2", "d", c) for i, u, c in rows], columns=WEBVID_COLUMNS).to_csv(csv, index=False)

    m = prepare([str(csv)], str(tmp_path / "out"), loopback_cfg())
    assert m["counts"] == {"video": 1, "image": 0} and m["skips"] == {"blocked": 5}
    details = {e["url"]: e["detail"] for e in m["skipped_examples"]}
    assert "outside the allowed folders" in details["file:///etc/passwd"]
    assert "pseudo-file" in details["/proc/self/environ"]
    assert "through a symlink" in details[str(lists / "link.mp4")]
    assert m["config"]["fetch"]["local_roots"] == [str(lists)]  # the listing's own folder, recorded

    m = prepare([str(csv)], str(tmp_path / "out2"), loopback_cfg(fetch={"local_roots": [str(elsewhere)]}))
    assert m["counts"] == {"video": 3, "image": 0} and m["skips"] == {"blocked": 3}
    assert m["config"]["fetch"]["local_roots"] == [str(elsewhere), str(lists)]
    with pytest.raises(ValueError, match="local_roots"):
        PrepareConfig(fetch={"local_roots": ["relative/media"]})
