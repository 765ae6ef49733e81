"""A clip-shard corpus with known damage, to measure that readers skip exactly the bad records and keep the rest.

`build_fault_corpus` (pure: bytes in, bytes out) cuts good samples into shards and injects four kinds of fault,
recording which samples each one touches:
- `truncated`: a shard cut off in the middle of a sample (what a killed copy or a full disk leaves);
- `flipped`: one byte flipped inside a video member (bit rot: the tar still parses, only the checksum notices);
- `split`: a sample's caption member moved after the next sample's members (a tar written so by another tool;
  its checksum matches);
- `undecodable`: a video member replaced by random bytes of the same length.
The manifest records each shard's sha256 as written, before truncation or bit rot (`FaultCorpus.sha256`), as prepare's
does. Read with those checksums, every truncated or flipped shard is one `bad_shard` skip, each undecodable
video one `undecodable` skip, each split sample one `split_sample` repair, and every other sample comes through
(`FaultCorpus.good_keys`). Tests and benchmarks write it with `write_fault_corpus`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.shard_scan import REPAIRED_SPLIT_SAMPLE, SHA256_FIELD, SKIP_BAD_SHARD
from pipelines.shards import members_tar_bytes, sample_members, shard_name, write_manifest

FAULT_KINDS = ("truncated", "flipped", "split", "undecodable")
_BLOCK = 512  # tar header and data block size


@dataclass(frozen=True)
class FaultCorpus:
    shards: dict[str, bytes]  # shard name -> bytes as stored (damaged)
    sha256: dict[str, str]  # shard name -> sha256 of the bytes as written (the manifest's `shard_sha256`)
    faults: dict[str, list[str]]  # fault kind -> keys of the samples it damaged
    good_keys: list[str]  # samples a reader must return (split samples included: they are repaired)
    salvageable: dict[str, list[str]]  # truncated shard -> keys before the cut (readable without checksums)
    num_records: int

    @property
    def num_bad(self) -> int:
        return sum(len(keys) for keys in self.faults.values())

    @property
    def expected_skips(self) -> dict[str, int]:
        """Skips by reason a reader verifying checksums must count (manifests' `skips`)."""
        bad = {
            name
            for name, data in self.shards.items()
            if hashlib.sha256(data).hexdigest() != self.sha256[name]
        }
        out = {SKIP_BAD_SHARD: len(bad), "undecodable": len(self.faults["undecodable"])}
        return {k: v for k, v in sorted(out.items()) if v}

    @property
    def expected_repaired(self) -> dict[str, int]:
        return {REPAIRED_SPLIT_SAMPLE: len(self.faults["split"])} if self.faults["split"] else {}


def _member_offsets(members: list[tuple[str, bytes]]) -> list[int]:
    """Byte offset of each member's data in the tar `members_tar_bytes` makes (USTAR: one header block)."""
    offsets, pos = [], 0
    for _, data in members:
        offsets.append(pos + _BLOCK)
        pos += _BLOCK + -(-len(data) // _BLOCK) * _BLOCK
    return offsets


def build_fault_corpus(
    samples: list[dict],
    *,
    per_shard: int = 20,
    truncated: int = 1,
    flipped: int = 1,
    split: int = 5,
    undecodable: int = 8,
    seed: int = 0,
) -> FaultCorpus:
    """Cut `samples` (video samples with `mp4` and `txt`, keys sorted as a shard holds them) into shards of
    `per_shard` and damage them: `truncated` and `flipped` whole shards, `split` and `undecodable` samples in the
    other shards (never the same sample twice)."""
    if per_shard < 4:
        raise ValueError(f"per_shard must be at least 4 (a split needs a neighbour), got {per_shard}")
    shards = [samples[s : s + per_shard] for s in range(0, len(samples), per_shard)]
    if truncated + flipped >= len(shards):
        raise ValueError(
            f"{truncated} truncated + {flipped} flipped shards leave no good shard of {len(shards)}"
        )
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(shards))]
    trunc_idx, flip_idx = set(order[:truncated]), set(order[truncated : truncated + flipped])
    # split pairs (i, i+1) at even positions of good shards, disjoint; undecodable among the rest
    good = sorted(set(range(len(shards))) - trunc_idx - flip_idx)
    pairs = [(s, i) for s in good for i in range(0, len(shards[s]) - 1, 2)]
    if split + undecodable > len(pairs):
        raise ValueError(f"{split} split + {undecodable} undecodable samples need more good shards")
    picked = [pairs[int(j)] for j in rng.choice(len(pairs), split + undecodable, replace=False)]
    split_at, undecodable_at = set(picked[:split]), {(s, i + 1) for s, i in picked[split:]}

    files: dict[str, bytes] = {}
    sums: dict[str, str] = {}
    faults: dict[str, list[str]] = {k: [] for k in FAULT_KINDS}
    salvageable: dict[str, list[str]] = {}
    for s, shard in enumerate(shards):
        name = shard_name(s)
        per_sample = []
        for i, sample in enumerate(shard):
            if (s, i) in undecodable_at:
                sample = {**sample, "mp4": rng.bytes(len(sample["mp4"]))}
                faults["undecodable"].append(sample["__key__"])
            per_sample.append(sample_members(sample))
        for i in sorted(i for t, i in split_at if t == s):
            caption = next(m for m in per_sample[i] if m[0].endswith(".txt"))
            per_sample[i].remove(caption)
            per_sample[i + 1].append(caption)  # after the next sample's members
            faults["split"].append(shard[i]["__key__"])
        members = [m for ms in per_sample for m in ms]
        data = members_tar_bytes(members)
        sums[name] = hashlib.sha256(data).hexdigest()  # a split sample's tar was written so: it checks out
        keys = [x["__key__"] for x in shard]
        middle = len(shard) // 2
        first_of_middle = sum(len(ms) for ms in per_sample[:middle])
        if s in trunc_idx:
            start = _member_offsets(members)[first_of_middle]
            data = data[: start + max(1, len(members[first_of_middle][1]) // 2)]
            faults["truncated"].extend(keys)
            salvageable[name] = keys[:middle]
        elif s in flip_idx:
            mp4 = next(j for j in range(first_of_middle, len(members)) if members[j][0].endswith(".mp4"))
            at = _member_offsets(members)[mp4] + len(members[mp4][1]) // 2
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
            faults["flipped"].extend(keys)
        files[name] = data
    dropped = set(faults["truncated"]) | set(faults["flipped"]) | set(faults["undecodable"])
    good_keys = [x["__key__"] for x in samples if x["__key__"] not in dropped]
    return FaultCorpus(files, sums, faults, good_keys, salvageable, len(samples))


def write_fault_corpus(corpus: FaultCorpus, out_dir: str | Path, manifest: dict | None = None) -> str:
    """The corpus as a clip-shard directory: its shards, then a manifest recording their checksums."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in corpus.shards.items():
        (out / name).write_bytes(data)
    write_manifest(str(out), {"type": "clips", **(manifest or {}), SHA256_FIELD: corpus.sha256})
    return str(out)


def fault_table(corpus: FaultCorpus, manifest: dict) -> str:
    """Injected vs counted, by reason, and samples kept: the figure a run over the corpus reports."""
    rows = [
        f"records {corpus.num_records}, bad {corpus.num_bad} ({100 * corpus.num_bad / corpus.num_records:.1f}%): "
        + ", ".join(f"{k} {len(v)}" for k, v in corpus.faults.items()),
        f"{'reason':<18}{'expected':>9}{'counted':>9}",
    ]
    expected = {**corpus.expected_skips, **corpus.expected_repaired}
    counted = {**manifest.get("skips", {}), **manifest.get("repaired", {})}
    for reason in sorted(set(expected) | set(counted)):
        rows.append(f"{reason:<18}{expected.get(reason, 0):>9}{counted.get(reason, 0):>9}")
    rows.append(f"{'samples kept':<18}{len(corpus.good_keys):>9}{manifest.get('num_samples', 0):>9}")
    return "\n".join(rows)
