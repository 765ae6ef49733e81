"""`python -m benchmarks`: the report rendered from the committed JSONs, the CLI's --render and --only paths,
and one quick benchmark run through the suite as a subprocess (no timing thresholds)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from benchmarks import report, suite
from benchmarks.__main__ import main

SECTIONS = {"sampling", "tokenizer", "peer", "prepare", "training", "serve", "demo", "demo_quality", "detector",
            "ablation", "magvit", "metrics", "gpu"}  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The report rendered from benchmarks/results/ into a temporary directory."""
    out = tmp_path_factory.mktemp("report") / "RESULTS.md"
    sections = report.render(suite.RESULTS_DIR, out)
    return out, sections


def test_renderer_covers_every_section_and_names_machine_date_baseline(committed) -> None:
    out, sections = committed
    assert {s.key for s in sections} == SECTIONS
    text = out.read_text()
    assert text.startswith("# Benchmark results") and "## Summary" in text
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    for s in sections:
        assert f"## {s.title}" in text
        assert s.rows, s.key
        for r in s.rows:
            assert r.machine and r.date and r.baseline and r.ratio and r.source, (s.key, r)
            assert r.figure in summary, r.figure
            if "not measured" not in r.machine:
                assert "CPUs" in r.machine and r.date[:4].isdigit(), r
    # The JSONs measured on this project's CPU machine name it; old ones without a date carry the git date, marked.
    training = next(s for s in sections if s.key == "training")
    assert all("AMD EPYC" in r.machine or "CPU" in r.machine for r in training.rows)


def test_plots_are_written_and_embedded_as_valid_pngs(committed) -> None:
    out, sections = committed
    plots = report.plots_dir_for(out)
    embedded = [name for s in sections for name, _ in s.plots]
    assert {"sampling_vs_steps.png", "prepare_throughput.png", "training_throughput.png", "serve_batching.png",
            "demo_stages.png"} <= set(embedded)  # fmt: skip
    text = out.read_text()
    for name in embedded:
        width, height = png_size(plots / name)
        assert width > 100 and height > 100
        assert f"(plots/{name})" in text


def test_gpu_rows_say_not_measured_without_gpu_data(committed) -> None:
    out, sections = committed
    training = json.loads((suite.RESULTS_DIR / "training.json").read_text())
    gpu = next(s for s in sections if s.key == "gpu")
    assert len(gpu.rows) == 4
    has_gpu_run = "mfu" in training.get("gpu", {})
    for i, r in enumerate(gpu.rows):
        if i == 0 and has_gpu_run:
            assert "MFU" in r.value
        else:
            assert r.value.startswith(report.NOT_MEASURED_GPU), r.value


def test_a_gpu_measurement_in_training_json_fills_its_row(tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    training = json.loads((suite.RESULTS_DIR / "training.json").read_text())
    training["date"] = "2030-01-02"
    training["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    training["gpu"] = {"mfu": 0.41, "tokens_per_s": 12345.0, "peak_source": "dense bf16 datasheet peak",
                       "cuda": {"name": "NVIDIA H100 80GB HBM3"}, "deepspeed_gib": {"module_parameters": 0.2}}  # fmt: skip
    (results / "training.json").write_text(json.dumps(training))
    sections = report.render(results, tmp_path / "R.md")
    gpu = next(s for s in sections if s.key == "gpu")
    assert "MFU 0.41" in gpu.rows[0].value and "H100" in gpu.rows[0].figure
    assert gpu.rows[0].date == "2030-01-02" and "H100" in gpu.rows[0].machine
    assert all(r.value.startswith(report.NOT_MEASURED_GPU) for r in gpu.rows[1:])
    # Benchmarks with no JSON in this directory render a row saying so, not an error.
    sampling = next(s for s in sections if s.key == "sampling")
    assert all("not run yet" in r.value for r in sampling.rows)


def test_peer_rows_show_the_speed_up_and_the_goal(tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    row = {"ours": {"seconds_median": 1.0}, "peer": {"seconds_median": 3.5}, "clips_per_call": 1,
           "ours_faster_by": 3.5, "goal_faster_by": 3.0, "goal_met": True}  # fmt: skip
    enc = {
        **row,
        "peer": {"seconds_median": 1.5},
        "ours_faster_by": 1.5,
        "goal_faster_by": 2.0,
        "goal_met": False,
    }
    peer = {"date": "2026-12-08T03:00:00Z", "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "gpu": None},
            "peer": {"version": "0.4.2"}, "configuration": {"name": "tiny", "seq_len": 80},
            "rows": {"sample": row, "encode": enc}}  # fmt: skip
    (results / "peer_comparison.json").write_text(json.dumps(peer))
    sections = report.render(results, tmp_path / "R.md")
    rows = next(s for s in sections if s.key == "peer").rows
    assert [r.figure.split(",")[0] for r in rows] == ["sample", "encode"]
    assert "3.50x the peer's speed (goal >= 3x: met)" in rows[0].ratio
    assert "1.50x the peer's speed (goal >= 2x: not met)" in rows[1].ratio
    assert rows[0].date == "2026-12-08" and "0.4.2" in rows[0].baseline


def test_dates_fall_back_to_git_then_file_time(tmp_path) -> None:
    tracked = suite.RESULTS_DIR / "sampling_speed.json"
    date, source = report.file_date(tracked)
    assert source == report.DATE_FROM_GIT and len(date) == 10
    loose = tmp_path / "x.json"
    loose.write_text("{}")
    assert report.file_date(loose)[1] == report.DATE_FROM_MTIME


def test_cli_render_writes_the_report_without_running(tmp_path, capsys) -> None:
    out = tmp_path / "R.md"
    results = tmp_path / "results"
    shutil.copytree(suite.RESULTS_DIR, results, ignore=shutil.ignore_patterns("quick", "logs"))
    assert main(["--render", "--results", str(results), "--out", str(out)]) == 0
    assert "## Summary" in out.read_text()
    assert (tmp_path / "plots" / "R" / "sampling_vs_steps.png").exists()


def test_only_and_skip_select_in_suite_order() -> None:
    chosen = suite.select(suite.parse_names("serve_batching, sampling_speed"), [])
    assert [b.name for b in chosen] == ["sampling_speed", "serve_batching"]
    rest = suite.select([], suite.parse_names("demo_stages,image_ablation"))
    assert "demo_stages" not in {b.name for b in rest} and len(rest) == len(suite.BENCHMARKS) - 2
    with pytest.raises(ValueError, match="unknown benchmark.*nope.*choose from"):
        suite.parse_names("sampling_speed,nope")
    with pytest.raises(ValueError, match="leave no benchmark"):
        suite.select(["sampling_speed"], ["sampling_speed"])
    with pytest.raises(SystemExit):
        main(["--render", "--only", "nope"])
    plan = suite.plan_text(suite.select([], []), quick=False)
    assert "demo_stages" in plan and "[slow: --skip slow" in plan and "total" in plan
    fast = suite.select([], suite.parse_names("slow"))
    assert fast and not any(b.slow for b in fast) and "sampling_speed" in {b.name for b in fast}


def test_quick_run_through_the_suite_and_a_failure_is_recorded(tmp_path) -> None:
    results, out = tmp_path / "results", tmp_path / "Q.md"
    # The suite's own quick entry, narrowed to the two cheap models so the test stays short.
    entry = suite.BY_NAME["tokenizer_throughput"]
    cheap = suite.Benchmark(entry.name, entry.what, entry.full_args,
                            (*entry.quick_args, "--only", "cvivit_demo", "magvit_b"), 0.2, 0.2)  # fmt: skip
    assert "--quick" in cheap.command(results / "t.json", quick=True)
    ok = suite.run_one(cheap, results, quick=True)
    assert ok.ok and ok.returncode == 0 and ok.reason == "", ok.reason
    written = json.loads((results / "tokenizer_throughput.json").read_text())
    assert written["setup"]["quick"] is True and len(written["date"]) == 10 and written["machine"]
    assert written["models"]["cvivit_demo"]["encode"]["clips_per_s"] > 0
    # A benchmark that fails (here: a bad flag, a real subprocess exiting 2) is recorded with why.
    bad = suite.Benchmark("serve_batching", "bad flag", (), ("--no-such-flag",), 0.1, 0.1)
    failed = suite.run_one(bad, results, quick=True)
    assert not failed.ok and failed.returncode == 2 and "unrecognized arguments" in failed.reason
    absent = suite.run_one(
        suite.Benchmark("no_such_benchmark", "absent", (), (), 0.1, 0.1), results, quick=True
    )
    assert not absent.ok and "not in this checkout" in absent.reason
    suite.record_outcomes(results, [ok, failed])
    assert {k: v["ok"] for k, v in suite.read_outcomes(results).items()} == {
        "tokenizer_throughput": True, "serve_batching": False}  # fmt: skip
    recorded = suite.read_outcomes(results)["tokenizer_throughput"]  # as typed in the checkout
    assert recorded["command"][:3] == ["python", "-m", "benchmarks.tokenizer_throughput"]
    assert not any(str(suite.BENCHMARKS_DIR.parent) in a for a in [*recorded["command"], recorded["log"]])
    report.render(results, out, quick=True)
    text = out.read_text()
    assert "quick pass" in text and "cvivit_demo" in text and "### Last suite run" in text
    assert "FAILED" in text and "unrecognized arguments" in text
