"""Exact resume of the transformer trainer on a real local Ray cluster (2 CPU workers, ZeRO-2, fp32).

(a) A worker killed mid-run (`fail_at_step`) under `FailureConfig(max_failures=1)`: Ray Train V2 restarts
    the group from the latest checkpoint and the run finishes with the per-step losses and sample ids of an
    uninterrupted twin. (b) A driver SIGKILLed with its own local Ray after its first checkpoint, rerun with
    the same --out: it resumes from that checkpoint and matches the twin too. (c) A run stopped by its time
    budget after step 1 (it checkpoints at the stop), rerun with the same --out: it matches the twin.

Dropout is on, so the steps draw from the global torch RNG: exact only because the checkpoints carry
every rank's RNG states in the DeepSpeed client state.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders import make_token_cache
from test_train_jobs import CODEBOOK, TEXT_DIM, TOKENIZER, read_metrics

from jobs.config import load_config
from jobs.training.checkpointing import rng_state, set_rng_state
from jobs.training.common import TrainConfig, Worker
from jobs.training.faults import FAULT_MARKER, maybe_inject_fault
from jobs.training.metrics import StepRecords, read_step_records
from modeling.checkpoint import save_checkpoint
from modeling.tokenizers import tokenizer_config_from
from pipelines.loaders import TokenBatches, TokenLoaderConfig

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY, FAIL_AT = 12, 4, 6
TOL = 1e-5  # fp32 on CPU; in practice the losses are bit-identical
OVERRIDES = [
    f"transformer_train.steps={STEPS}",
    f"transformer_train.checkpoint_every={EVERY}",
    "transformer_train.keep_checkpoints=2",
    "transformer_train.max_failures=1",
    "transformer_train.record_samples=true",
    "transformer_train.warmup_steps=2",
    "transformer_train.log_every=4",
    "transformer_train.zero_stage=2",
    "transformer_train.precision=fp32",
    "transformer_train.num_workers=2",
    "transformer.dropout=0.1",  # the steps draw from the global torch RNG
    "sampling.context_frames=1",
]


def config(*extra: str) -> dict:
    return load_config("debug", [*OVERRIDES, *extra])


# --------------------------------------------------------------------------------------------- units
def _draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path) -> None:
    saved = rng_state()
    want = _draws()
    torch.save({"rng_states": {0: saved}}, tmp_path / "client.pt")
    loaded = torch.load(tmp_path / "client.pt", weights_only=True)["rng_states"][0]  # plain data only
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    set_rng_state(loaded)
    assert _draws() == want


def test_token_batches_expose_the_keys_of_each_batch(tmp_path) -> None:
    cache = make_token_cache(tmp_path / "tokens", videos=12, images=6, grid=(3, 2, 2))
    cfg = TokenLoaderConfig(batch_size=4, video_fraction=0.5, seed=3)
    seen = []
    for rank in (0, 1):
        loader = TokenBatches(cache, cfg, rank=rank, world_size=2)
        keys = []
        for _ in range(5):
            batch = loader.next_batch()
            assert len(loader.last_keys) == 4
            assert [k.startswith("i") for k in loader.last_keys] == batch["is_image"].tolist()
            keys.append(loader.last_keys)
        replay = TokenBatches(cache, cfg, rank=rank, world_size=2)
        replay.load_state({"position": 3})
        for want in keys[3:]:
            replay.next_batch()
            assert replay.last_keys == want
        seen.append({k for ks in keys for k in ks})
    assert not seen[0] & seen[1]  # ranks draw from disjoint samples


def test_step_records_count_attempts(tmp_path) -> None:
    worker = Worker(1, 2, torch.device("cpu"))
    StepRecords(str(tmp_path), worker, True, restored_from=0).write(1, 0.5, ["a", "b"])
    again = StepRecords(str(tmp_path), worker, True, restored_from=4)
    again.write(5, 0.25, ["c"])
    StepRecords(str(tmp_path), worker, False, restored_from=0).write(6, 0.1, ["d"])  # off: nothing written
    rows = read_step_records(tmp_path, 1)
    assert [(r["step"], r["attempt"], r["restored_from"], r["sample_ids"]) for r in rows] == [
        (1, 0, 0, ["a", "b"]),
        (5, 1, 4, ["c"]),
    ]
    assert rows[0]["rank"] == 1 and rows[1]["loss"] == 0.25


def test_fault_hook_kills_rank_1_once(tmp_path) -> None:
    cfg = TrainConfig(fail_at_step=2)
    maybe_inject_fault(cfg, 2, str(tmp_path), Worker(0, 2, torch.device("cpu")))  # not the failing rank
    maybe_inject_fault(cfg, 1, str(tmp_path), Worker(1, 2, torch.device("cpu")))  # not the step
    maybe_inject_fault(TrainConfig(), 2, str(tmp_path), Worker(1, 2, torch.device("cpu")))  # no drill
    assert not (tmp_path / FAULT_MARKER).exists()
    code = (
        "import sys, torch; from jobs.training.common import TrainConfig, Worker; "
        "from jobs.training.faults import maybe_inject_fault; "
        "maybe_inject_fault(TrainConfig(fail_at_step=2), 2, sys.argv[1], Worker(1, 2, torch.device('cpu')))"
    )
    first = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True)
    assert first.returncode == 1 and json.loads((tmp_path / FAULT_MARKER).read_text())["step"] == 2
    maybe_inject_fault(cfg, 2, str(tmp_path), Worker(1, 2, torch.device("cpu")))  # the marker: no second exit
    with pytest.raises(ValueError, match="fail_at_step"):
        TrainConfig(fail_at_step=0)


def test_fault_hook_fails_fail_times_attempts_then_lets_the_run_go_on(tmp_path) -> None:
    code = (
        "import sys, torch; from jobs.training.common import TrainConfig, Worker; "
        "from jobs.training.faults import maybe_inject_fault; cfg = TrainConfig(fail_at_step=4, fail_in='save', "
        "fail_times=2, checkpoint_every=2); maybe_inject_fault(cfg, 4, sys.argv[1], Worker(1, 2, "
        "torch.device('cpu')), 'step'); maybe_inject_fault(cfg, 4, sys.argv[1], Worker(1, 2, torch.device('cpu')), "
        "'save')"
    )
    codes = [
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO).returncode for _ in range(3)
    ]
    assert codes == [1, 1, 0]  # the "step" call never fires: the drill is set for the save
    assert json.loads((tmp_path / FAULT_MARKER).read_text())["failures"] == 2
    with pytest.raises(ValueError, match="checkpoint step"):
        TrainConfig(fail_at_step=3, fail_in="save", checkpoint_every=2, steps=10)
    with pytest.raises(ValueError, match="fail_in"):
        TrainConfig(fail_in="load")


def test_step_guard_counts_skips_and_halts_only_on_an_applied_nonfinite_update() -> None:
    from types import SimpleNamespace

    from jobs.training.faults import StepGuard

    engine = SimpleNamespace(skipped_steps=0, module=torch.nn.Linear(2, 2))
    guard = StepGuard({"model": engine})
    assert guard.check_step(1, {"loss": 0.5}) == {"skipped_steps": 0.0, "nonfinite": 0.0}
    engine.skipped_steps = 1  # DeepSpeed skipped the NaN step
    assert guard.check_step(2, {"loss": float("nan")}) == {"skipped_steps": 1.0, "nonfinite": 1.0}
    assert guard.halted is None
    assert guard.check_step(3, {"loss": float("inf")})["nonfinite"] == 1.0  # not skipped: applied
    assert guard.halted.startswith("step 3: loss not finite")
    guard = StepGuard({"model": engine})
    assert guard.check_before_save(4, torch.device("cpu"))
    with torch.no_grad():
        engine.module.weight[0, 0] = float("nan")
    assert not guard.check_before_save(5, torch.device("cpu")) and "not saved" in guard.halted


# --------------------------------------------------------------------------------------------- Ray runs
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """(token cache, tokenizer checkpoint). The transformer job reads only the tokenizer's config, frame rate
    and digest, so an untrained export of test_train_jobs' tiny C-ViViT does (no tokenizer training run)."""
    root = tmp_path_factory.mktemp("resume-data")
    family, cfg = tokenizer_config_from(TOKENIZER)
    torch.manual_seed(0)
    digest = save_checkpoint(root / "tokenizer", family.model_cls(cfg), cfg, {"fps": 8.0, "num_frames": 5})
    cache = make_token_cache(
        root / "tokens",
        videos=12,
        images=6,
        grid=(3, 4, 4),
        codebook_size=CODEBOOK,
        text_dim=TEXT_DIM,
        digest=digest,
    )
    return cache, str(root / "tokenizer")


@pytest.fixture(scope="module")
def twin(tmp_path_factory, ray_local, data) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    from jobs.train_transformer import run

    out = tmp_path_factory.mktemp("twin")
    run(config(), data[0], data[1], str(out))
    return out


def last_per_step(rows: list[dict]) -> dict[int, dict]:
    """The surviving row of each step: a re-run step's later row replaces the earlier one."""
    return {row["step"]: row for row in rows}


def assert_matches_twin(out: Path, twin: Path, steps) -> None:
    """Per rank and step: the surviving record's loss within TOL of the twin's, the same sample ids."""
    for rank in (0, 1):
        got = last_per_step(read_step_records(out, rank))
        want = last_per_step(read_step_records(twin, rank))
        assert sorted(want) == list(range(1, STEPS + 1))
        for step in steps:
            assert abs(got[step]["loss"] - want[step]["loss"]) <= TOL, (rank, step)
            assert Counter(got[step]["sample_ids"]) == Counter(want[step]["sample_ids"]), (rank, step)
    got = last_per_step(read_metrics(out))
    want = last_per_step(read_metrics(twin))
    for step in steps:
        assert abs(got[step]["loss"] - want[step]["loss"]) <= TOL, step


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "ray" / "transformer").glob("checkpoint-*"))


@pytest.mark.slow
@pytest.mark.ray
def test_twin_keeps_the_last_two_checkpoints_with_state_and_rngs(twin) -> None:
    assert checkpoints(twin) == ["checkpoint-00000008", "checkpoint-00000012"]  # 4 deleted (keep 2)
    client = torch.load(
        twin / "ray/transformer/checkpoint-00000012/transformer/state/mp_rank_00_model_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    assert client["train_state"] == {"step": STEPS, "data_position": STEPS}
    assert set(client["rng_states"]) == {0, 1}
    assert {"torch", "numpy", "python"} <= set(client["rng_states"][1])


@pytest.mark.slow
@pytest.mark.ray
def test_killed_worker_restarts_from_its_checkpoint_and_matches_the_uninterrupted_run(
    tmp_path, twin, data
) -> None:
    from jobs.train_transformer import run

    out = tmp_path / "killed"
    last = run(config(f"transformer_train.fail_at_step={FAIL_AT}"), data[0], data[1], str(out))
    assert last["step"] == STEPS
    assert json.loads((out / FAULT_MARKER).read_text())["step"] == FAIL_AT

    failed = read_step_records(out, 1)
    first = [r["step"] for r in failed if r["attempt"] == 0]
    again = [r for r in failed if r["attempt"] == 1]
    assert first == list(range(1, FAIL_AT + 1))  # rank 1 died right after step 6
    assert [r["step"] for r in again] == list(range(EVERY + 1, STEPS + 1))  # 5..12 from the step-4 checkpoint
    assert {r["restored_from"] for r in again} == {EVERY}
    assert [r["step"] for r in read_step_records(out, 0) if r["attempt"] == 1][0] == EVERY + 1

    assert_matches_twin(out, twin, range(1, STEPS + 1))
    for rank in (0, 1):  # across the run: no sample lost or repeated relative to the uninterrupted run
        surviving = last_per_step(read_step_records(out, rank)).values()
        uninterrupted = last_per_step(read_step_records(twin, rank)).values()
        assert Counter(k for r in surviving for k in r["sample_ids"]) == Counter(
            k for r in uninterrupted for k in r["sample_ids"]
        )
    assert checkpoints(out) == ["checkpoint-00000008", "checkpoint-00000012"]


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout_s: float) -> str:
    """Poll Ray Train's checkpoint-manager snapshot until it registers a checkpoint; returns its name."""
    snapshot = out / "ray" / "transformer" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the driver exited early ({proc.returncode}), see {out}/driver.log"
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (FileNotFoundError, json.JSONDecodeError):
            latest = None
        if latest:
            return latest["checkpoint_dir_name"]
        time.sleep(0.05)
    raise TimeoutError(f"no checkpoint registered in {timeout_s}s, see {out}/driver.log")


def _session_members(sid: int) -> list[int]:
    """Processes of session `sid`: the driver's own group and the groups Ray starts its workers in."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(stat.parent.name))
    return pids


def _kill_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGKILL the driver's process group (it owns its local Ray), then whatever else its session started
    (Ray gives workers their own groups; they die with the raylet anyway), and wait until all are gone."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    assert not _session_members(proc.pid), "the killed driver's Ray processes outlived it"


@pytest.mark.slow
@pytest.mark.ray
def test_killed_driver_rerun_resumes_from_its_checkpoint(tmp_path, twin, data) -> None:
    from jobs.train_transformer import run

    out = tmp_path / "driver"
    out.mkdir()
    cache, tokenizer = data
    cmd = [sys.executable, "-m", "jobs.train_transformer", "--config", "debug", "--data", cache]
    cmd += ["--tokenizer", tokenizer, "--out", str(out), *OVERRIDES]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray cluster
    with (out / "driver.log").open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            name = _wait_for_checkpoint(out, proc, timeout_s=240)
        finally:
            _kill_group(proc)
    saved = int(name.split("-")[1])
    assert 0 < saved < STEPS, name
    before = len(read_metrics(out))

    last = run(config(), cache, tokenizer, str(out))  # in-process, same --out and run name
    assert last["step"] == STEPS
    resumed = read_metrics(out)[before:]
    assert resumed[0]["step"] > 1  # resumed, not restarted from scratch
    assert [r["step"] for r in resumed] == list(range(resumed[0]["step"], STEPS + 1))
    for rank in (0, 1):
        rerun = [r for r in read_step_records(out, rank) if r["restored_from"] > 0]
        assert rerun and rerun[0]["step"] == rerun[0]["restored_from"] + 1 == resumed[0]["step"]
        assert rerun[0]["restored_from"] >= saved  # the checkpoint seen (or a later one before the kill)
        assert rerun[-1]["step"] == STEPS
    assert_matches_twin(out, twin, range(resumed[0]["step"], STEPS + 1))


@pytest.mark.slow
@pytest.mark.ray
def test_time_budget_stop_then_rerun_continues_the_same_run(tmp_path, twin, data) -> None:
    from jobs.train_transformer import run

    cache, tokenizer = data
    out = tmp_path / "budget"
    run(config("transformer_train.time_budget_s=0"), cache, tokenizer, str(out))
    assert [r["step"] for r in read_metrics(out)] == [1]  # stopped after its first step, checkpointed there
    last = run(config(), cache, tokenizer, str(out))
    assert last["step"] == STEPS
    assert [r["step"] for r in read_metrics(out)] == list(range(1, STEPS + 1))  # step 1 not trained twice
    assert_matches_twin(out, twin, range(1, STEPS + 1))


# --------------------------------------------------------------------------------------------- faults
@pytest.mark.slow
@pytest.mark.ray
def test_a_kill_inside_a_checkpoint_save_resumes_from_the_previous_whole_checkpoint(
    tmp_path, twin, data
) -> None:
    """Rank 1 dies after writing its step-8 files, before Ray registers them (rank 0 may have uploaded its
    part): the restarted group loads the step-4 checkpoint, which verifies, and ends where the twin ended."""
    from jobs.train_transformer import run
    from jobs.training.verified_checkpoint import verify_checkpoint_dir

    out = tmp_path / "killed-in-save"
    drill = ["transformer_train.fail_at_step=8", "transformer_train.fail_in=save"]
    last = run(config(*drill), data[0], data[1], str(out))
    assert last["step"] == STEPS
    assert json.loads((out / FAULT_MARKER).read_text())["where"] == "save"
    again = [r for r in read_step_records(out, 1) if r["attempt"] == 1]
    assert {r["restored_from"] for r in again} == {EVERY}  # the step-4 checkpoint, not the torn step-8 one
    assert [r["step"] for r in again] == list(range(EVERY + 1, STEPS + 1))
    assert_matches_twin(out, twin, range(1, STEPS + 1))
    for name in checkpoints(out):  # every checkpoint left behind is whole
        verify_checkpoint_dir(out / "ray" / "transformer" / name)


@pytest.mark.slow
@pytest.mark.ray
def test_more_failures_than_the_budget_fail_the_run_with_a_nonzero_exit(tmp_path, data) -> None:
    """Two injected failures against max_failures=1: the command exits non-zero once the budget is spent
    (not after a retry that cannot come)."""
    out = tmp_path / "budget"
    cache, tokenizer = data
    cmd = [sys.executable, "-m", "jobs.train_transformer", "--config", "debug", "--data", cache]
    cmd += ["--tokenizer", tokenizer, "--out", str(out), *OVERRIDES]
    cmd += [
        "transformer_train.fail_at_step=2",
        "transformer_train.fail_times=2",
        "transformer_train.max_failures=1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray cluster
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode != 0, done.stdout[-2000:]
    marker = json.loads((out / FAULT_MARKER).read_text())
    assert marker["failures"] == 2  # the first attempt and its one restart both died
    assert "FAILED" in done.stderr and "max_failures=1" in done.stderr, done.stderr[-3000:]
    print(f"seconds to FAILED (2 failures, max_failures=1, incl. Ray start): {seconds:.1f}")


@pytest.mark.slow
@pytest.mark.ray
def test_a_nan_loss_step_is_skipped_and_counted(tmp_path, data) -> None:
    """ZeRO-2 fp32 with clipping: DeepSpeed skips the NaN step (the weights stay), the run goes on, every
    later metric is finite and the export holds finite weights."""
    from safetensors.torch import load_file

    from jobs.train_transformer import run

    out = tmp_path / "nan-skip"
    run(config("transformer_train.nan_at_step=3", "transformer_train.steps=5"), data[0], data[1], str(out))
    rows = {r["step"]: r for r in read_metrics(out)}
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert rows[3]["nonfinite"] == 1.0 and rows[3]["skipped_steps"] == 1.0
    assert all(rows[s]["nonfinite"] == 0.0 and np.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5))
    assert rows[2]["skipped_steps"] == 0.0 and rows[5]["skipped_steps"] == 1.0
    weights = load_file(str(out / "model.safetensors"))
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


@pytest.mark.slow
@pytest.mark.ray
def test_a_nan_step_nothing_skips_halts_the_run_before_anything_is_saved(tmp_path, data) -> None:
    """ZeRO-0 applies the NaN update of step 3: the run halts within one step (step 4's loss is NaN), saves and
    exports nothing after its last finite checkpoint (2), and the driver raises naming the step and the fix;
    a rerun without the fault resumes from step 2."""
    from jobs.train_transformer import run
    from jobs.training.faults import HALT_FILE, NonFiniteTrainingError

    out = tmp_path / "nan-halt"
    drill = [
        "transformer_train.zero_stage=0",
        "transformer_train.checkpoint_every=2",
        "transformer_train.steps=5",
    ]
    with pytest.raises(NonFiniteTrainingError, match=r"step [34]: .*Lower peak_lr"):
        run(config(*drill, "transformer_train.nan_at_step=3"), data[0], data[1], str(out))
    halted_at = [r["step"] for r in read_metrics(out)][-1]
    assert halted_at in (3, 4)  # the NaN step itself, or the next, whose loss the NaN weights poison
    assert checkpoints(out) == ["checkpoint-00000002"]  # nothing saved after the NaN step
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / HALT_FILE).read_text())["last_checkpoint_step"] == 2
    last = run(config(*drill), data[0], data[1], str(out))  # the fix applied: no more NaN
    assert last["step"] == 5 and not (out / HALT_FILE).exists()
    assert [r["step"] for r in read_metrics(out)] == [*range(1, halted_at + 1), 3, 4, 5]  # again from step 2
