"""Read sources (WebVid CSV, LAION parquet, WebDataset tars, folders of media) into `SourceRecord`s.

A source is a listing of media plus captions; the media bytes are fetched later, per shard, by
`pipelines.prepare`. Local paths, file://, gs:// and http(s):// work, and every URI may be a glob
(`gs://b/webvid/part-*.csv`) or a brace list (`out/{00000..00009}.tar`). Globs and directories are listed
with fsspec; every byte read (tables, tars, captions) goes through `pipelines.fetch` under one `FetchPolicy`,
whose `local_roots` gain each local source's own folder (`source_root`), so a listing's local media must
lie beside or below it unless the user names more folders.

Formats:
  webvid      CSV `videoid, contentUrl, duration, page_dir, name` (extra columns to meta)
  laion       parquet (or CSV) `URL`/`url`, `TEXT`/`caption`; WIDTH, HEIGHT, similarity, ... to meta
  webdataset  img2dataset / video2dataset output: a folder of (or glob / brace list of) `.tar` files;
              records point into the tars (`tar+<tar>#<member>`, read with
              `pipelines.wds_source.read_tar_member`)
  folder      a folder of images / videos, captions in `<stem>.txt` sidecars (or a metadata file)
The last two are read in `pipelines.wds_source`.

The format comes from the URI (`.csv/.tsv` -> webvid, `.parquet/.pq` -> laion, `.tar` -> webdataset, a
directory -> webdataset if it holds `.tar` files, else folder) or is forced with `fmt=` or a `"<fmt>:"`
prefix. A source spec `"[fmt:]URI[::weight=W][::name=N]"` also gives the source a sampling weight and a
name (see `parse_source_spec`), carried by each record for the training-time mixer.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import fsspec
import numpy as np
from braceexpand import UnbalancedBracesError, braceexpand

from pipelines.fetch import FetchPolicy, url_scheme
from pipelines.local_paths import local_path

log = logging.getLogger(__name__)

Kind = Literal["video", "image"]
FORMATS = ("webvid", "laion", "webdataset", "folder")
_FORMAT_BY_EXT = {
    ".csv": "webvid",
    ".tsv": "webvid",
    ".parquet": "laion",
    ".pq": "laion",
    ".tar": "webdataset",
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_NAME_RE = re.compile(r"[A-Za-z0-9_\-]+")
_OPTION_RE = re.compile(r"([A-Za-z_]+)=(.*)")


@dataclass(frozen=True)
class SourceRecord:
    """One video or image to fetch. `key` is a sanitised, WebDataset-safe sample key."""

    key: str
    url: str  # fsspec URL, or `tar+<tar uri>#<member>` for media inside a tar (see read_tar_member)
    caption: str
    kind: Kind
    source: str  # format name: "webvid" | "laion" | "webdataset" | "folder"
    source_key: str  # the id inside the source (WebVid videoid, "<file stem>-<row>" for LAION, ...)
    meta: dict[str, Any] = field(default_factory=dict)
    source_name: str = ""  # the SourceSpec's name, unique per job; the mixer samples sources by it
    source_weight: float = 1.0  # the SourceSpec's sampling weight


@dataclass(frozen=True)
class SourceSpec:
    """One source of a job: where (`uri`, may be a glob / brace list), its format, weight and name.

    `format=None` means "detect from the URI"; `name=None` means `"<format>-<stem>"` (see
    `resolve_specs`, which fills both in).
    """

    uri: str
    format: str | None = None
    weight: float = 1.0
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("source URI is empty")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"unknown source format {self.format!r} for {self.uri}; known: {FORMATS}")
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source weight must be a positive number, got {self.weight!r} for {self.uri}")
        if self.name is not None and not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"source name {self.name!r} may only use letters, digits, '_' and '-'")

    def to_text(self) -> str:
        """The spec as `parse_source_spec` reads it (e.g. for a manifest)."""
        text = f"{self.format}:{self.uri}" if self.format else self.uri
        if self.weight != 1.0:
            text += f"::weight={float(self.weight)!r}"
        return text + (f"::name={self.name}" if self.name else "")


# --------------------------------------------------------------------------------------------- specs
def split_format_prefix(uri: str) -> tuple[str | None, str]:
    """`"laion:gs://b/x.csv" -> ("laion", "gs://b/x.csv")`; no known prefix -> `(None, uri)`."""
    head, sep, rest = uri.partition(":")
    if sep and head in FORMATS and rest:
        return head, rest
    return None, uri


def parse_source_spec(text: str) -> SourceSpec:
    """`"[fmt:]URI[::weight=W][::name=N]"` -> SourceSpec, e.g. `"laion:gs://b/x.parquet::weight=0.1"`.

    Options are read from the right and only in `::key=value` form, so a URI that itself holds `::`
    (an fsspec chain such as `simplecache::gs://b/x.csv`) is left whole.
    """
    rest = text.strip()
    opts: dict[str, str] = {}
    while True:
        head, sep, tail = rest.rpartition("::")
        m = _OPTION_RE.fullmatch(tail) if sep else None
        if m is None:
            break
        key, value = m.groups()
        if key not in ("weight", "name"):
            raise ValueError(f"unknown option {key!r} in source {text!r}; known: weight, name")
        if key in opts:
            raise ValueError(f"option {key!r} given twice in source {text!r}")
        opts[key] = value
        rest = head
    fmt, uri = split_format_prefix(rest)
    scheme_like = re.match(r"([A-Za-z][A-Za-z0-9_+.-]+):(?!//)", uri)
    if fmt is None and scheme_like and "::" not in uri:
        raise ValueError(f"unknown source format {scheme_like.group(1)!r} in {text!r}; known: {FORMATS}")
    weight = 1.0
    if "weight" in opts:
        try:
            weight = float(opts["weight"])
        except ValueError:
            raise ValueError(f"weight {opts['weight']!r} in source {text!r} is not a number") from None
    return SourceSpec(uri=uri, format=fmt, weight=weight, name=opts.get("name"))


def _as_spec(spec: str | SourceSpec) -> SourceSpec:
    return spec if isinstance(spec, SourceSpec) else parse_source_spec(spec)


# --------------------------------------------------------------------------------------------- URIs
def has_scheme(url: str) -> bool:
    return "://" in url


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _is_local(uri: str) -> bool:
    return not has_scheme(uri) or uri.startswith("file://")


def path_part(uri: str) -> str:
    """The URI without an http(s) query string (other schemes have none; there `?` is a glob char)."""
    return uri.split("?", 1)[0] if _is_http(uri) else uri


def format_from_ext(uri: str) -> str | None:
    path = path_part(uri).lower()
    return next((f for ext, f in _FORMAT_BY_EXT.items() if path.endswith(ext)), None)


def _is_glob(uri: str) -> bool:
    return not _is_http(uri) and "::" not in uri and bool(_GLOB_CHARS.search(uri))


def _braces(pattern: str) -> list[str]:
    if "{" not in pattern:
        return [pattern]
    try:
        return list(braceexpand(pattern))
    except UnbalancedBracesError as e:
        raise ValueError(f"bad brace list in source {pattern!r}: {e}") from e


def with_scheme(like: str, path: str) -> str:
    """A path from an fsspec listing, in the style of the URI it came from (plain path, file://, gs://)."""
    return f"{like.split('://', 1)[0]}://{path}" if has_scheme(like) else path


def _abs(uri: str) -> str:
    # Ray workers need not share the driver's cwd, so records carry absolute local paths
    return uri if has_scheme(uri) else os.path.abspath(uri)


def expand_uri(pattern: str) -> list[str]:
    """Brace lists, then globs -> sorted, deduplicated URIs (directories included).

    Plain URIs (no glob characters) are passed through unchecked; reading them reports a missing file.
    A glob matching nothing raises FileNotFoundError naming it: a typo must not silently drop data.
    """
    out: set[str] = set()
    for uri in _braces(pattern):
        if not _is_glob(uri):
            out.add(_abs(uri))
            continue
        fs, path = fsspec.core.url_to_fs(uri)
        matches = fs.glob(path)
        if not matches and fs.exists(path):
            matches = [path]  # a literal name with '[' or '?' in it
        if not matches:
            where = f" (from {pattern!r})" if uri != pattern else ""
            raise FileNotFoundError(f"source pattern {uri!r}{where} matches no files")
        out.update(with_scheme(uri, m) for m in matches)
    return sorted(out)


def is_directory(uri: str) -> bool:
    if _is_http(uri):
        return False  # fsspec "lists" http by scraping links from HTML: no basis for a directory
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.isdir(path)


def dir_files(uri: str) -> list[str]:
    """URIs of the files directly in a directory, sorted."""
    fs, path = fsspec.core.url_to_fs(uri)
    entries = fs.ls(path, detail=True)
    return sorted(with_scheme(uri, e["name"]) for e in entries if e.get("type") == "file")


def detect_format(uri: str) -> str:
    """The format of a source URI: by extension (also of every brace alternative), else by looking into
    a directory (webdataset if it holds `.tar` files, else folder)."""
    fmt = format_from_ext(uri)
    if fmt is not None:
        return fmt
    fmts = {format_from_ext(u) for u in _braces(uri)}
    if len(fmts) == 1 and None not in fmts:
        return fmts.pop()
    if len(fmts) > 1 and None not in fmts:
        raise ValueError(f"source {uri!r} mixes formats {sorted(fmts)}; give each its own source")
    last = path_part(uri).rstrip("/").rsplit("/", 1)[-1]
    # A directory is only looked for where it cannot cost a request per guess: locally, or remotely
    # for a name without an extension (`gs://b/list.txt` is not worth asking GCS about).
    maybe_dir = not _is_glob(uri) and "{" not in uri and (_is_local(uri) or "." not in last)
    if maybe_dir and is_directory(uri):
        return "webdataset" if any(u.endswith(".tar") for u in dir_files(uri)) else "folder"
    raise ValueError(
        f"cannot tell the format of source {uri!r} from its extension (known: {sorted(_FORMAT_BY_EXT)}) "
        f"or as a directory; prefix it with one of {FORMATS}, e.g. 'webvid:{uri}'"
    )


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


def source_root(uri: str) -> str | None:
    """The folder a local source lives in, which its local media may be read from by default: the source
    itself if it is a directory, else the folder holding its file or its first glob / brace part.
    None for remote sources (their media rows get no default local folder)."""
    if url_scheme(uri) not in ("file", "local"):
        return None
    parts = os.path.abspath(local_path(uri)).split("/")
    fixed = next((i for i, p in enumerate(parts) if _GLOB_CHARS.search(p) or "{" in p), None)
    if fixed is not None:
        return "/".join(parts[:fixed]) or "/"
    path = "/".join(parts) or "/"
    return path if os.path.isdir(path) else os.path.dirname(path)


def listing_policy(policy: FetchPolicy, specs: list[str | SourceSpec]) -> FetchPolicy:
    """`policy` with each local source's folder (`source_root`) added to its `local_roots`."""
    roots = (source_root(_as_spec(s).uri) for s in specs)
    return policy.with_roots(r for r in roots if r is not None)


def default_source_name(uri: str, fmt: str) -> str:
    """`"<fmt>-<stem>"` from the last path component without glob / brace characters:
    `gs://b/webvid/part-*.csv` -> `webvid-webvid`, `out/{00000..00009}.tar` -> `webdataset-out`."""
    parts = [p for p in path_part(uri).split("://", 1)[-1].split("/") if p]
    clean = [p for p in parts if not _GLOB_CHARS.search(p) and "{" not in p]
    stem = clean[-1].split(".", 1)[0] if clean else "source"
    return f"{fmt}-{re.sub(r'[^A-Za-z0-9_-]', '_', stem) or 'source'}"


def resolve_specs(specs: list[str | SourceSpec], fmt: str | None = None) -> list[SourceSpec]:
    """Specs with `format` (fmt forces it for all, else the spec's, else detected) and a unique `name`.

    Explicit names must be unique; default names that collide get `-2`, `-3`, ... in spec order.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known: {FORMATS}")
    parsed = [_as_spec(s) for s in specs]
    explicit = [s.name for s in parsed if s.name]
    dupes = sorted({n for n in explicit if explicit.count(n) > 1})
    if dupes:
        raise ValueError(f"source names must be unique; repeated: {dupes}")
    used = set(explicit)
    out = []
    for s in parsed:
        f = fmt or s.format or detect_format(s.uri)
        name = s.name
        if name is None:
            base = name = default_source_name(s.uri, f)
            n = 1
            while name in used:
                n += 1
                name = f"{base}-{n}"
        used.add(name)
        out.append(replace(s, format=f, name=name))
    return out


# --------------------------------------------------------------------------------------------- values
def json_value(v: Any) -> Any:
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
        return [json_value(x) for x in v.tolist()]
    if isinstance(v, list | tuple):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    return str(v)


def text_value(v: Any) -> str:
    v = json_value(v)
    return "" if v is None else str(v).strip()


# --------------------------------------------------------------------------------------------- entry
def _read_spec(spec: SourceSpec, policy: FetchPolicy) -> tuple[list[SourceRecord], dict[str, Any]]:
    assert spec.format is not None and spec.name is not None, "resolve_specs first"
    # imported here: wds_source builds on this module (SourceRecord, expand_uri, ...)
    from pipelines.table_source import table_records
    from pipelines.wds_source import folder_records, webdataset_records

    if spec.format == "webdataset":
        records, counts = webdataset_records(spec, policy)
    elif spec.format == "folder":
        records, counts = folder_records(spec, policy)
    else:
        records, counts = table_records(spec, policy)
    if not records:
        raise ValueError(
            f"source {spec.to_text()!r} ({spec.format}) has no usable rows ({counts}); check the URI "
            "and the format (force one with a '<format>:' prefix)"
        )
    stats = {
        "name": spec.name,
        "format": spec.format,
        "uri": spec.uri,
        "weight": spec.weight,
        "records": len(records),
        "dropped_no_media": 0,
        "empty_caption": sum(not r.caption for r in records),
        **counts,
    }
    return records, stats


def read_sources_with_stats(
    specs: list[str | SourceSpec], fmt: str | None = None, policy: FetchPolicy | None = None
) -> tuple[list[SourceRecord], list[dict[str, Any]]]:
    """Read several sources, in the order given (callers sort before sharding), with one stats dict per
    source: name, format, uri, weight, files, records, dropped_no_media, empty_caption (+ format extras).
    `fmt` forces the format of every source, over any prefix. Reads go through `policy` (default
    `FetchPolicy()`) with the sources' own folders added to its local roots (`listing_policy`)."""
    records: list[SourceRecord] = []
    stats: list[dict[str, Any]] = []
    resolved = resolve_specs(specs, fmt)
    policy = listing_policy(policy or FetchPolicy(), list(resolved))
    for spec in resolved:
        recs, st = _read_spec(spec, policy)
        records.extend(recs)
        stats.append(st)
    return records, stats


def read_sources(
    specs: list[str | SourceSpec], fmt: str | None = None, policy: FetchPolicy | None = None
) -> list[SourceRecord]:
    """Read several sources, in the order given (callers sort before sharding)."""
    return read_sources_with_stats(specs, fmt, policy)[0]


def read_source(
    spec: str | SourceSpec, fmt: str | None = None, policy: FetchPolicy | None = None
) -> list[SourceRecord]:
    """Read one source. `fmt` (or a `"<fmt>:"` URI prefix) overrides detection from the URI."""
    return read_sources([spec], fmt, policy)
