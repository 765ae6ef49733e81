"""benchmarks.demo_stages summarises several demo runs: medians of stage times, adherence and tokenizer fidelity."""

from __future__ import annotations

from benchmarks.demo_stages import median_table


def _run(total: float, clean: float, shape: float | None, fidelity_shape: float) -> dict:
    adherence = {
        "clean": clean,
        "colour": clean,
        "shape": shape,
        "motion": clean,
        "colour_every_frame": 0.5,
        "all": 0.1,
    }
    return {
        "timings_s": {"train": total - 1.0, "total": total},
        "process_seconds": total + 2.0,
        "adherence": {"held-out": adherence, "purple": dict(adherence, shape=None)},
        "tokenizer_eval": {
            "psnr_db": total / 10,
            "fidelity": {"clean": 1.0, "colour": 0.9, "shape": fidelity_shape, "motion": 1.0},
        },
    }


def test_median_table_takes_medians_and_skips_unread_attributes() -> None:
    runs = [_run(100.0, 0.5, 0.2, 0.3), _run(300.0, 0.9, None, 0.5), _run(200.0, 0.7, 0.4, 0.4)]
    table = median_table(runs)
    assert table["stage_seconds_median"]["total"] == 200.0
    assert table["stage_seconds_median"]["train"] == 199.0
    assert table["stage_seconds_median"]["process (incl. interpreter + imports)"] == 202.0
    held_out = table["adherence_median"]["held-out"]
    assert held_out["clean"] == 0.7
    assert abs(held_out["shape"] - 0.3) < 1e-9  # the run that read no shape is left out, not counted as 0
    assert "shape" not in table["adherence_median"]["purple"]  # no run read it
    assert table["tokenizer_psnr_db_median"] == 20.0
    assert table["tokenizer_fidelity_median"] == {"clean": 1.0, "colour": 0.9, "shape": 0.4, "motion": 1.0}


def test_seed_overrides_are_valid_demo_overrides() -> None:
    from benchmarks.demo_stages import seed_overrides
    from jobs.config import load_config

    config = load_config("demo", seed_overrides(2))
    assert config["demo"]["seed"] == 2
    assert config["tokenizer_train"]["seed"] == 2 and config["transformer_train"]["seed"] == 2


def test_per_run_tokenizer_summary_drops_per_clip_rows() -> None:
    from benchmarks.demo_stages import tokenizer_summary

    run = {
        "tokenizer_eval": {
            "psnr_db": 30.0,
            "fidelity": {"shape": 0.6, "per_clip": [{}] * 72, "examples": [{}]},
        }
    }
    assert tokenizer_summary(run) == {"psnr_db": 30.0, "fidelity": {"shape": 0.6}}
    assert "per_clip" in run["tokenizer_eval"]["fidelity"]  # the run's own results are left as they are
