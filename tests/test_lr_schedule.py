import math

import pytest

from modeling.lr_schedule import warmup_cosine


def lr(step, **kw):
    args = {"peak_lr": 1e-3, "warmup_steps": 10, "total_steps": 110, "min_ratio": 0.1}
    args.update(kw)
    return warmup_cosine(step, **args)


def test_warmup_is_linear_and_reaches_peak():
    values = [lr(s) for s in range(10)]
    assert values[0] == pytest.approx(1e-4)
    assert values[-1] == pytest.approx(1e-3)
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d == pytest.approx(1e-4) for d in diffs)


def test_cosine_decay_midpoint_and_floor():
    assert lr(10) == pytest.approx(1e-3)
    # halfway through decay: floor + half the range
    assert lr(60) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr(110) == pytest.approx(1e-4)
    assert lr(10_000) == pytest.approx(1e-4)


def test_monotone_decay_after_warmup():
    values = [lr(s) for s in range(10, 111)]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_and_degenerate_total():
    assert warmup_cosine(0, peak_lr=2.0, warmup_steps=0, total_steps=100) == pytest.approx(2.0)
    assert warmup_cosine(50, peak_lr=2.0, warmup_steps=0, total_steps=100) == pytest.approx(1.0)
    # total <= warmup: constant after warm-up instead of dividing by zero
    assert warmup_cosine(7, peak_lr=2.0, warmup_steps=5, total_steps=5) == pytest.approx(2.0)


def test_paper_table_values():
    # tables 6-7: peak 1e-4, 100K warm-up of 1M (tokenizer); the end of the schedule is 0
    kw = {"peak_lr": 1e-4, "warmup_steps": 100_000, "total_steps": 1_000_000}
    assert warmup_cosine(99_999, **kw) == pytest.approx(1e-4)
    assert warmup_cosine(550_000, **kw) == pytest.approx(0.5e-4)
    assert warmup_cosine(1_000_000, **kw) == pytest.approx(0.0, abs=1e-15)
    assert math.isfinite(warmup_cosine(-3, **kw))


@pytest.mark.parametrize("bad", [{"peak_lr": -1.0}, {"warmup_steps": -1}, {"min_ratio": 1.5}])
def test_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        lr(0, **bad)
