"""Reading shards that may be damaged: every fault is a counted skip with a record, or (strict) an error.

Faults, by the reason they are counted under:
- `bad_shard` (one per shard): the shard's bytes differ from the sha256 its manifest records (checked before
  any sample is decoded, so none of its samples is used), or the tar is truncated or corrupt. Without a
  recorded checksum (datasets made before checksums) a damaged tar still gives the samples before the damage;
  the sample being read when the damage was hit is dropped with it (it may lack members).
- `duplicate_member` (one per sample, dropped): two members with the same `<key>.<ext>`; which one is meant
  cannot be told.
- `split_sample` (one per sample, kept: counted under `repaired`, not `skips`): a key's members separated by
  another key's (`a.mp4, b.mp4, a.txt`). WebDataset readers group consecutive members, which would make two
  half samples (one without its caption); here a shard is read whole anyway, so grouping by key is free and
  the sample comes out complete. It is still counted: such a tar was not written by `write_shard`.

Tar itself does not notice most damage: `tarfile` ends iteration quietly at an invalid or truncated header
past the first one, so a scan also checks that the archive ends with its end-of-archive block.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from dataclasses import dataclass, field

from pipelines.shards import exists, join_uri, list_shards, read_bytes, read_manifest

SKIP_BAD_SHARD = "bad_shard"
SKIP_DUPLICATE_MEMBER = "duplicate_member"
REPAIRED_SPLIT_SAMPLE = "split_sample"
SHA256_FIELD = "shard_sha256"  # manifest field: shard name -> sha256 of its bytes
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)


class BadShardError(ValueError):
    """A shard is damaged (strict readers raise this instead of skipping)."""


@dataclass
class ShardScan:
    """What reading one or more shards gave: the samples, and the faults counted by reason.

    `skips`: what was dropped; `repaired`: samples kept after a fix; `skipped`: one record per fault
    `{"shard", "reason", "detail"}` (a manifest's skip examples).
    """

    samples: list[dict] = field(default_factory=list)
    skips: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)

    def fault(self, shard: str, reason: str, detail: str, *, strict: bool, kept: bool = False) -> None:
        if strict:
            raise BadShardError(
                f"{reason} in shard {shard}: {detail}. Delete that shard and rerun the job that wrote its "
                "directory (it remakes only missing shards), or read without strict to skip it and count it "
                f"as {reason!r}"
            )
        (self.repaired if kept else self.skips)[reason] += 1
        self.skipped.append({"shard": shard, "reason": reason, "detail": detail})

    def extend(self, other: ShardScan) -> None:
        self.samples.extend(other.samples)
        self.skips.update(other.skips)
        self.repaired.update(other.repaired)
        self.skipped.extend(other.skipped)


def _members(data: bytes) -> tuple[list[tuple[str, str, bytes]], str | None]:
    """`(key, ext, bytes)` of the tar's file members in order, and the error that stopped reading (None when
    the tar is whole). After an error, the sample being read is left out: it may lack members (at a bad
    header that is the last one read, as its next member could have followed). Members not named
    `<key>.<ext>` are not samples' and are passed over."""
    out: list[tuple[str, str, bytes]] = []
    reading: str | None = None  # key of the member whose bytes are being read
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # plain tars, as write_shard makes
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or "." not in base:
                    continue
                key, ext = base.split(".", 1)
                reading = key
                f = tar.extractfile(member)
                out.append((key, ext, f.read() if f is not None else b""))
                reading = None
            end = tar.offset  # where iteration stopped: the end-of-archive block of a whole tar
            error = None
            if data[end : end + tarfile.BLOCKSIZE] != _END_OF_ARCHIVE:
                what = "truncated" if end >= len(data) else "invalid header"
                error = f"{what} at byte {end} of {len(data)} (no end-of-archive block)"
    except (tarfile.TarError, EOFError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
    if error is None:
        return out, None
    drop = reading or (out[-1][0] if out else None)
    kept = [m for m in out if m[0] != drop]
    if drop is not None:
        error += f"; kept the {len({m[0] for m in kept})} sample(s) read before it, dropped {drop!r}"
    return kept, error


def scan_tar(data: bytes, shard: str, *, sha256: str | None = None, strict: bool = False) -> ShardScan:
    """The samples of one tar (`{"__key__": key, ext: bytes, ...}`, in first-member order) and its faults.

    `sha256`: the checksum the manifest records for this shard; a mismatch drops the whole shard.
    """
    scan = ShardScan()
    if sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            detail = f"sha256 {actual[:16]}... but the manifest records {sha256[:16]}... ({len(data)} bytes)"
            scan.fault(shard, SKIP_BAD_SHARD, detail, strict=strict)
            return scan
    members, error = _members(data)
    if error is not None:
        scan.fault(shard, SKIP_BAD_SHARD, error, strict=strict)
    samples: dict[str, dict] = {}
    split: set[str] = set()
    bad: set[str] = set()
    previous = None
    for key, ext, value in members:
        sample = samples.setdefault(key, {"__key__": key})
        if key != previous and len(sample) > 1:
            split.add(key)
        if ext in sample:
            bad.add(key)
        sample[ext] = value
        previous = key
    for key in sorted(bad):
        scan.fault(shard, SKIP_DUPLICATE_MEMBER, f"sample {key!r} has two members of one name", strict=strict)
    for key in sorted(split - bad):
        scan.fault(shard, REPAIRED_SPLIT_SAMPLE, f"members of {key!r} not contiguous; merged",
                   strict=strict, kept=True)  # fmt: skip
    scan.samples = [s for k, s in samples.items() if k not in bad]
    return scan


def scan_shard(uri: str, *, sha256: str | None = None, strict: bool = False) -> ShardScan:
    """`scan_tar` of the shard at `uri` (an unreadable file is a bad shard too)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        data = read_bytes(uri)
    except OSError as e:
        scan = ShardScan()
        scan.fault(name, SKIP_BAD_SHARD, f"cannot read {uri}: {e}", strict=strict)
        return scan
    return scan_tar(data, name, sha256=sha256, strict=strict)


def shard_checksums(dir_uri: str) -> dict[str, str]:
    """Shard name -> sha256 as the directory's manifest records them ({} without a manifest or checksums:
    datasets made before checksums are read unverified)."""
    if not exists(join_uri(dir_uri, "manifest.json")):
        return {}
    return dict(read_manifest(dir_uri).get(SHA256_FIELD) or {})


def scan_dataset(dir_uri: str, *, strict: bool = False) -> ShardScan:
    """Every shard of a directory, each verified against the manifest's checksum when it records one."""
    shards = list_shards(dir_uri)
    if not shards:
        raise FileNotFoundError(f"no shard-*.tar files in {dir_uri}")
    sums = shard_checksums(dir_uri)
    total = ShardScan()
    for uri in shards:
        total.extend(scan_shard(uri, sha256=sums.get(uri.rsplit("/", 1)[-1]), strict=strict))
    return total
