"""pipelines.fidelity: tokenizer object fidelity judged by the detector on fresh clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.fidelity import (
    ALL_TRIPLES,
    fidelity_clips,
    score_reconstructions,
    summary_line,
    tokenizer_fidelity,
    write_examples,
)
from pipelines.synth import BACKGROUND, PALETTE

FRAMES = 9


@pytest.fixture(scope="module")
def clips():
    return fidelity_clips(32, FRAMES)


def test_clips_cover_every_triple_at_the_asked_size(clips) -> None:
    assert clips.frames.shape == (72, FRAMES, 32, 32, 3) and clips.frames.dtype == np.uint8
    assert clips.truths == ALL_TRIPLES and len(set(clips.truths)) == 72
    again = fidelity_clips(32, FRAMES)
    np.testing.assert_array_equal(again.frames, clips.frames)  # a pure function of the seed
    assert not np.array_equal(fidelity_clips(32, FRAMES, seed=5).frames, clips.frames)
    with pytest.raises(ValueError, match="24-frame"):
        fidelity_clips(32, 25)


def test_a_perfect_reconstruction_scores_every_clip(clips) -> None:
    """The inputs themselves, as their own reconstruction: the control row of every fidelity table."""
    report = score_reconstructions(clips.frames, clips.truths, clips.frames)
    assert report["clean"] == report["colour"] == report["motion"] == 1.0
    assert report["shape"] >= 70 / 72  # 7-px triangles at 32x32: the detector's own limit (71/72 measured)
    assert report["psnr_db"] == pytest.approx(100.0)  # identical frames: the MSE floor (1e-10 x 255^2)
    assert summary_line(report).startswith("one clean object 72/72, colour 72/72")


def test_soup_and_wrong_colours_score_nothing(clips) -> None:
    """Patch soup reads as no clean object, so its colour does not count even where it averages right; a
    clean object of the wrong colour counts for shape and motion but not colour."""
    soup = np.full_like(clips.frames[:6], BACKGROUND)
    for i, (colour, _, _) in enumerate(clips.truths[:6]):
        for y in range(0, 32, 8):
            for x in range(0, 32, 8):
                if (x + y) // 8 % 2 == 0:
                    soup[i, :, y + 2 : y + 6, x + 1 : x + 5] = PALETTE[colour]
    report = score_reconstructions(soup, clips.truths[:6], clips.frames[:6])
    assert report["clean"] == report["colour"] == report["shape"] == report["motion"] == 0.0
    assert all(r["detected"][0] == r["truth"][0] for r in report["per_clip"])  # the colour alone would pass

    recoloured = clips.frames[:12].copy()
    for i in range(12):  # the first 12 clips are red: paint their objects green
        object_pixels = np.abs(recoloured[i].astype(int) - BACKGROUND).max(axis=-1) > 60
        recoloured[i][object_pixels] = PALETTE["green"]
    report = score_reconstructions(recoloured, clips.truths[:12])
    assert report["clean"] == 1.0 and report["colour"] == 0.0 and report["motion"] == 1.0
    assert "psnr_db" not in report
    with pytest.raises(ValueError, match="truths"):
        score_reconstructions(clips.frames[:3], clips.truths[:2])


def test_tokenizer_fidelity_runs_the_model_and_writes_examples(tmp_path, clips) -> None:
    from modeling.cvivit import CViViT, cvivit_debug

    torch.manual_seed(0)
    model = CViViT(cvivit_debug()).train()
    report, recon = tokenizer_fidelity(model, clips, batch_size=32)
    assert model.training  # the mode it came in with
    assert recon.shape == clips.frames.shape and recon.dtype == np.uint8
    assert report["clips"] == 72 and len(report["per_clip"]) == 72
    assert report["clean"] < 0.5 and report["psnr_db"] < 20  # an untrained tokenizer shows no objects
    examples = write_examples(tmp_path, clips, recon, report, count=4)
    assert len(examples) == 4 and all((tmp_path / e["file"]).stat().st_size > 0 for e in examples)
    assert not examples[0]["ok"]  # failures come first
    from PIL import Image

    assert Image.open(tmp_path / examples[0]["file"]).size == (FRAMES * 32 * 4, (2 * 32 + 2) * 4)


def test_eval_cli_reports_a_checkpoints_fidelity(tmp_path, capsys) -> None:
    """`phenaki eval --tokenizer` on a transformer checkpoint finds the tokenizer inside it."""
    import json

    from jobs.cli import main
    from modeling.generation import write_debug_checkpoint

    ckpt = write_debug_checkpoint(tmp_path / "transformer", num_frames=FRAMES)
    assert main(["eval", "--tokenizer", str(ckpt), "--out", str(tmp_path / "fidelity.json")]) == 0
    out = capsys.readouterr().out
    assert "object fidelity of" in out and "one clean object" in out
    report = json.loads((tmp_path / "fidelity.json").read_text())
    assert report["tokenizer"].endswith("tokenizer") and report["frames"] == FRAMES and report["clips"] == 72
    assert len(report["per_clip"]) == 72 and 0.0 <= report["clean"] <= 1.0
    reconstruction = report["reconstruction"]  # the papers' pixel metrics, which need no weights
    assert 0 < reconstruction["psnr_db"] < 100 and -1 <= reconstruction["ssim"] <= 1
    assert f"reconstructions: PSNR {reconstruction['psnr_db']:.2f} dB" in out


def test_eval_cli_generates_and_reads_the_prompt_suite(tmp_path, capsys) -> None:
    """`phenaki eval --checkpoint`: every held-out and purple composition, `--seeds` each, read by the detector
    from H.264 files, with the sampling settings it used."""
    import json

    from jobs.cli import main
    from modeling.generation import write_debug_checkpoint
    from pipelines.evaluate import prompt_suite

    ckpt = write_debug_checkpoint(tmp_path / "transformer", num_frames=FRAMES, sampling={"steps": 2})
    argv = ["eval", "--checkpoint", str(ckpt), "--seeds", "1", "--sampling", "guidance_scale=0.5",
            "--out", str(tmp_path / "adherence.json")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "adherence.json").read_text())
    suite = prompt_suite()
    assert (
        report["seeds"] == 1
        and report["sampling"]["guidance_scale"] == 0.5
        and report["sampling"]["steps"] == 2
    )
    for kind, triples in suite.items():
        assert report[kind]["num_videos"] == len(triples) and report[kind]["num_errors"] == 0
        assert 0.0 <= report[kind]["clean"] <= 1.0
    assert len(list((ckpt / "eval-videos").glob("*.mp4"))) == sum(map(len, suite.values()))
    assert main(["eval", "--checkpoint", str(ckpt), "--sampling", "guidance_scale"]) == 1
    assert "--sampling wants KEY=VALUE" in capsys.readouterr().err
