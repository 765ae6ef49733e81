"""Table sources: WebVid CSV (`videoid, contentUrl, duration, page_dir, name`) and LAION parquet / CSV
(`URL`/`url`, `TEXT`/`caption`) listings -> `SourceRecord`s. Relative media URLs resolve against the
listing's own location (`pipelines.sources.resolve_url`); the table bytes come through the guarded fetch.
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd

from pipelines.fetch import FetchError, FetchPolicy, fetch_bytes
from pipelines.shards import sanitize_key
from pipelines.sources import (
    SourceRecord,
    SourceSpec,
    dir_files,
    expand_uri,
    format_from_ext,
    is_directory,
    json_value,
    path_part,
    resolve_url,
    text_value,
)

_TABLE_EXTS = (".csv", ".tsv", ".parquet", ".pq")


def _stem(uri: str) -> str:
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0] or "source"


def _pick_column(df: pd.DataFrame, names: tuple[str, ...], what: str, uri: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise ValueError(f"source {uri} has no {what} column (looked for {names}; found {list(df.columns)})")


def read_table(uri: str, fmt: str, policy: FetchPolicy) -> pd.DataFrame:
    """The file type follows the extension (a LAION list may be a CSV); unknown -> the format's usual one.
    The bytes come through the guarded fetch (a listing that redirects to a private address is refused)."""
    path = path_part(uri).lower()
    is_csv = path.endswith((".csv", ".tsv")) or (fmt == "webvid" and not path.endswith((".parquet", ".pq")))
    try:
        f = io.BytesIO(fetch_bytes(uri, policy))
    except FetchError as e:
        if e.reason != "too_large":
            raise
        # a bad input, not a crash: one line naming the listing and the fix (listings are read whole)
        raise ValueError(f"listing {uri} is too large to read: {e.detail}, or split the listing") from e
    if is_csv:
        # dtype=str keeps ids like "000123" intact. Bytes that are not UTF-8 become U+FFFD instead of failing
        # the whole listing: prepare then skips just those rows (caption_not_utf8) and counts them.
        return pd.read_csv(
            f,
            dtype=str,
            keep_default_na=False,
            sep="\t" if path.endswith(".tsv") else ",",
            encoding="utf-8",
            encoding_errors="replace",
        )
    return pd.read_parquet(f)


def webvid_records(df: pd.DataFrame, uri: str, *, name: str = "", weight: float = 1.0) -> list[SourceRecord]:
    """WebVid CSV: `videoid, contentUrl, duration, page_dir, name` (extra columns go to meta)."""
    id_col = _pick_column(df, ("videoid",), "video id", uri)
    url_col = _pick_column(df, ("contentUrl",), "URL", uri)
    cap_col = _pick_column(df, ("name",), "caption", uri)
    extra = [c for c in df.columns if c not in (id_col, url_col, cap_col)]
    out = []
    for row in df.to_dict("records"):
        vid = text_value(row[id_col])
        meta = {c: json_value(row[c]) for c in extra}
        if "duration" in meta and meta["duration"] not in (None, ""):
            with contextlib.suppress(ValueError):
                meta["duration"] = float(meta["duration"])
        out.append(
            SourceRecord(
                key=sanitize_key(f"webvid-{vid}"),
                url=resolve_url(text_value(row[url_col]), uri),
                caption=text_value(row[cap_col]),
                kind="video",
                source="webvid",
                source_key=vid,
                meta=meta,
                source_name=name,
                source_weight=weight,
            )
        )
    return out


def laion_records(df: pd.DataFrame, uri: str, *, name: str = "", weight: float = 1.0) -> list[SourceRecord]:
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
                url=resolve_url(text_value(row[url_col]), uri),
                caption=text_value(row[cap_col]),
                kind="image",
                source="laion",
                source_key=source_key,
                meta={c: json_value(row[c]) for c in extra},
                source_name=name,
                source_weight=weight,
            )
        )
    return out


def _table_files(uri: str) -> list[str]:
    """Expanded listing files; a directory stands for the .csv/.tsv/.parquet/.pq files directly in it."""
    files: list[str] = []
    for u in expand_uri(uri):
        if format_from_ext(u) is None and is_directory(u):
            found = [c for c in dir_files(u) if c.lower().endswith(_TABLE_EXTS)]
            if not found:
                raise ValueError(f"directory {u} (source {uri!r}) has no {'/'.join(_TABLE_EXTS)} files")
            files.extend(found)
        else:
            files.append(u)
    return files


def table_records(spec: SourceSpec, policy: FetchPolicy) -> tuple[list[SourceRecord], dict[str, int]]:
    """Records of a webvid / laion source (every table its URI names), plus counts (files)."""
    assert spec.name is not None and spec.format in ("webvid", "laion"), "resolve_specs first"
    to_records = webvid_records if spec.format == "webvid" else laion_records
    files = _table_files(spec.uri)
    records: list[SourceRecord] = []
    for f in files:
        records.extend(to_records(read_table(f, spec.format, policy), f, name=spec.name, weight=spec.weight))
    return records, {"files": len(files)}
