"""The latent-masking baseline (MAGVIT Table 5): training inputs, loss parts, decoding with a fixed condition."""

from __future__ import annotations

import math

import pytest
import torch

from modeling.commit import commit_debug, commit_inputs
from modeling.commit_model import CommitTransformer, commit_transformer_debug
from modeling.latent_masking import (
    MASKGIT_LOSS_WEIGHTS,
    latent_masking_decode,
    latent_masking_inputs,
    latent_masking_training_step,
)

MASK = 16  # codebook of 16 codes: [MASK] is id 16


def _cond(b: int = 2, n: int = 8, given: int = 3) -> torch.Tensor:
    """(B, N) bool: the first `given` positions are the condition."""
    return (torch.arange(n) < given).expand(b, n).clone()


def test_inputs_hand_built():
    z = torch.arange(8).expand(1, 8).clone()  # (1, 8)
    cond = _cond(1, 8, 3)
    scores = torch.tensor([[0.0, 0.1, 0.2, 0.9, 0.3, 0.8, 0.4, 0.7]])
    inputs, targets, parts = latent_masking_inputs(z, cond, mask_id=MASK, mask_ratio=0.5, scores=scores)
    # n_free = 5, ceil(0.5 * 5) = 3 lowest free scores: positions 4 (0.3), 6 (0.4), 7 (0.7); the condition's
    # lower scores (0.0-0.2) do not count: it is never masked and holds the full video's tokens.
    assert inputs.tolist() == [[0, 1, 2, 3, MASK, 5, MASK, MASK]]
    assert torch.equal(targets, z)
    assert parts.mask.tolist() == [[False] * 4 + [True, False, True, True]]
    assert not parts.refine.any() and torch.equal(parts.recon, ~parts.mask)


def test_inputs_ratio_edges_and_partition():
    z = torch.randint(0, MASK, (3, 8))
    cond = _cond(3, 8, 3)
    cond[2] = False  # no condition at all (cg): plain MaskGIT masking over every position
    full, _, parts = latent_masking_inputs(z, cond, mask_id=MASK, mask_ratio=1.0)
    assert torch.equal(full[:2, 3:], torch.full((2, 5), MASK)) and torch.equal(full[:2, :3], z[:2, :3])
    assert (full[2] == MASK).all()
    tiny, _, parts = latent_masking_inputs(z, cond, mask_id=MASK, mask_ratio=1e-9)
    assert parts.mask.sum(dim=1).tolist() == [1, 1, 1]  # at least one token per row is scored
    assert ((parts.refine.int() + parts.mask.int() + parts.recon.int()) == 1).all()
    assert not (parts.mask & cond).any()


def test_inputs_are_seeded():
    z = torch.randint(0, MASK, (4, 64))
    cond = torch.rand(4, 64) < 0.3

    def run(seed: int) -> torch.Tensor:
        return latent_masking_inputs(z, cond, mask_id=MASK, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_differs_from_commit_at_condition_positions():
    """COMMIT puts z~ (padded video's tokens) at masked condition positions; latent masking keeps z there."""
    z = torch.zeros(1, 8, dtype=torch.long)
    z_cond = torch.full((1, 8), 5)
    cond = _cond(1, 8, 3)
    commit, _, _ = commit_inputs(z, z_cond, cond, mask_id=MASK, mask_ratio=1.0)
    latent, _, _ = latent_masking_inputs(z, cond, mask_id=MASK, mask_ratio=1.0)
    assert commit[0, :3].tolist() == [5, 5, 5] and latent[0, :3].tolist() == [0, 0, 0]
    assert commit[0, 3:].tolist() == latent[0, 3:].tolist() == [MASK] * 5


def test_training_step_scores_masked_positions_only():
    torch.manual_seed(0)
    model = CommitTransformer(commit_transformer_debug(codebook_size=MASK, seq_len=64, grid=(4, 4, 4)))
    z = torch.randint(0, MASK, (4, 64))
    cond = torch.rand(4, 64) < 0.3
    loss, metrics = latent_masking_training_step(
        model, z, cond, "opc", torch.tensor([0, 1, -1, 2]), generator=torch.Generator().manual_seed(0)
    )
    assert math.isfinite(float(loss.detach())) and MASKGIT_LOSS_WEIGHTS == (0.0, 1.0, 0.0)
    assert metrics["refine_fraction"] == 0.0 and metrics["mask_fraction"] > 0
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_decode_keeps_the_condition_and_fills_the_rest():
    b, n = 3, 24
    z_cond = torch.randint(0, MASK, (b, n))
    cond = torch.rand(b, n) < 0.4
    calls = []

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(tokens.clone())
        assert torch.equal(tokens[cond], z_cond[cond])  # the condition is in every pass, never [MASK]
        return torch.randn(b, n, MASK)

    out = latent_masking_decode(
        logits_fn, z_cond, cond, mask_id=MASK, steps=4, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out[cond], z_cond[cond]) and (out < MASK).all()
    assert len(calls) == 4 and (calls[0][~cond] == MASK).all()
    hidden = [int((c == MASK).sum()) for c in calls]
    assert hidden == sorted(hidden, reverse=True) and hidden[0] > hidden[-1]


def test_decode_is_seeded_and_stops_early_when_nothing_is_hidden():
    z_cond = torch.randint(0, MASK, (2, 16))
    calls = []

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.zeros(2, 16, MASK)

    everything = torch.ones(2, 16, dtype=torch.bool)
    assert torch.equal(latent_masking_decode(logits_fn, z_cond, everything, mask_id=MASK), z_cond)
    assert calls == []  # all given: no forward pass
    cond = torch.zeros(2, 16, dtype=torch.bool)

    def run(seed: int) -> torch.Tensor:
        return latent_masking_decode(
            lambda t: torch.randn(2, 16, MASK, generator=torch.Generator().manual_seed(7)),
            z_cond, cond, mask_id=MASK, steps=3, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

    assert torch.equal(run(1), run(1))
    with pytest.raises(ValueError):
        latent_masking_decode(logits_fn, z_cond, cond, mask_id=MASK, steps=0)


def test_commit_defaults_unchanged():
    assert commit_debug().loss_weights == (1.0, 1.0, 1.0)
