"""Activation checkpointing (`modeling.activation_checkpointing`): same gradients, fewer saved activations.

Every model family's repeated blocks are checkpointable; turning it on must not change a single gradient
(the recomputation replays the same ops; dropout is 0 in these presets) and must keep fewer tensors alive
for backward. The trainers switch it on with `TrainConfig.activation_checkpointing` (tested in
test_train_jobs under ZeRO-3).
"""

from __future__ import annotations

import copy

import pytest
import torch

from modeling.activation_checkpointing import Checkpointable, set_activation_checkpointing
from modeling.commit_model import CommitTransformer, commit_transformer_debug
from modeling.cvivit import CViViT, cvivit_debug
from modeling.magvit_vq import MagvitVQ, magvit_vq_debug
from modeling.maskgit import MaskGIT, maskgit_debug


def _maskgit():
    cfg = maskgit_debug(text_dim=8)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.codebook_size + 1, (2, cfg.seq_len), generator=gen)
    text, mask = torch.randn(2, 5, 8, generator=gen), torch.ones(2, 5, dtype=torch.bool)
    return MaskGIT(cfg), lambda m: m(tokens, text, mask).square().mean()


def _cvivit():
    cfg = cvivit_debug()
    video = (
        torch.rand(1, 3, 5, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(2)) * 2
        - 1
    )
    return CViViT(cfg), lambda m: (m(video).recon - video).square().mean()


def _magvit():
    cfg = magvit_vq_debug()
    video = (
        torch.rand(1, 3, 8, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(3)) * 2
        - 1
    )
    return MagvitVQ(cfg), lambda m: (m(video).recon - video).square().mean()


def _commit():
    cfg = commit_transformer_debug()
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(4))
    return CommitTransformer(cfg), lambda m: m(tokens, "fp", torch.tensor([0, 1])).square().mean()


MODELS = {"maskgit": _maskgit, "cvivit": _cvivit, "magvit_vq": _magvit, "commit": _commit}


def _grads(model: torch.nn.Module, loss_fn) -> tuple[float, dict[str, torch.Tensor], int]:
    model.zero_grad(set_to_none=True)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model)
    loss.backward()
    return (
        float(loss.detach()),
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        saved[0],
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointing_keeps_gradients_and_saves_fewer_activations(name: str) -> None:
    torch.manual_seed(0)
    model, loss_fn = MODELS[name]()
    model.train()
    twin = copy.deepcopy(model)  # a training forward may update state (C-ViViT's EMA codebook)
    loss_off, grads_off, saved_off = _grads(model, loss_fn)
    model = twin
    blocks = set_activation_checkpointing(model, True)
    assert blocks >= 2 and all(
        m.checkpoint_activations for m in model.modules() if isinstance(m, Checkpointable)
    )
    loss_on, grads_on, saved_on = _grads(model, loss_fn)
    assert loss_on == loss_off
    assert grads_on.keys() == grads_off.keys() and grads_on
    for key, grad in grads_off.items():
        torch.testing.assert_close(grads_on[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    assert saved_on < saved_off  # activations inside the blocks are recomputed, not kept
    assert set_activation_checkpointing(model, False) == blocks
    assert not any(m.checkpoint_activations for m in model.modules() if isinstance(m, Checkpointable))


def test_checkpointing_is_inert_without_grad_or_in_eval() -> None:
    model, loss_fn = _maskgit()
    set_activation_checkpointing(model, True)
    model.eval()
    with torch.no_grad():
        eval_loss = float(loss_fn(model))
    set_activation_checkpointing(model, False)
    with torch.no_grad():
        assert float(loss_fn(model)) == eval_loss
