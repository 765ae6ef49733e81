"""benchmarks.prepare_throughput runs end to end in --quick mode and writes the report it promises (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from benchmarks import prepare_throughput

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # Ray Data on the session's cluster: not the fast tier


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_prepare_throughput_quick(tmp_path, ray_local):
    out = tmp_path / "p.json"
    assert prepare_throughput.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert ray_local.is_initialized()  # it joined the session's Ray and left it running
    report = json.loads(out.read_text())
    for key in ("machine", "setup", "prepare", "tokenize", "notes"):
        assert key in report, key
    assert report["setup"]["quick"] is True and report["setup"]["ray_started_here"] is False
    assert set(report["prepare"]) == {"synthetic", "web_like"}
    for name, s in report["prepare"].items():
        records = s["records"]
        for w in ("1", "2"):
            dec, prep = s["decode_only"][w], s["prepare"][w]
            assert dec["clips"] == prep["clips"] == records, name
            assert _positive(dec["clips_per_s"]) and _positive(prep["clips_per_s"])
            assert _positive(dec["peak_rss_mib_max"])
            # A worker that finished between two polls may be missed; what is reported is a real RSS.
            assert all(_positive(v) for v in prep["peak_rss_mib_per_worker_last_run"].values())
            assert _positive(s["ratio_prepare_over_decode_only"][w])
            assert _positive(s["decode_only_at_ray_niceness"][w]["clips_per_s"])
            assert _positive(s["ratio_prepare_over_decode_only_at_ray_niceness"][w])
        assert _positive(s["scaling_1_to_2"]["decode_only"]) and _positive(s["scaling_1_to_2"]["prepare"])
        b = s["breakdown_in_process"]
        for stage in ("fetch", "probe", "decode", "encode", "tar_write", "total"):
            assert _positive(b["per_record_ms"][stage]), (name, stage)
        # resize is prepare's decode call less the decode-only one: scaling inside the decoder can cost less than
        # converting full-size frames, so it is clamped at 0 and may be exactly that
        assert b["per_record_ms"]["resize"] >= 0, name
        assert 0 < b["ratio_ceiling"] < 1
    assert s["config"]["size"] == 128 and s["config"]["num_frames"] == 11  # web_like: the cvivit-paper preset
    tok = report["tokenize"]["debug"]
    assert tok["clips"] == report["prepare"]["synthetic"]["records"]
    assert _positive(tok["clips_per_s"]) and _positive(tok["peak_rss_mib_max"])
    assert _positive(tok["breakdown_in_process"]["clips_per_s_one_thread"])
