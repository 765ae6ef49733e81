"""Training checkpoints load no code and come back whole (`jobs.training.verified_checkpoint`).

Unit tests check the manifest rules on plain files. The DeepSpeed tests run real engines in real processes
(a gloo group, no Ray: the checks are about DeepSpeed's files, and bare processes are the cheapest ranks):
two ranks train a tiny MaskGIT under ZeRO-2 and ZeRO-3 and save through `save_engines`; then
* every file kind of that checkpoint, swapped for a pickle whose `__reduce__` creates a sentinel file, is
  refused before it is opened (manifest) and, with the manifest rewritten to match, by the weights-only
  unpickler inside DeepSpeed's own load path; the sentinel never appears;
* fresh engines on two ranks load it back: parameters within 1e-7, optimizer states and DeepSpeed's step
  counters equal, and the next steps' losses equal the uninterrupted run's;
* one rank loads each two-rank checkpoint (converted to DeepSpeed's universal format on the fly) and its
  next losses match the two-rank run's within 1e-3 relative (both see the same batches, so the averaged
  gradient is the same).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from jobs.training.checkpointing import load_engines
from jobs.training.verified_checkpoint import (
    CheckpointVerificationError,
    manifest_name,
    safe_torch_load,
    sha256_file,
    verify_checkpoint_dir,
    write_rank_manifest,
)

STAGES = (2, 3)
TRAIN_STEPS, MORE_STEPS = 3, 2


class Payload:
    """Unpickling this creates `path`: the proof that a load ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_payload(path: Path, sentinel: Path) -> None:
    torch.save({"module": Payload(str(sentinel))}, path)


# --------------------------------------------------------------------------------------------- units
def _fake_checkpoint(root: Path) -> Path:
    for rank in (0, 1):
        rank_dir = root / f"rank{rank}"
        (rank_dir / "model" / "state").mkdir(parents=True)
        (rank_dir / "model" / "state" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(os.urandom(64))
        if rank == 0:
            (rank_dir / "model" / "state" / "mp_rank_00_model_states.pt").write_bytes(os.urandom(64))
        (rank_dir / "model" / "latest").write_text("state")  # both ranks write the same file
        write_rank_manifest(rank_dir, rank, 2)
    merged = root / "merged"  # what Ray's merge of the workers' directories looks like
    for rank in (0, 1):
        shutil.copytree(root / f"rank{rank}", merged, dirs_exist_ok=True)
    return merged


def test_a_whole_checkpoint_verifies(tmp_path) -> None:
    files = verify_checkpoint_dir(_fake_checkpoint(tmp_path))
    assert sorted(files) == [
        "model/latest",
        "model/state/mp_rank_00_model_states.pt",
        "model/state/zero_pp_rank_0_optim_states.pt",
        "model/state/zero_pp_rank_1_optim_states.pt",
    ]


@pytest.mark.parametrize("fault", ["flip", "truncate", "delete", "plant", "no_manifest", "lost_rank", "link"])
def test_a_changed_checkpoint_is_refused_naming_the_file(tmp_path, fault) -> None:
    ckpt = _fake_checkpoint(tmp_path)
    target = ckpt / "model" / "state" / "zero_pp_rank_1_optim_states.pt"
    if fault == "flip":
        data = bytearray(target.read_bytes())
        data[10] ^= 1
        target.write_bytes(bytes(data))
    elif fault == "truncate":
        target.write_bytes(target.read_bytes()[:-1])
    elif fault == "delete":
        target.unlink()
    elif fault == "plant":
        target = ckpt / "model" / "state" / "extra_model_states.pt"
        target.write_bytes(b"x")
    elif fault == "no_manifest":
        for rank in (0, 1):
            (ckpt / manifest_name(rank)).unlink()
    elif fault == "lost_rank":
        (ckpt / manifest_name(1)).unlink()
    elif fault == "link":
        target.unlink()
        target.symlink_to(ckpt / "model" / "latest")
    with pytest.raises(CheckpointVerificationError) as refused:
        verify_checkpoint_dir(ckpt)
    message = str(refused.value)
    if fault in ("flip", "truncate", "delete", "plant", "link"):
        assert str(target.relative_to(ckpt)) in message
    assert "previous one" in message  # the fix: resume from the checkpoint before


def test_safe_load_refuses_a_pickle_payload_and_runs_nothing(tmp_path) -> None:
    sentinel = tmp_path / "ran"
    write_payload(tmp_path / "evil.pt", sentinel)
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(tmp_path / "evil.pt")
    assert not sentinel.exists()


# --------------------------------------------------------------------------------------------- DeepSpeed ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int, cfg):
    """The same batch on every rank (so one rank's gradient equals two ranks' average)."""
    gen = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.seq_len), generator=gen)
    return tokens, torch.randn(2, 4, 8, generator=gen), torch.ones(2, 4, dtype=torch.bool), gen


def _train(engine, cfg, steps: range) -> list[float]:
    from modeling.masking import mvtm_loss

    losses = []
    for step in steps:
        tokens, text, text_mask, gen = _batch(step, cfg)
        loss, _ = mvtm_loss(engine, tokens, text, text_mask, torch.full((2,), cfg.seq_len), generator=gen)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return losses


def _engine(stage: int, world: int, seed: int):
    from jobs.training.common import TrainConfig, build_engine
    from modeling.maskgit import MaskGIT, maskgit_debug

    cfg = TrainConfig(zero_stage=stage, batch_size=2, num_workers=world, peak_lr=1e-2, seed=seed)
    model_cfg = maskgit_debug(text_dim=8)
    torch.manual_seed(seed)
    return build_engine(lambda: MaskGIT(model_cfg), cfg, world), model_cfg


def _optimizer_state(engine) -> dict:
    return _plain(engine.optimizer.state_dict())


def _plain(value):
    """Comparable form of an optimizer state: tensors as lists, objects as their attribute dicts."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return value if isinstance(value, int | float | str | bool | type(None)) else repr(value)


def _rank_main(rank: int, world: int, port: int, root: str, job: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    report = {stage: JOBS[job](Path(root), stage, rank, world) for stage in STAGES}
    Path(root, f"{job}-rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def _save(root: Path, stage: int, rank: int, world: int) -> dict:
    """Train, save, record what was saved, train on (the uninterrupted run's next losses)."""
    from jobs.training.checkpointing import save_engines
    from jobs.training.common import Worker
    from jobs.training.export import gathered_state_dict

    engine, cfg = _engine(stage, world, seed=0)
    _train(engine, cfg, range(TRAIN_STEPS))
    ckpt = root / f"{'single-' if world == 1 else ''}zero{stage}"
    save_engines(
        str(ckpt), {"model": engine}, {"train_state": {"step": TRAIN_STEPS}}, Worker(rank, world, "cpu")
    )
    saved = {
        "weights": {k: v.tolist() for k, v in gathered_state_dict(engine, stage).items()},
        "optimizer": _optimizer_state(engine),
        "counters": [engine.global_steps, engine.skipped_steps],
    }
    Path(root, f"saved-{ckpt.name}-rank{rank}.json").write_text(json.dumps(saved))
    return {"losses": _train(engine, cfg, range(TRAIN_STEPS, TRAIN_STEPS + MORE_STEPS))}


def _load(root: Path, stage: int, rank: int, world: int) -> dict:
    """Fresh engines (other initial weights) load the two-rank checkpoint: how close they come, then train on."""
    from jobs.training.checkpointing import load_engines
    from jobs.training.export import gathered_state_dict

    engine, cfg = _engine(stage, world, seed=1)
    client = load_engines(str(root / f"zero{stage}"), {"model": engine})
    saved = json.loads(Path(root, f"saved-zero{stage}-rank{rank}.json").read_text())
    weights = gathered_state_dict(engine, stage)
    return {
        "max_weight_diff": max(
            float((weights[k] - torch.tensor(v)).abs().max()) for k, v in saved["weights"].items()
        ),
        "optimizer_equal": _optimizer_state(engine) == saved["optimizer"],
        "counters": [engine.global_steps, engine.skipped_steps],
        "counters_equal": [engine.global_steps, engine.skipped_steps] == saved["counters"],
        "client": client["train_state"],
        "losses": _train(engine, cfg, range(TRAIN_STEPS, TRAIN_STEPS + MORE_STEPS)),
    }


def _single(root: Path, stage: int, rank: int, world: int) -> dict:
    """One rank: its own checkpoint with each rank file swapped for a payload that the manifest vouches for,
    through DeepSpeed's load path; then the two-rank checkpoint resumed on this one rank."""
    from jobs.training.checkpointing import load_engines

    _save(root, stage, rank, world)
    ckpt = root / f"single-zero{stage}"
    sentinel = root / "payload-ran"
    engine, cfg = _engine(stage, world, seed=1)
    refused = {}
    for rel in _rank_files(ckpt):
        copy = root / "tampered"
        shutil.copytree(ckpt, copy)
        write_payload(copy / rel, sentinel)
        vouch_for(copy, rel)
        try:
            load_engines(str(copy), {"model": engine})
            refused[rel] = "loaded"
        except Exception as e:  # noqa: BLE001  (the test asserts which error each one raised)
            refused[rel] = type(e).__name__
        shutil.rmtree(copy)
    engine, cfg = _engine(stage, world, seed=1)
    load_engines(str(root / f"zero{stage}"), {"model": engine})  # saved by two ranks: via universal
    return {
        "refused": refused,
        "sentinel": sentinel.exists(),
        "counters": [engine.global_steps, engine.skipped_steps],
        "losses": _train(engine, cfg, range(TRAIN_STEPS, TRAIN_STEPS + MORE_STEPS)),
    }


def _save_then_load(root: Path, stage: int, rank: int, world: int) -> dict:
    """The two-rank job: save, then fresh engines in the same process group load it back."""
    return {"saved": _save(root, stage, rank, world), "loaded": _load(root, stage, rank, world)}


JOBS = {"save": _save_then_load, "single": _single}


def vouch_for(ckpt: Path, rel: str) -> None:
    """Rewrite the manifest entry of `rel` to match its current bytes (an attacker with write access)."""
    for manifest in ckpt.glob("sha256.rank*.json"):
        entry = json.loads(manifest.read_text())
        if rel in entry["files"]:
            path = ckpt / rel
            entry["files"][rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            manifest.write_text(json.dumps(entry))


def _rank_files(ckpt: Path) -> list[str]:
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*.pt"))


def _run(job: str, world: int, root: Path) -> list[dict]:
    mp.start_processes(
        _rank_main, args=(world, _free_port(), str(root), job), nprocs=world, start_method="spawn"
    )
    return [
        {int(k): v for k, v in json.loads((root / f"{job}-rank{r}.json").read_text()).items()}
        for r in range(world)
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The two-rank run: its checkpoints (ZeRO-2 and -3) and, per rank and stage, the losses the saving
    engines went on to ("saved") and what fresh engines that loaded the checkpoint found ("loaded")."""
    root = tmp_path_factory.mktemp("ds-checkpoints")
    return root, _run("save", 2, root)


@pytest.fixture(scope="module")
def single(saved) -> dict:
    (report,) = _run("single", 1, saved[0])
    return report


@pytest.mark.slow
def test_every_rank_file_swapped_for_a_payload_is_refused_before_it_is_read(saved, tmp_path) -> None:
    root, _ = saved
    sentinel = tmp_path / "payload-ran"
    for stage in STAGES:
        ckpt = root / f"zero{stage}"
        kinds = _rank_files(ckpt)  # model states, and each rank's optimizer states
        assert any("model_states" in k for k in kinds) and sum("optim_states" in k for k in kinds) == 2
        for i, rel in enumerate(kinds):
            copy = tmp_path / f"zero{stage}-{i}"
            shutil.copytree(ckpt, copy)
            write_payload(copy / rel, sentinel)
            with pytest.raises(CheckpointVerificationError, match=rel):
                load_engines(str(copy), {})  # refused by the manifest before any engine reads a file
    assert not sentinel.exists()


@pytest.mark.slow
def test_a_payload_the_manifest_vouches_for_is_refused_by_the_weights_only_load(single) -> None:
    for stage in STAGES:
        refused = single[stage]["refused"]
        assert any("model_states" in k for k in refused) and any("optim_states" in k for k in refused)
        assert set(refused.values()) == {"UnpicklingError"}, refused
        assert not single[stage]["sentinel"]


@pytest.mark.slow
def test_zero_state_round_trips_exactly(saved) -> None:
    _, reports = saved
    for stage in STAGES:
        for rank, report in enumerate(reports):
            got, before = report[stage]["loaded"], report[stage]["saved"]
            assert got["max_weight_diff"] <= 1e-7, (stage, rank)
            assert got["optimizer_equal"], (stage, rank)
            assert got["counters_equal"] and got["counters"][0] == TRAIN_STEPS, (stage, rank)
            assert got["client"] == {"step": TRAIN_STEPS}
            assert got["losses"] == before["losses"], (stage, rank)  # bit-identical steps on


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_one_rank(saved, single) -> None:
    _, before = saved
    for stage in STAGES:
        want, got = before[0][stage]["saved"]["losses"], single[stage]["losses"]
        assert single[stage]["counters"][0] == TRAIN_STEPS, stage
        for g, w in zip(got, want, strict=True):
            assert abs(g - w) <= 1e-3 * abs(w), (stage, got, want)
