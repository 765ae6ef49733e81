"""Resumable training checkpoints: what they carry, how they are saved and reported to Ray Train, and how
a (restarted or rerun) worker group loads them back.

Saving: each rank writes its DeepSpeed shards and a sha256 manifest of them into its own directory, and
`ray.train.report` merges the ranks' directories into `checkpoint-<step>` in the run's storage. Loading:
`restore` takes Ray Train's latest registered checkpoint; `load_engines` verifies every file against the
manifests and loads with weights-only unpickling (`jobs.training.verified_checkpoint`), through DeepSpeed's
universal format when the checkpoint was saved by another number of ranks.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from jobs.training.common import Worker, worker_print

STATE_FILE = "state.json"  # the train state again, as JSON a person can read

# Checkpoint contents. Every engine's DeepSpeed checkpoint carries, in its client state (saved by the
# data-parallel writer, rank 0, and read back by every rank):
#   "train_state": the loop's state (step, the loader position, ...), also written as state.json to read;
#   "rng_states":  rank -> that rank's global RNG states (torch CPU, CUDA when used, numpy, Python `random`).
# The per-step mask/text-drop generators are pure functions of (seed, rank, step) and need no state; the
# global RNGs cover everything else a step may draw from (dropout, a library's own sampling), so a resumed
# step is bit-identical to the uninterrupted run's in fp32.
CLIENT_TRAIN_STATE = "train_state"
CLIENT_RNG_STATES = "rng_states"


def rng_state(device: torch.device | None = None) -> dict:
    """This process's global RNG states, as plain lists and a tensor (no numpy objects in the pickle)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def gather_rng_states(worker: Worker) -> dict[int, dict]:
    """Every rank's RNG states, on every rank (a collective): rank 0 alone writes the client state."""
    mine = rng_state(worker.device)
    if worker.world_size == 1 or not dist.is_initialized():
        return {worker.rank: mine}
    states: list = [None] * worker.world_size
    dist.all_gather_object(states, mine)
    return dict(enumerate(states))


def restore(engines: dict[str, Any]) -> dict | None:
    """Load the latest reported checkpoint into `engines` (all ranks); returns its train state or None.

    Also reinstates this rank's global RNG states saved with it, so the next step draws what the
    uninterrupted run drew.
    """
    import ray.train
    import ray.train.torch

    checkpoint = ray.train.get_checkpoint()  # Ray Train V2: the latest reported one, also after a restart
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        client = load_engines(d, engines)
    state = client.get(CLIENT_TRAIN_STATE)
    if state is None:
        raise RuntimeError(
            f"checkpoint {checkpoint.path} carries no train state: not written by this trainer"
        )
    rank = ray.train.get_context().get_world_rank()
    rngs = client.get(CLIENT_RNG_STATES) or {}
    if rank in rngs:
        set_rng_state(rngs[rank], ray.train.torch.get_device())
    elif rngs:
        worker_print(f"checkpoint {checkpoint.path} has no RNG state for rank {rank}: the RNGs start afresh")
    return dict(state)


def load_engines(directory: str | os.PathLike, engines: dict[str, Any]) -> dict:
    """Verify `directory` against its sha256 manifests, then load each engine's DeepSpeed state from it with
    weights-only unpickling (`jobs.training.verified_checkpoint`); returns the client state.

    A checkpoint saved by another number of ranks is first converted to DeepSpeed's universal format (in a
    temporary directory on this worker) and loaded from that, so a run resumes on fewer or more workers.
    """
    from jobs.training.verified_checkpoint import (
        saved_world_size,
        to_universal,
        verify_checkpoint_dir,
        weights_only_loads,
    )

    verify_checkpoint_dir(directory)  # before any file in it is opened by a loader
    world = dist.get_world_size() if dist.is_initialized() else 1
    resized = saved_world_size(directory) != world
    client: dict = {}
    with weights_only_loads(), tempfile.TemporaryDirectory(prefix="phenaki-universal-") as scratch:
        for name, engine in engines.items():
            source = os.path.join(directory, name)
            if resized:
                source = str(to_universal(os.path.join(source, "state"), os.path.join(scratch, name)))
            engine._config.load_universal_checkpoint = resized  # DeepSpeed reads this flag in load_checkpoint
            path, client_state = engine.load_checkpoint(source, tag="state")
            if path is None:
                raise RuntimeError(f"checkpoint {directory} has no DeepSpeed state for {name!r}")
            client = client or dict(client_state or {})
    return client


def save_and_report(
    engines: dict[str, Any],
    state: dict,
    metrics: dict,
    worker: Worker,
    fault_drill: Callable[[], None] | None = None,
) -> None:
    """Save every engine's DeepSpeed state (each rank writes its shards) and report it: a collective.

    `state` (step, data position, ...) and every rank's RNG states go into the DeepSpeed client state;
    Ray Train registers the directory as checkpoint `checkpoint-<step>` and keeps the last
    `TrainConfig.keep_checkpoints` (CheckpointConfig.num_to_keep in `launch`). `fault_drill` runs after
    this rank's files are written, before the report (the kill-inside-save drill).
    """
    import ray.train

    client_state = {CLIENT_TRAIN_STATE: dict(state), CLIENT_RNG_STATES: gather_rng_states(worker)}
    tmp = tempfile.mkdtemp(prefix="phenaki-ckpt-")
    try:
        if worker.is_main:
            Path(tmp, STATE_FILE).write_text(json.dumps(state))
        save_engines(tmp, engines, client_state, worker)
        if fault_drill is not None:
            fault_drill()
        # Ray merges the workers' directories into one checkpoint directory in storage.
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint-{int(state['step']):08d}",
        )
        # Ray Train V2 registers a reported checkpoint asynchronously: the controller collects the
        # workers' reports when it next polls them. A worker that dies before that poll takes its
        # pending report with it, and the restarted group would start from an older checkpoint (or
        # from scratch). Wait until the checkpoint is committed (registered, and the checkpoint
        # manager's snapshot written to storage, so a rerun driver finds it too).
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_engines(directory: str, engines: dict[str, Any], client_state: dict, worker: Worker) -> None:
    """Every engine's DeepSpeed state under `directory/<name>` and this rank's sha256 manifest of what it
    wrote (`load_engines` verifies it before loading anything)."""
    from jobs.training.verified_checkpoint import write_rank_manifest

    for name, engine in engines.items():
        engine.save_checkpoint(os.path.join(directory, name), tag="state", client_state=client_state)
    write_rank_manifest(directory, worker.rank, worker.world_size)
