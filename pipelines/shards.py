"""Shard I/O: WebDataset-layout tar files and dataset manifests, local or remote via fsspec.

A dataset directory (clip shards or token cache) holds `shard-000000.tar ...` plus `manifest.json`.
Every file is written to `<name>.tmp-<uuid>` and renamed when complete, so a file with its final name
is always whole: a reader never sees a half-written shard, and a rerun can treat "exists" as "done".

Tar members are named `<key>.<ext>` (the WebDataset convention: the key is the part of the member name
before the first dot), written in sample order with fixed metadata (mtime 0, uid 0, mode 0o644) so the
same samples always give byte-identical tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = "_progress"  # per-shard completion records of resumable jobs
SHARD_PATTERN = re.compile(r"^shard-(\d{6,})\.tar$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


# --------------------------------------------------------------------------------------------- names
def shard_name(index: int) -> str:
    """`shard_name(3) -> "shard-000003.tar"`."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"shard-{index:06d}.tar"


def join_uri(dir_uri: str, name: str) -> str:
    """Join a directory URI and a file name, keeping the URI's style (plain path, file://, gs://)."""
    return dir_uri.rstrip("/") + "/" + name


def absolute_uri(uri: str) -> str:
    """Make a plain local path absolute (Ray workers need not share the driver's cwd); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def local_path(uri: str) -> str:
    """`file:///x` -> `/x` for APIs that take local paths only; other URIs are refused clearly."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" in uri:
        raise ValueError(f"{uri} must be a local path here (copy it locally first)")
    return uri


def sanitize_key(s: str) -> str:
    """Make a WebDataset-safe sample key: only `[A-Za-z0-9_-]`.

    Dots and slashes would break the `<key>.<ext>` member naming. A key that had to change gets an
    8-hex suffix hashed from the original string, so two inputs that clean to the same text
    (`a.b` and `a/b`) still get different keys; clean keys pass through unchanged.
    """
    if not s:
        raise ValueError("sample key must be a non-empty string")
    cleaned = _UNSAFE_KEY_CHARS.sub("_", s)
    if cleaned == s:
        return s
    digest = hashlib.sha1(s.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[:120]}_{digest}"


# --------------------------------------------------------------------------------------------- numpy
# A clip-shard video stored unencoded: (T, H, W, 3) uint8 frames in .npy (`PrepareConfig.video_format="npy"`),
# instead of an `mp4` member. Named here, not in pipelines.media, so readers can sort samples without PyAV.
RAW_CLIP_KEY = "frames.npy"


def npy_bytes(arr: np.ndarray) -> bytes:
    """Serialise an array in .npy format (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_npy(b: bytes) -> np.ndarray:
    """Inverse of `npy_bytes`; refuses pickled object arrays (shards may come from anywhere)."""
    return np.load(io.BytesIO(b), allow_pickle=False)


def encode_value(ext: str, value: Any) -> bytes:
    """One sample field to bytes: bytes as is, str as UTF-8, dict/list as JSON, ndarray as .npy."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.ndarray):
        if not ext.endswith("npy"):
            raise TypeError(f"numpy array under '.{ext}': arrays go under '*.npy' keys")
        return npy_bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict | list):
        # sort_keys: the same sample must serialise to the same bytes (shard checksums are compared)
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    if isinstance(value, int | float | bool):
        return str(value).encode("utf-8")
    raise TypeError(f"cannot store value of type {type(value).__name__} under '.{ext}'")


# --------------------------------------------------------------------------------------------- files
def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write to a unique temp name next to `uri`, then rename over it.

    On local disks the rename is atomic; on object stores (gs://) `mv` is copy+delete of a fully
    uploaded object, so readers still only ever see a complete file under the final name.
    """
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        if isinstance(fs, LocalFileSystem):
            fs.mv(tmp, path)
        else:
            # Object stores have no rename: copy (server side) then delete. gcsfs's `mv` first tries the
            # moveTo API, which only hierarchical-namespace buckets have, and retries it with backoff
            # (minutes per file against the emulator) before falling back to exactly this.
            fs.copy(tmp, path)
            fs.rm(tmp)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def file_sha256(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata -> reproducible tar bytes
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_members(sample: dict) -> list[tuple[str, bytes]]:
    """One sample's tar members `(<key>.<ext>, bytes)`, extensions sorted (reproducible tar bytes)."""
    key = sample.get("__key__")
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample without a string '__key__': fields {sorted(sample)}")
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} contains '.' or '/'; pass it through sanitize_key")
    return [
        (f"{key}.{ext}", encode_value(ext, sample[ext]))
        for ext in sorted(k for k in sample if not k.startswith("__"))
    ]


def members_tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A tar of these members, in this order, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add_member(tar, name, data)
    return buf.getvalue()


def tar_bytes(samples: Iterable[dict]) -> tuple[bytes, int]:
    """Build the tar in memory. Returns (tar bytes, number of samples). Shards are tens of MB at most."""
    members: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for sample in samples:
        new = sample_members(sample)
        if sample["__key__"] in seen:
            raise ValueError(f"duplicate sample key {sample['__key__']!r} in one shard")
        seen.add(sample["__key__"])
        members.extend(new)
    return members_tar_bytes(members), len(seen)


def write_shard_sha256(uri: str, samples: Iterable[dict]) -> tuple[int, str]:
    """Write samples as one WebDataset tar at `uri`, atomically. Returns (number of samples, sha256 of the
    tar's bytes), the checksum readers verify the shard against (the manifest's `shard_sha256`)."""
    data, count = tar_bytes(samples)
    _atomic_write_bytes(uri, data)
    return count, hashlib.sha256(data).hexdigest()


def write_shard(uri: str, samples: Iterable[dict]) -> int:
    """Write samples as one WebDataset tar at `uri`, atomically. Returns the number of samples.

    Each sample has `__key__: str` plus fields `ext -> bytes | str | dict | ndarray (under *.npy)`.
    """
    return write_shard_sha256(uri, samples)[0]


def iter_tar_samples(data: bytes) -> Iterator[dict]:
    """The samples of a tar held in memory; any fault (see `scan_tar`) raises BadShardError."""
    from pipelines.shard_scan import scan_tar  # it builds on this module's I/O

    yield from scan_tar(data, "<tar bytes>", strict=True).samples


def read_shard(uri: str) -> Iterator[dict]:
    """Yield the samples of one shard: `__key__` plus raw bytes per extension. Any fault raises
    BadShardError (`scan_shard` is the tolerant reader: it counts faults instead)."""
    from pipelines.shard_scan import scan_shard  # it builds on this module's I/O

    yield from scan_shard(uri, strict=True).samples


def list_files(dir_uri: str) -> list[str]:
    """URIs of the entries directly in a directory (sorted; [] when it does not exist)."""
    fs, path = _fs(dir_uri)
    if not fs.exists(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return [join_uri(dir_uri, n) for n in sorted(names)]


def list_shards(dir_uri: str) -> list[str]:
    """Complete shards (`shard-NNNNNN.tar`, never temp files) in a directory, sorted by name."""
    return [u for u in list_files(dir_uri) if SHARD_PATTERN.match(u.rsplit("/", 1)[-1])]


def shard_index(uri: str) -> int:
    """`.../shard-000012.tar -> 12`."""
    m = SHARD_PATTERN.match(uri.rstrip("/").rsplit("/", 1)[-1])
    if m is None:
        raise ValueError(f"not a shard name: {uri}")
    return int(m.group(1))


# --------------------------------------------------------------------------------------------- manifest
def write_json(uri: str, obj: Any) -> None:
    """Write a JSON file atomically (sorted keys, so equal content gives equal bytes)."""
    _atomic_write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_manifest(dir_uri: str, manifest: dict) -> None:
    """Write `manifest.json` atomically (it is written last and marks the dataset complete)."""
    write_json(join_uri(dir_uri, MANIFEST_NAME), manifest)


def read_manifest(dir_uri: str) -> dict:
    uri = join_uri(dir_uri, MANIFEST_NAME)
    if not exists(uri):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {dir_uri}: the dataset is missing or its job did not finish; "
            "run (or rerun, it resumes) the job that writes it"
        )
    return read_json(uri)


# --------------------------------------------------------------------------------------------- resume
class PlanMismatchError(RuntimeError):
    """An output directory already holds shards made by a different plan (sources, config, models)."""


def progress_uri(dir_uri: str, index: int) -> str:
    """`<dir>/_progress/shard-NNNNNN.json`: written after the shard's tar, so it marks the shard done."""
    return join_uri(join_uri(dir_uri, PROGRESS_DIR), shard_name(index).replace(".tar", ".json"))


def completed_shard(dir_uri: str, index: int, digest: str) -> dict | None:
    """The progress record of shard `index` if it is complete for plan `digest`, else None (remake it).

    A record with another digest raises PlanMismatchError: mixing two plans in one dataset would be
    silent corruption. A record whose tar is gone (deleted, lost) means "remake".
    """
    uri = progress_uri(dir_uri, index)
    if not exists(uri):
        return None
    state = read_json(uri)
    if state.get("digest") != digest:
        raise PlanMismatchError(
            f"{dir_uri} already holds {shard_name(index)} made from other inputs, config or models "
            f"(plan digest {str(state.get('digest'))[:12]} != {digest[:12]}); "
            "write to a new output directory, or delete this one to start over"
        )
    if state.get("num_samples", 0) > 0 and not exists(join_uri(dir_uri, shard_name(index))):
        return None
    return state


def progress_indices(dir_uri: str) -> list[int]:
    """Indices of the shards that have a progress record (complete, or tar since deleted)."""
    names = [
        u.rsplit("/", 1)[-1].replace(".json", ".tar") for u in list_files(join_uri(dir_uri, PROGRESS_DIR))
    ]
    return sorted(int(m.group(1)) for n in names if (m := SHARD_PATTERN.match(n)))


def check_no_foreign_shards(dir_uri: str, planned: set[int]) -> None:
    """Refuse a directory holding shards beyond the current plan (e.g. from a longer source list)."""
    extra = [i for i in progress_indices(dir_uri) if i not in planned]
    if extra:
        raise PlanMismatchError(
            f"{dir_uri} holds {len(extra)} shard(s) (e.g. {shard_name(extra[0])}) that the current inputs do not "
            "produce; write to a new output directory, or delete this one to start over"
        )


def remove_temp_files(dir_uri: str) -> int:
    """Delete `*.tmp-*` leftovers of writers that died mid-write (one job owns a directory at a time)."""
    fs, path = _fs(dir_uri)
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.find(path) if ".tmp-" in p.rsplit("/", 1)[-1]]
    for p in stale:
        fs.rm(p)
    return len(stale)
