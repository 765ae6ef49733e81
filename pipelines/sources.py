"""Read source listings (WebVid CSV, LAION parquet) into `SourceRecord`s.

Listings are small tables of URLs and captions; the media bytes are fetched later, per shard, by
`pipelines.prepare`. Every listing and media URL goes through fsspec, so local paths, file://, gs://
and http(s):// all work.

A format is picked from the listing's extension (`.csv` -> webvid, `.parquet` -> laion) or forced,
either with `fmt=` or with a `"<fmt>:"` prefix on the URI (`"laion:gs://bucket/part-0.csv"`), which
lets a CLI take a plain list of strings.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd

from pipelines.shards import sanitize_key

Kind = Literal["video", "image"]
FORMATS = ("webvid", "laion")
_FORMAT_BY_EXT = {".csv": "webvid", ".parquet": "laion", ".pq": "laion"}


@dataclass(frozen=True)
class SourceRecord:
    """One video or image to fetch. `key` is a sanitised, WebDataset-safe sample key."""

    key: str
    url: str
    caption: str
    kind: Kind
    source: str  # format name: "webvid" | "laion"
    source_key: str  # the id inside the source (WebVid videoid, "<file stem>-<row>" for LAION)
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- URIs
def split_format_prefix(uri: str) -> tuple[str | None, str]:
    """`"laion:gs://b/x.csv" -> ("laion", "gs://b/x.csv")`; no known prefix -> `(None, uri)`."""
    head, sep, rest = uri.partition(":")
    if sep and head in FORMATS and rest:
        return head, rest
    return None, uri


def detect_format(uri: str) -> str:
    path = uri.split("?", 1)[0].lower()
    for ext, fmt in _FORMAT_BY_EXT.items():
        if path.endswith(ext):
            return fmt
    raise ValueError(
        f"cannot tell the format of source {uri!r} from its extension (known: {sorted(_FORMAT_BY_EXT)}); "
        f"prefix it with one of {FORMATS}, e.g. 'webvid:{uri}'"
    )


def has_scheme(url: str) -> bool:
    return "://" in url


def resolve_url(url: str, base_uri: str) -> str:
    """Resolve a (possibly relative) media URL against the directory of the listing at `base_uri`.

    Absolute URLs (with a scheme) and absolute local paths are returned unchanged.
    """
    url = url.strip()
    if has_scheme(url) or url.startswith("/"):
        return url
    if has_scheme(base_uri):
        scheme, rest = base_uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), url))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(base_uri) or ".", url))


def _stem(uri: str) -> str:
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or "source"


# --------------------------------------------------------------------------------------------- values
def _json_value(v: Any) -> Any:
    """Table cell -> JSON-safe Python value (numpy scalars unwrapped, NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, bytes):
        return None  # binary columns (e.g. embedded thumbnails) do not belong in sample metadata
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return str(v)


def _text(v: Any) -> str:
    v = _json_value(v)
    return "" if v is None else str(v).strip()


def _pick_column(df: pd.DataFrame, names: tuple[str, ...], what: str, uri: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise ValueError(f"source {uri} has no {what} column (looked for {names}; found {list(df.columns)})")


# --------------------------------------------------------------------------------------------- readers
def read_table(uri: str, fmt: str) -> pd.DataFrame:
    """The file type follows the extension (a LAION list may be a CSV); unknown -> the format's usual one."""
    path = uri.split("?", 1)[0].lower()
    is_csv = path.endswith((".csv", ".tsv")) or (fmt == "webvid" and not path.endswith((".parquet", ".pq")))
    with fsspec.open(uri, "rb") as f:
        if is_csv:
            # dtype=str keeps ids like "000123" intact
            return pd.read_csv(
                f, dtype=str, keep_default_na=False, sep="\t" if path.endswith(".tsv") else ","
            )
        return pd.read_parquet(f)


def webvid_records(df: pd.DataFrame, uri: str) -> list[SourceRecord]:
    """WebVid CSV: `videoid, contentUrl, duration, page_dir, name` (extra columns go to meta)."""
    id_col = _pick_column(df, ("videoid",), "video id", uri)
    url_col = _pick_column(df, ("contentUrl",), "URL", uri)
    cap_col = _pick_column(df, ("name",), "caption", uri)
    extra = [c for c in df.columns if c not in (id_col, url_col, cap_col)]
    out = []
    for row in df.to_dict("records"):
        vid = _text(row[id_col])
        meta = {c: _json_value(row[c]) for c in extra}
        if "duration" in meta and meta["duration"] not in (None, ""):
            with contextlib.suppress(ValueError):
                meta["duration"] = float(meta["duration"])
        out.append(
            SourceRecord(
                key=sanitize_key(f"webvid-{vid}"),
                url=resolve_url(_text(row[url_col]), uri),
                caption=_text(row[cap_col]),
                kind="video",
                source="webvid",
                source_key=vid,
                meta=meta,
            )
        )
    return out


def laion_records(df: pd.DataFrame, uri: str) -> list[SourceRecord]:
    """LAION parquet: `URL`/`url`, `TEXT`/`caption`; all other columns (WIDTH, similarity, ...) to meta."""
    url_col = _pick_column(df, ("URL", "url"), "URL", uri)
    cap_col = _pick_column(df, ("TEXT", "caption", "text"), "caption", uri)
    extra = [c for c in df.columns if c not in (url_col, cap_col)]
    stem = _stem(uri)
    out = []
    for i, row in enumerate(df.to_dict("records")):
        # row position within the file: stable for a given listing, unlike LAION's optional ids
        source_key = f"{stem}-{i:09d}"
        out.append(
            SourceRecord(
                key=sanitize_key(f"laion-{source_key}"),
                url=resolve_url(_text(row[url_col]), uri),
                caption=_text(row[cap_col]),
                kind="image",
                source="laion",
                source_key=source_key,
                meta={c: _json_value(row[c]) for c in extra},
            )
        )
    return out


def read_source(uri: str, fmt: str | None = None) -> list[SourceRecord]:
    """Read one listing. `fmt` (or a `"<fmt>:"` URI prefix) overrides extension-based detection."""
    prefix_fmt, uri = split_format_prefix(uri)
    fmt = fmt or prefix_fmt or detect_format(uri)
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known: {FORMATS}")
    df = read_table(uri, fmt)
    return webvid_records(df, uri) if fmt == "webvid" else laion_records(df, uri)


def read_sources(uris: list[str], fmt: str | None = None) -> list[SourceRecord]:
    """Read several listings, in the order given (callers sort before sharding)."""
    records: list[SourceRecord] = []
    for uri in uris:
        records.extend(read_source(uri, fmt))
    return records
