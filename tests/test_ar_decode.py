"""The autoregressive baseline of benchmarks/sampling_speed.py: its KV cache is exact, its sampler is sane."""

from __future__ import annotations

import pytest
import torch

from benchmarks.ar_decode import ar_sample, causal_logits, incremental_logits, shifted_inputs
from modeling.maskgit import MaskGIT, maskgit_debug


@pytest.fixture
def model() -> MaskGIT:
    torch.manual_seed(0)
    return MaskGIT(maskgit_debug(code_levels=None, position_embedding="learned")).eval()  # the paper's layout


def text(b: int = 2, length: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 4:] = False
    return torch.randn(b, length, 384, generator=g), mask


@torch.no_grad()
def test_kv_cache_matches_full_causal_forward(model):
    cfg = model.cfg
    t, m = text()
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(1))
    drop = torch.tensor([False, True])  # one conditional row, one unconditional (null-text) row
    context = model.encode_text(t, m, drop)
    full = causal_logits(model, tokens, context)
    step = incremental_logits(model, tokens, context)
    assert full.shape == step.shape == (2, cfg.seq_len, cfg.codebook_size)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_causal_logits_do_not_see_the_future(model):
    t, m = text()
    context = model.encode_text(t, m)
    tokens = torch.randint(0, model.cfg.codebook_size, (2, 40), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % model.cfg.codebook_size
    a, b = causal_logits(model, tokens, context), causal_logits(model, changed, context)
    # Token 20 is the input of position 21, so positions 0..20 are unaffected and 21 onwards change.
    torch.testing.assert_close(a[:, :21], b[:, :21])
    assert not torch.allclose(a[:, 21:], b[:, 21:])
    assert shifted_inputs(model, tokens)[:, 0].eq(model.mask_token_id).all()


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_ar_sample_deterministic_and_valid(model, guidance):
    t, m = text()
    n = model.cfg.seq_len

    def run(seed: int) -> torch.Tensor:
        return ar_sample(
            model, t, m, n, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed)
        )

    a, b = run(0), run(0)
    assert a.shape == (2, n) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert ((a >= 0) & (a < model.cfg.codebook_size)).all()
    assert not torch.equal(a, run(1))


def test_ar_sample_greedy_follows_causal_argmax(model):
    """Greedy AR decoding is a fixed point of the full causal forward (argmax at every position)."""
    t, m = text()
    tokens = ar_sample(model, t, m, 30, temperature=0.0)
    with torch.no_grad():
        logits = causal_logits(model, tokens, model.encode_text(t, m))
    assert torch.equal(logits.argmax(dim=-1), tokens)


def test_ar_sample_rejects_too_long(model):
    t, m = text()
    with pytest.raises(ValueError, match="seq_len"):
        ar_sample(model, t, m, model.cfg.seq_len + 1)
