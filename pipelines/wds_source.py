"""Sources whose media stays where it is: WebDataset tars (img2dataset / video2dataset output) and
folders of media files with sidecar captions.

img2dataset and video2dataset write folders of uncompressed tars (`00000.tar`, ...) whose members follow
the WebDataset convention `<key>.<ext>`: `000000000.jpg` (or `.mp4`), `000000000.txt` (caption),
`000000000.json` (url, caption, status, width, height, ...), next to `00000_stats.json` and
`00000.parquet`, which describe the tar and are not read here.

Listing a source reads every tar's headers and its small `txt`/`json` members; the media stays in the
tar. A record points at its member with `tar+<tar uri>#<member name>`, and `read_tar_member` fetches just
that member later, with one ranged read, in whichever worker makes the shard. Every read of a tar, a
caption sidecar or a metadata table goes through `pipelines.fetch` under the job's `FetchPolicy` (address
checks on every redirect hop, local roots, size and time limits).

A folder source is listed with one recursive listing; its records are the media files' own URLs.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import fsspec
import pandas as pd

from pipelines.fetch import FetchError, FetchPolicy, fetch_bytes, fetch_range, fetch_size
from pipelines.ranged_file import open_ranged
from pipelines.shards import sanitize_key
from pipelines.sources import (
    SourceRecord,
    SourceSpec,
    dir_files,
    expand_uri,
    is_directory,
    json_value,
    path_part,
    text_value,
    with_scheme,
)

log = logging.getLogger(__name__)

TAR_URL_PREFIX = "tar+"
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
VIDEO_EXTS = frozenset({"mp4", "webm", "mkv", "mov", "avi"})
# Indexes of recently used tars, per process. prepare sorts records by key, and webdataset keys start
# with "<source>-<tar stem>-", so a shard's records come from one or two tars: a few entries suffice.
# An entry is (name -> (offset, size)) for ~10k members, i.e. around a megabyte at most.
_INDEX_CACHE_SIZE = 8
# Read-buffer size when walking a tar's headers. Remote files are read in blocks of this size, so the
# walk skips the data of members larger than a block (most videos) instead of downloading it, while
# image tars (tens of KB per member) still go in few, large requests.
_HEADER_WALK_BLOCK = 1 << 20
_TAR_LIST_THREADS = 8  # tars are listed concurrently: on gs:// each is a few sequential requests
# Folder sources: an optional table at the folder root mapping files to captions (Hugging Face
# ImageFolder calls it metadata.jsonl / metadata.csv, with a `file_name` column).
_FOLDER_TABLES = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")


@dataclass
class TarSample:
    """One `<key>.*` group of members in a tar."""

    key: str  # the WebDataset key: member name up to the first dot of its base name
    media: str | None = None  # member name of the image / video; None if the sample has neither
    kind: str | None = None  # "image" | "video" | None
    text: str | None = None  # the `.txt` member, decoded and stripped; None if absent
    meta: dict[str, Any] = field(default_factory=dict)  # the parsed `.json` member ({} if absent/bad)
    bad_json: bool = False  # a `.json` member that is not a JSON object


# --------------------------------------------------------------------------------------------- names
def media_kind(ext: str) -> str | None:
    """`"MP4" -> "video"`, `"jpg" -> "image"`, anything else -> None."""
    ext = ext.lower()
    if ext in VIDEO_EXTS:
        return "video"
    if ext in IMAGE_EXTS:
        return "image"
    return None


def split_member_name(name: str) -> tuple[str, str] | None:
    """`"a/000001.jpg" -> ("a/000001", "jpg")` (WebDataset: key = up to the first dot of the base name).

    Returns None for names without an extension (not part of any sample).
    """
    if name.startswith("./"):
        name = name[2:]
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        return None
    return (f"{head}/{stem}" if head else stem), ext


def tar_member_url(tar_uri: str, member: str) -> str:
    return f"{TAR_URL_PREFIX}{tar_uri}#{member}"


def is_tar_member_url(url: str) -> bool:
    return url.startswith(TAR_URL_PREFIX)


def split_tar_member_url(url: str) -> tuple[str, str]:
    """`"tar+gs://b/00000.tar#000000001.jpg" -> ("gs://b/00000.tar", "000000001.jpg")`."""
    if not is_tar_member_url(url):
        raise ValueError(f"{url!r} is not a tar member URL ('{TAR_URL_PREFIX}<tar uri>#<member>')")
    # rpartition: a tar path may contain '#', member names written by img2dataset/video2dataset do not
    tar_uri, sep, member = url[len(TAR_URL_PREFIX) :].rpartition("#")
    if not sep or not tar_uri or not member:
        raise ValueError(f"{url!r} is not a tar member URL ('{TAR_URL_PREFIX}<tar uri>#<member>')")
    return tar_uri, member


def _open_tar(f: IO[bytes], tar_uri: str) -> tarfile.TarFile:
    # "r:" (uncompressed only) is what makes this cheap: tarfile then seeks from header to header
    # instead of reading member data, and members can be fetched later by byte range.
    try:
        return tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError as e:
        raise ValueError(
            f"{tar_uri} is not an uncompressed tar ({e}); WebDataset sources must be plain .tar files"
        ) from e


def _members(tar: tarfile.TarFile, tar_uri: str) -> Iterator[tarfile.TarInfo]:
    """The file members of a tar, stopping where a truncated or corrupt tail begins (tarfile raises
    there, after the members before it were fine)."""
    while True:
        try:
            m = tar.next()
        except tarfile.ReadError as e:
            log.warning("%s: truncated or corrupt after member %d (%s)", tar_uri, len(tar.members), e)
            return
        if m is None:
            return
        if m.isfile():
            yield m


# --------------------------------------------------------------------------------------------- listing
def list_tar_samples(tar_uri: str, policy: FetchPolicy) -> tuple[list[TarSample], int]:
    """The samples of one tar, in member order, with their captions and json metadata read.

    Returns (samples, number of members cut off by the end of the file). A tar left truncated by an
    interrupted img2dataset run still lists its complete members; a sample whose media was cut off has
    `media=None`, like any sample without media.

    Members of one key need not be adjacent (img2dataset writes them adjacent, but nothing here relies
    on it). When a sample has several media members, a video wins over an image (a video dataset's
    sample may also carry a thumbnail).
    """
    groups: dict[str, dict[str, str]] = {}  # key -> ext -> member name
    payloads: dict[tuple[str, str], bytes] = {}
    truncated = 0
    total = fetch_size(tar_uri, policy)
    with open_ranged(tar_uri, policy, _HEADER_WALK_BLOCK) as f, _open_tar(f, tar_uri) as tar:
        for m in _members(tar, tar_uri):
            parsed = split_member_name(m.name)
            if parsed is None:
                continue
            key, ext = parsed
            members = groups.setdefault(key, {})
            if m.offset_data + m.size > total:
                truncated += 1  # the sample stays listed without this member (so counted if media)
                continue
            ext = ext.lower()
            members[ext] = m.name
            if ext in ("txt", "json"):
                fobj = tar.extractfile(m)
                payloads[(key, ext)] = fobj.read() if fobj is not None else b""
    out = []
    for key, members in groups.items():
        s = TarSample(key=key)
        videos = sorted(e for e in members if e in VIDEO_EXTS)
        images = sorted(e for e in members if e in IMAGE_EXTS)
        if videos or images:
            ext = (videos or images)[0]
            s.media, s.kind = members[ext], media_kind(ext)
        if (key, "txt") in payloads:
            s.text = payloads[(key, "txt")].decode("utf-8", errors="replace").strip()
        if (key, "json") in payloads:
            try:
                meta = json.loads(payloads[(key, "json")].decode("utf-8", errors="replace"))
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                s.meta = meta
            else:
                s.bad_json = True
        out.append(s)
    return out, truncated


# --------------------------------------------------------------------------------------------- reading
@functools.lru_cache(maxsize=_INDEX_CACHE_SIZE)
def tar_index(tar_uri: str, policy: FetchPolicy) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) for one tar; cached per process (LRU)."""
    index: dict[str, tuple[int, int]] = {}
    with open_ranged(tar_uri, policy, _HEADER_WALK_BLOCK) as f, _open_tar(f, tar_uri) as tar:
        for m in _members(tar, tar_uri):
            name = m.name[2:] if m.name.startswith("./") else m.name
            index[name] = (m.offset_data, m.size)
    return index


def read_tar_member(url: str, policy: FetchPolicy) -> bytes:
    """The bytes of one member of a tar, given its `tar+<tar uri>#<member>` URL, read under `policy`.

    Reads the tar's headers once per process (see `tar_index`), then the member with one ranged read.
    Raises FetchError for a tar the policy refuses or cannot fetch (reason "missing" for a missing tar,
    "too_large" for a member over `max_bytes`), FileNotFoundError for a missing member, ValueError when the
    tar is truncated or not a plain tar.
    """
    tar_uri, member = split_tar_member_url(url)
    index = tar_index(tar_uri, policy)
    if member not in index:
        raise FileNotFoundError(f"{url}: no member {member!r} in {tar_uri}")
    offset, size = index[member]
    if size > policy.max_bytes:
        detail = f"member is {size} bytes > max_bytes={policy.max_bytes}; raise prepare.fetch.max_bytes to allow it"
        raise FetchError("too_large", url, detail)
    data = fetch_range(tar_uri, policy, offset, offset + size)
    if len(data) != size:
        # tarfile stops quietly at a truncated end; the short read is where it shows
        raise ValueError(f"{url}: read {len(data)} of {size} bytes; the tar is truncated")
    return bytes(data)


# --------------------------------------------------------------------------------------------- records
def webdataset_tars(uri: str) -> list[str]:
    """The `.tar` files of a WebDataset source: a directory (its direct `.tar` children; the
    `*_stats.json` / `.parquet` files beside them are ignored), or a glob / brace list of tars."""
    tars: list[str] = []
    for u in expand_uri(uri):
        if path_part(u).lower().endswith(".tar"):
            tars.append(u)
        elif is_directory(u):
            found = [c for c in dir_files(u) if c.lower().endswith(".tar")]
            if not found:
                raise ValueError(
                    f"directory {u} (source {uri!r}) has no .tar files; for a folder of media files "
                    f"use 'folder:{u}'"
                )
            tars.extend(found)
        else:
            raise ValueError(f"{u} (source {uri!r}) is neither a .tar file nor a directory of them")
    return sorted(set(tars))


def _tar_stem(tar_uri: str) -> str:
    return re.sub(r"\.tar$", "", path_part(tar_uri).rsplit("/", 1)[-1], flags=re.IGNORECASE)


def webdataset_records(spec: SourceSpec, policy: FetchPolicy) -> tuple[list[SourceRecord], dict[str, int]]:
    """Records of img2dataset / video2dataset tars, plus counts (tars, samples without media, ...)."""
    assert spec.name is not None, "resolve_specs first"
    tars = webdataset_tars(spec.uri)
    with ThreadPoolExecutor(max_workers=max(1, min(_TAR_LIST_THREADS, len(tars)))) as pool:
        listings = list(pool.map(lambda t: list_tar_samples(t, policy), tars))
    out: list[SourceRecord] = []
    counts = {"files": len(tars), "dropped_no_media": 0, "truncated_members": 0, "bad_json": 0}
    for tar_uri, (samples, truncated) in zip(tars, listings, strict=True):
        if truncated:
            log.warning("source %s: %s is truncated; %d member(s) cut off", spec.name, tar_uri, truncated)
        counts["truncated_members"] += truncated
        stem = _tar_stem(tar_uri)
        for s in samples:
            counts["bad_json"] += s.bad_json
            if s.media is None:
                counts["dropped_no_media"] += 1
                continue
            caption = s.text if s.text is not None else text_value(s.meta.get("caption"))
            out.append(
                SourceRecord(
                    # "<name>-<tar stem>-<key>": sorting keeps one tar's records together
                    key=sanitize_key(f"{spec.name}-{stem}-{s.key}"),
                    url=tar_member_url(tar_uri, s.media),
                    caption=caption,
                    kind="video" if s.kind == "video" else "image",
                    source="webdataset",
                    source_key=f"{stem}/{s.key}",
                    meta=s.meta,
                    source_name=spec.name,
                    source_weight=spec.weight,
                )
            )
    return out, counts


# --------------------------------------------------------------------------------------------- folders
def _folder_table(like: str, root: str, names: set[str], policy: FetchPolicy) -> dict[str, dict[str, Any]]:
    """Relative file name -> row of the first metadata table found at the folder root ({} if none)."""
    for table in _FOLDER_TABLES:
        path = f"{root}/{table}"
        if path not in names:
            continue
        data = fetch_bytes(with_scheme(like, path), policy)
        if table.endswith(".jsonl"):
            rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        else:
            rows = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False).to_dict("records")
        out = {}
        for row in rows:
            file_col = next((c for c in ("file_name", "file", "path") if c in row), None)
            if file_col is None:
                raise ValueError(f"{path} needs a file_name column (found {sorted(row)})")
            out[posixpath.normpath(str(row[file_col]))] = row
        return out
    return {}


def _media_kind_of(path: str) -> str | None:
    return media_kind(posixpath.splitext(path)[1][1:])


def _folder_groups(uri: str) -> list[tuple[str, str, list[str], set[str]]]:
    """(uri style, root, media-or-other files, all names beside them) per folder of a source.

    A directory stands for everything under it; media files matched directly (`imgs/*.jpg`) are grouped
    by parent folder, whose listing (one request) says which sidecars exist.
    """
    groups = []
    loose: dict[str, tuple[str, fsspec.AbstractFileSystem, list[str]]] = {}  # parent URI -> files
    for entry in expand_uri(uri):
        fs, path = fsspec.core.url_to_fs(entry)
        if _media_kind_of(path) is None and fs.isdir(path):
            files = sorted(fs.find(path))
            groups.append((entry, path.rstrip("/"), files, set(files)))
        else:
            parent = posixpath.dirname(path)
            loose.setdefault(with_scheme(entry, parent), (entry, fs, []))[2].append(path)
    for entry, fs, files in loose.values():
        parent = posixpath.dirname(files[0])
        groups.append((entry, parent, files, set(fs.ls(parent, detail=False))))
    return groups


def folder_records(spec: SourceSpec, policy: FetchPolicy) -> tuple[list[SourceRecord], dict[str, int]]:
    """Images / videos under a folder (recursively; names starting with '.' skipped), each captioned by
    its `<stem>.txt` sidecar, else by the folder's metadata table (`file_name` + `caption`/`text`
    columns, other columns to meta), else "" (which prepare skips and counts)."""
    assert spec.name is not None, "resolve_specs first"
    out: list[SourceRecord] = []
    counts = {"files": 0}
    for like, root, files, names in _folder_groups(spec.uri):
        table = _folder_table(like, root, names, policy)
        rels = {p: p[len(root) :].lstrip("/") for p in files}
        # skip hidden files and folders (.DS_Store, macOS "._x.jpg" forks, .git)
        media = [
            p
            for p in files
            if _media_kind_of(p) and not any(part.startswith(".") for part in rels[p].split("/"))
        ]
        sidecars = [t for p in media if (t := posixpath.splitext(p)[0] + ".txt") in names]
        # Concurrent: on an object store each sidecar is a request. A sidecar the policy refuses (a symlink
        # out of the allowed folders) fails the listing with FetchError naming it.
        with ThreadPoolExecutor(max_workers=_TAR_LIST_THREADS) as pool:
            urls = [with_scheme(like, t) for t in sidecars]
            captions = dict(zip(sidecars, pool.map(fetch_bytes, urls, [policy] * len(urls)), strict=True))
        for p in media:
            rel = rels[p]
            row = dict(table.get(posixpath.normpath(rel), {}))
            cap_col = next((c for c in ("caption", "text") if c in row), None)
            txt = posixpath.splitext(p)[0] + ".txt"
            if txt in captions:
                caption = captions[txt].decode("utf-8", errors="replace").strip()
            else:
                caption = text_value(row.get(cap_col)) if cap_col else ""
            drop = (cap_col, "file_name", "file", "path")
            out.append(
                SourceRecord(
                    key=sanitize_key(f"{spec.name}-{posixpath.splitext(rel)[0]}"),
                    url=with_scheme(like, p),
                    caption=caption,
                    kind="video" if _media_kind_of(p) == "video" else "image",
                    source="folder",
                    source_key=rel,
                    meta={k: json_value(v) for k, v in row.items() if k not in drop},
                    source_name=spec.name,
                    source_weight=spec.weight,
                )
            )
        counts["files"] += len(media)
    return out, counts
