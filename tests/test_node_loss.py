"""Node loss, as a cluster user meets it: a two-node local Ray cluster (`ray.cluster_utils.Cluster`, both nodes
on this machine) loses the node that holds a worker mid-run. `prepare` still finishes with every sample written
exactly once and nothing partial visible; an elastic training run (min_workers=1) restarts on the node that is
left, one worker instead of two, from its last checkpoint (through a universal checkpoint), and exports."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_resume import config, data  # noqa: F401  (data: the module fixture this file's training test uses)

from jobs.training.metrics import read_step_records
from pipelines.prepare import PrepareConfig, prepare
from pipelines.shards import file_sha256, read_manifest, read_shard
from pipelines.synth import synthesize

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# 1 CPU per node: a 1-CPU task or train worker per node, so the work is spread over both and the one on the
# removable node is really lost with it (the Ray Train controller asks for 0 CPUs and sits on the driver's node).
NODE_CPUS = 1
STEPS, EVERY = 12, 2


def wait_for(predicate, timeout_s: float, what: str, failed=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if failed is not None and failed.done():
            failed.result()  # raises the run's own error
            raise AssertionError(f"the run finished before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def worker_titles(node) -> list[str]:
    """Process titles of the Ray workers a node's raylet started (Ray sets them to `ray::<what runs>`), read from
    /proc: whether a task or train worker is on that node right now."""
    raylet = node.all_processes["raylet"][0].process.pid
    titles = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == raylet:
                titles.append(
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
        except (OSError, IndexError, ValueError):
            continue
    return titles


@pytest.fixture(scope="module")
def cluster():
    """A head node (the driver's) and one removable worker node, the driver connected through `init_ray`.

    Any Ray this process is connected to (the session's `ray_local`, when an earlier module started it) is
    shut down first, and started again afterwards the way `ray_local` starts it, so later modules find it."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        enable_token_auth_by_default,
        ensure_token_if_auth_enabled,
    )
    from ray.cluster_utils import Cluster

    from jobs.runtime import init_ray

    had_session_ray = ray.is_initialized()
    ray.shutdown()
    # What `ray.init()` does for a new local cluster (Ray 2.60): token auth on, a token made if none exists.
    # Cluster's nodes are started without `ray.init`, so without this they run without auth unless an earlier
    # `ray.init` in this process happened to set RAY_AUTH_MODE; now both orders give the same cluster.
    enable_token_auth_by_default()
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    # A killed node is declared dead after missed health checks (default 5 x 3 s); a quick check (5 x 0.2 s)
    # gets Ray's view of the cluster right within a second of the loss.
    health = {"health_check_period_ms": 200, "health_check_failure_threshold": 5}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "_system_config": health})
    try:
        c.add_node(num_cpus=NODE_CPUS)
        init_ray(address=c.address)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if had_session_ray:
            init_ray(num_cpus=max(2, os.cpu_count() or 2))  # as tests/conftest.py's ray_local


def the_worker_node(cluster):
    """The removable node, re-added when an earlier test removed it; waits until Ray sees all its CPUs."""
    import ray

    if not cluster.worker_nodes:
        cluster.add_node(num_cpus=NODE_CPUS)
    wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2 * NODE_CPUS, 60, "both nodes' CPUs free")
    return next(iter(cluster.worker_nodes))


def test_prepare_finishes_without_loss_or_doubles_when_a_node_dies(tmp_path, cluster) -> None:
    src = synthesize(tmp_path / "src", num_videos=12, num_images=8, seed=5)
    sources = [str(src.webvid_csv), str(src.laion_parquet)]
    out = tmp_path / "out"
    cfg = PrepareConfig(size=32, num_frames=9, samples_per_shard=2, num_workers=2)  # 10 shards
    node = the_worker_node(cluster)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(prepare, sources, str(out), cfg)
        # Mid-run, with a shard task running on the node: some shards done, not all, and one lost with the node.
        wait_for(
            lambda: (
                any("make_shard" in t for t in worker_titles(node))
                and 1 <= len(list((out / "_progress").glob("*.json"))) < 10
            ),
            240,
            "a shard task on the worker node with some shards done",
            failed=run,
        )
        done_before = len(list((out / "_progress").glob("*.json")))
        cluster.remove_node(node, allow_graceful=False)  # SIGKILL: the node is gone, not drained
        manifest = run.result(timeout=600)

    assert done_before < 10
    assert manifest == read_manifest(str(out))
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == manifest["shards"]
    for p in shards:  # each shard whole: the bytes the manifest records
        assert file_sha256(str(p)) == manifest["shard_sha256"][p.name]
    keys = [s["__key__"] for p in shards for s in read_shard(str(p))]
    # Every source row once: 12 videos (one clip each) and 8 images, none lost with the node, none written twice.
    assert len(keys) == len(set(keys)) == manifest["num_samples"] == 20
    assert manifest["counts"] == {"video": 12, "image": 8} and not manifest["skips"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no partial file left visible


def test_training_resumes_on_the_node_that_is_left(tmp_path, monkeypatch, cluster, data) -> None:  # noqa: F811
    from jobs.train_transformer import run as train

    # Ray Train's first restart after the loss still counts the dead node's CPU (its autoscaling coordinator's
    # view lags), asks for 2 workers and waits out the worker-group start timeout (default 60 s) before the
    # next try settles for 1. A shorter timeout (read by the controller, which the driver's env reaches) keeps
    # that wait short; the first, healthy start takes a few seconds.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")

    cache, tokenizer = data
    out = tmp_path / "train"
    overrides = [
        f"transformer_train.steps={STEPS}",
        f"transformer_train.checkpoint_every={EVERY}",
        "transformer_train.min_workers=1",  # elastic: 2 workers wanted, 1 enough
        "transformer_train.max_failures=1",
    ]
    node = the_worker_node(cluster)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(train, config(*overrides), cache, tokenizer, str(out))
        snapshot = out / "ray" / "transformer" / "checkpoint_manager_snapshot.json"

        def registered() -> bool:
            import json

            try:
                return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
            except (FileNotFoundError, ValueError):
                return False

        # A checkpoint registered while a train worker runs on the node: its loss kills a rank mid-run.
        wait_for(
            lambda: registered() and any("RayTrainWorker" in t for t in worker_titles(node)),
            300,
            "a registered checkpoint with a train worker on the worker node",
            failed=run,
        )
        cluster.remove_node(node, allow_graceful=False)
        last = run.result(timeout=600)

    assert last["step"] == STEPS
    rank0, rank1 = read_step_records(out, 0), read_step_records(out, 1)
    # The first attempt ran on two ranks; the restart on one (rank 1 never trained again).
    assert {r["attempt"] for r in rank1} == {0}
    first = [r for r in rank0 if r["attempt"] == 0]
    again = [r for r in rank0 if r["attempt"] == 1]
    assert again, "rank 0 never restarted: the run ended before the node was removed"
    assert first and [r["step"] for r in first] == [r["step"] for r in rank1]
    saved = again[0]["restored_from"]
    assert saved > 0 and saved % EVERY == 0 and {r["restored_from"] for r in again} == {saved}
    assert saved <= first[-1]["step"]  # a checkpoint the first attempt wrote
    assert [r["step"] for r in again] == list(range(saved + 1, STEPS + 1))  # resumed, nothing skipped
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
