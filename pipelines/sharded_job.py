"""The driver `prepare` and `tokenize` share: plan shards, skip the finished ones, make the rest on Ray Data,
then write the manifest once every shard is accounted for.

A job is a set of numbered output shards, each with a digest of everything that shapes it (inputs, settings,
models). A shard is finished when its progress record (`<out>/_progress/shard-NNNNNN.json`, written after its
tar, both atomically) carries the same digest, so a rerun makes only what is missing, and a directory made by
another plan is refused instead of being mixed into (`pipelines.shards.completed_shard`). The manifest is
written last: a reader that finds it finds every shard it lists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.ray_utils import iter_rows_released, progress_note
from pipelines.shard_scan import BadShardError
from pipelines.shards import (
    check_no_foreign_shards,
    completed_shard,
    exists,
    join_uri,
    read_manifest,
    remove_temp_files,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    """What a job will write to `out_dir`: one digest per output shard index, and the plan's own digest (which
    the manifest records, so an unchanged plan with every shard done returns the manifest as it is)."""

    name: str  # the job's name in log lines: "prepare", "tokenize"
    out_dir: str
    digests: dict[int, str]
    plan_digest: str


# A worker's expected refusal (strict mode's damaged shard) comes back as a progress record with this key
# rather than as a Ray Data task error: the driver then ends the stream normally, which shuts the actor pool
# down at once, and raises the refusal itself. A task error instead aborts the stream with the executor
# still referenced from the error's traceback, so the pool (and its CPUs) outlives the failed job.
FAILURE_KEY = "failure"


def run_sharded_job(
    plan: ShardPlan,
    task_row: Callable[[int, str], dict[str, Any]],
    make_shards: Callable[[list[dict[str, Any]]], Iterator[dict[str, Any]]],
    build_manifest: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> dict[str, Any]:
    """Make the shards of `plan` that are not finished; returns the manifest.

    `task_row(index, digest)` is the row a worker gets for one shard; `make_shards(rows)` makes them (on Ray
    Data, see `map_shards`) and yields each shard's progress record as it finishes; `build_manifest(states)`
    turns every shard's record, in index order, into the manifest.
    """
    check_no_foreign_shards(plan.out_dir, set(plan.digests))
    states = {
        i: st for i, d in plan.digests.items() if (st := completed_shard(plan.out_dir, i, d)) is not None
    }
    pending = [task_row(i, d) for i, d in sorted(plan.digests.items()) if i not in states]
    log.info(
        "%s: %d shard(s) planned, %d complete, %d to make",
        plan.name,
        len(plan.digests),
        len(states),
        len(pending),
    )
    manifest_uri = join_uri(plan.out_dir, "manifest.json")
    if not pending and exists(manifest_uri):
        old = read_manifest(plan.out_dir)
        if old.get("plan_digest") == plan.plan_digest:
            log.info("%s: %s is complete; nothing to do", plan.name, plan.out_dir)
            return old
    if pending:
        removed = remove_temp_files(plan.out_dir)
        log.info("%s: removed %d temp file(s) left by an interrupted run", plan.name, removed)
    failure = None
    with contextlib.closing(make_shards(pending)) as finished:
        started = time.monotonic()
        for n, st in enumerate(finished, start=1):
            if FAILURE_KEY in st:
                failure = st[FAILURE_KEY]
                break
            states[st["index"]] = st
            log.info(
                "%s: shard %s done (%d samples, skips %s) %s", plan.name, st["name"], st["num_samples"],
                st["skips"], progress_note(n, len(pending), time.monotonic() - started),
            )  # fmt: skip
    if failure is not None:  # the stream is closed: its workers are gone
        raise BadShardError(failure)
    manifest = build_manifest([states[i] for i in sorted(states)])
    write_manifest(plan.out_dir, manifest)
    log.info(
        "%s: wrote %s: %d samples %s, skips %s", plan.name, manifest_uri, manifest["num_samples"],
        manifest["counts"], manifest["skips"],
    )  # fmt: skip
    return manifest


MAX_SKIP_EXAMPLES = 20  # skip records a manifest keeps (the counts by reason cover every skip)


def shard_totals(states: list[dict[str, Any]], skips: Counter[str] | None = None) -> dict[str, Any]:
    """The manifest fields both jobs derive from the shards' records: sample and skip counts (added to
    `skips`, the job's own skips before any shard), samples kept after a repair (`repaired`), the first
    `MAX_SKIP_EXAMPLES` skip records, and the non-empty shards with their counts and sha256 (what readers
    verify a shard's bytes against; records written before checksums have none)."""
    counts: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    skips = Counter(skips or {})
    examples: list[dict] = []
    for st in states:
        counts.update(st["counts"])
        skips.update(st["skips"])
        repaired.update(st.get("repaired") or {})
        examples.extend((st.get("skipped") or [])[: MAX_SKIP_EXAMPLES - len(examples)])
    made = [st for st in states if st["num_samples"] > 0]
    return {
        "num_samples": sum(counts.values()),
        "counts": {"video": counts.get("video", 0), "image": counts.get("image", 0)},
        "skips": dict(sorted(skips.items())),
        "repaired": dict(sorted(repaired.items())),
        "skipped_examples": examples,
        "shards": [st["name"] for st in made],
        "shard_counts": {st["name"]: {"num_samples": st["num_samples"], **st["counts"]} for st in made},
        "shard_sha256": {st["name"]: st["sha256"] for st in made if st.get("sha256")},
    }


def map_shards(
    rows: list[dict[str, Any]], fn: Any, options: Callable[[dict[str, float]], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Make one shard per row on Ray Data (one block each, so shards spread over the pool) and yield the
    progress records the workers return (`{"state": json}` rows) as they finish.

    `options(cluster_resources)` gives `Dataset.map`'s keyword arguments (the pool, CPUs/GPUs per worker)
    once the cluster is known: this joins `RAY_ADDRESS` when set, else starts a local instance.
    """
    if not rows:
        return
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    # One map stage whose rows are tiny (a shard's plan in, its progress record out): Ray Data's per-operator
    # resource reservation would hold back half the CPUs for downstream operators that do not exist (measured:
    # 1.15 tasks running at once with 2 allowed, benchmarks/prepare_throughput.py).
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(fn, **options(ray.cluster_resources()))
    for row in iter_rows_released(ds):
        yield json.loads(row["state"])
