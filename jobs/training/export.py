"""What a finished run leaves for serving: the weights gathered from DeepSpeed into a plain fp32 model and
written as a serving checkpoint (`modeling.checkpoint`), and, for a transformer, a copy of its tokenizer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from jobs.training.common import Worker

CHECKPOINT_FILES = ("model.safetensors", "config.yaml", "digest.txt")


def gathered_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full fp32 CPU weights of the engine's module, on every rank (a collective under ZeRO-3)."""
    module = engine.module
    if zero_stage == 3:
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def export_serving(
    engine,
    build: Callable[[], nn.Module],
    config: Any,
    directory: str,
    worker: Worker,
    zero_stage: int,
    extra: dict | None = None,
) -> str | None:
    """Write a serving checkpoint from rank 0 (all ranks must call: ZeRO-3 gathers). Returns the digest there.

    Weights go into a freshly built fp32 model so the export is independent of training precision and of
    DeepSpeed's parameter wrappers.
    """
    from modeling.checkpoint import save_checkpoint

    state = gathered_state_dict(engine, zero_stage)
    digest = None
    if worker.is_main:
        model = build()
        model.load_state_dict(state)
        # save_checkpoint carries over the run's own files (metrics.jsonl, run_config.yaml) in `directory`.
        digest = save_checkpoint(directory, model, config, extra)
    if dist.is_initialized():
        dist.barrier()
    return digest


def copy_tokenizer(src: str, dst: str) -> None:
    """A transformer checkpoint carries its tokenizer: only the serving files, atomically (the tokenizer's own
    training state, ray/ and metrics, stays behind)."""
    dst_path = Path(dst)
    tmp = dst_path.with_name(dst_path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(Path(src) / name, tmp / name)
    shutil.rmtree(dst_path, ignore_errors=True)
    tmp.rename(dst_path)
