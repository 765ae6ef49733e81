"""Training checkpoints that load no code: a sha256 manifest per rank, checked before any file is opened,
and DeepSpeed states read with `torch.load(weights_only=True)`.

Why: DeepSpeed's checkpoint engine reads its rank files with `torch.load(weights_only=False)`, a full
unpickler, so whoever can write the run directory or the checkpoint bucket could run code on every trainer
at its next resume. Two independent locks close that:

* Each rank writes `sha256.rank<r>.json` beside what it saved: {relative path: {sha256, bytes}} for every
  file it wrote, plus the world size. Before loading, `verify_checkpoint_dir` requires every rank's manifest,
  every listed file present with its digest and size, and no file that no manifest lists (a planted
  `*.pt` is refused as firmly as a swapped one). A torn checkpoint (a rank died mid-save, a copy cut short)
  fails the same check, so it is never half-loaded. Manifests are JSON: reading them runs nothing.
* While a checkpoint loads, `weights_only_loads` makes every `torch.load` in the process unpickle with
  `weights_only=True`, allowing exactly the three plain-data DeepSpeed classes its optimizer states hold
  (`SAFE_DEEPSPEED_GLOBALS`; measured on ZeRO-0..3, fp32 and bf16). So even a file whose manifest was
  rewritten to match cannot execute code: the unpickler refuses any other global.

A checkpoint saved on another number of ranks is converted with DeepSpeed's universal-checkpoint converter
(`to_universal`, under the same weights-only rule) and loaded from that: resume on fewer or more workers.

What this does not do: authenticate the writer. Someone who can rewrite both a rank file and its manifest
can still change the weights (not run code). Keep the storage writable only by the training job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from modeling.checkpoint import sha256_file

MANIFEST_PREFIX = "sha256.rank"
MANIFEST_SUFFIX = ".json"
# Plain-data classes inside DeepSpeed optimizer states (found with torch.serialization's
# get_unsafe_globals_in_checkpoint on ZeRO-0..3 x fp32/bf16 checkpoints of DeepSpeed 0.19.8).
SAFE_DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


FIX = "delete this checkpoint directory to resume from the previous one, or start a new --out"


class CheckpointVerificationError(RuntimeError):
    """A checkpoint directory that does not match its manifests: nothing in it was loaded."""


def manifest_name(rank: int) -> str:
    return f"{MANIFEST_PREFIX}{rank}{MANIFEST_SUFFIX}"


def _files_under(directory: Path) -> list[str]:
    """Every regular file below `directory`, as sorted POSIX paths relative to it (symlinks refused)."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            if path.is_symlink():
                raise CheckpointVerificationError(
                    f"{path} is a symbolic link: a checkpoint holds regular files only: {FIX}"
                )
        found += [Path(root, name).relative_to(directory).as_posix() for name in files]
    return sorted(found)


def write_rank_manifest(directory: str | Path, rank: int, world_size: int) -> Path:
    """Digest every file this rank wrote under `directory` (its own, not yet merged, save directory)."""
    directory = Path(directory)
    files = {
        rel: {"sha256": sha256_file(directory / rel), "bytes": (directory / rel).stat().st_size}
        for rel in _files_under(directory)
        if not _is_manifest(rel)
    }
    path = directory / manifest_name(rank)
    path.write_text(json.dumps({"rank": rank, "world_size": world_size, "files": files}, indent=1))
    return path


def _is_manifest(rel: str) -> bool:
    return "/" not in rel and rel.startswith(MANIFEST_PREFIX) and rel.endswith(MANIFEST_SUFFIX)


def read_manifests(directory: Path) -> dict[int, dict]:
    manifests: dict[int, dict] = {}
    for path in sorted(directory.glob(f"{MANIFEST_PREFIX}*{MANIFEST_SUFFIX}")):
        try:
            manifest = json.loads(path.read_text())
            manifests[int(manifest["rank"])] = manifest
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointVerificationError(f"{path} is not a readable checkpoint manifest ({e})") from e
    return manifests


def verify_checkpoint_dir(directory: str | Path) -> dict[str, str]:
    """Check `directory` against its rank manifests before anything in it is loaded.

    Returns {relative path: sha256} of the verified files. Raises CheckpointVerificationError naming the
    first file that is missing, changed, resized or unlisted, or the rank whose manifest is missing.
    """
    directory = Path(directory)
    manifests = read_manifests(directory)
    if not manifests:
        raise CheckpointVerificationError(
            f"{directory} has no {MANIFEST_PREFIX}<rank>{MANIFEST_SUFFIX} manifests, so its files cannot be "
            f"verified and are not loaded (a checkpoint from before manifests, or not written by us): {FIX}"
        )
    world_sizes = {int(m.get("world_size", -1)) for m in manifests.values()}
    if len(world_sizes) != 1 or set(manifests) != set(range(world_sizes.pop())):
        raise CheckpointVerificationError(
            f"{directory}: manifests from ranks {sorted(manifests)} do not cover the world that saved it "
            f"(torn or mixed checkpoint): {FIX}"
        )
    expected: dict[str, dict] = {}
    for _, manifest in sorted(manifests.items()):
        for rel, entry in manifest["files"].items():
            if rel in expected and expected[rel]["sha256"] != entry["sha256"]:
                raise CheckpointVerificationError(f"{directory}/{rel}: ranks disagree on its digest: {FIX}")
            expected[rel] = entry
    present = [rel for rel in _files_under(directory) if not _is_manifest(rel)]
    unlisted = sorted(set(present) - set(expected))
    if unlisted:
        raise CheckpointVerificationError(
            f"{directory}/{unlisted[0]} is not in any rank's manifest (a file we did not write): {FIX}"
        )
    for rel, entry in sorted(expected.items()):
        path = directory / rel
        if not path.is_file():
            raise CheckpointVerificationError(
                f"{path} is listed in the manifest but missing (torn save): {FIX}"
            )
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            raise CheckpointVerificationError(
                f"{path} does not match its sha256 in the manifest (changed or truncated since it was saved): "
                f"{FIX}"
            )
    return {rel: entry["sha256"] for rel, entry in expected.items()}


def safe_torch_load(path: str | Path, map_location: Any = None) -> Any:
    """`torch.load` that unpickles tensors and plain data only (plus DeepSpeed's three data classes)."""
    with weights_only_loads():
        return torch.load(path, map_location=map_location)


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within: every `torch.load` in this process unpickles with `weights_only=True`, whatever its caller
    asks for (DeepSpeed's engine, ZeRO-3 and universal-checkpoint loaders all pass `weights_only=False`).
    Only `SAFE_DEEPSPEED_GLOBALS` are allowed beyond tensors and plain data."""
    from torch.serialization import safe_globals

    original = torch.load
    allowed = [_resolve(name) for name in SAFE_DEEPSPEED_GLOBALS]

    def load(f, map_location=None, *args, weights_only=None, **kwargs):  # noqa: ARG001
        with safe_globals(allowed):
            return original(f, map_location, *args, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _resolve(qualified: str) -> Any:
    import importlib

    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def saved_world_size(directory: str | Path) -> int:
    """The number of ranks that saved a verified checkpoint directory (from its manifests)."""
    return len(read_manifests(Path(directory)))


def to_universal(state_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert one engine's DeepSpeed checkpoint (`<engine>/state`, ZeRO-1..3) into DeepSpeed's universal
    format under `out_dir/state`, which loads on any number of ranks (`load_universal_checkpoint`).

    Runs DeepSpeed's own converter in this process (one worker: no process pool) with every read forced to
    weights-only, and its console chatter kept out of the run's log."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint import ds_to_universal

    out = Path(out_dir) / "state"
    args = argparse.Namespace(
        input_folder=str(state_dir),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our client state has no Megatron-style universal_checkpoint_info
    )
    chatter = io.StringIO()
    with weights_only_loads(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        ds_to_universal.main(args)
    return Path(out_dir)
