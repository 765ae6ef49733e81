"""The demo's results page: its words and numbers (pure functions), its training plots, and the page itself as
a person sees it in a real headless chromium (Debian's, driven by Selenium), built from a small but real demo
output folder: H.264 videos and GIFs scored by the real detector, real fidelity strips, real metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.demo import score_records, summary_text, write_page
from jobs.training.common import Worker
from jobs.training.metrics import METRICS_FILE, MetricsLog
from pipelines.demo_page import (
    FIDELITY_DIR,
    diagnosis,
    headline_rows,
    headline_table,
    render,
    share_text,
)
from pipelines.demo_plots import plot_training, read_metrics, series, smooth
from pipelines.fidelity import FidelityClips, score_reconstructions, write_examples
from pipelines.media import encode_mp4_file, write_gif
from pipelines.synth import sample_video
from tests.browser_helpers import chromium, until

# (kind, [(colour, shape, motion) per prompt]); None: a noise video asked for a red circle
VIDEOS = [
    ("held-out", [("red", "circle", "left")]),
    ("held-out", [("green", "square", "up")]),
    ("held-out", None),
    ("purple", [("purple", "triangle", "right")]),
    ("story", [("blue", "circle", "right"), ("yellow", "square", "down")]),
]
FRAMES = 9


def summary(clean, n, colour=None, every_frame=None):
    return {"num_videos": n, "num_errors": 0, "num_segments": n, "clean": clean, "num_clean": n,
            "colour": colour, "num_colour": n if colour is not None else 0, "shape": 0.5, "num_shape": n,
            "motion": 0.5, "num_motion": n, "colour_every_frame": every_frame,
            "num_colour_every_frame": n if every_frame is not None else 0, "all": 0.25}  # fmt: skip


def write_metrics(run_dir: Path, run: str, rows: list[dict]) -> None:
    """Through the trainers' own MetricsLog (rank 0 of 1), as a training run writes them."""
    log = MetricsLog(str(run_dir), Worker(0, 1, torch.device("cpu")), 100, len(rows), run)
    for step, metrics in enumerate(rows, start=1):
        log.write(step, metrics)
    log.close()


def make_demo_out(out: Path, with_fidelity: bool = True) -> dict:
    rng = np.random.default_rng(0)
    (out / "videos").mkdir(parents=True)
    records = []
    for i, (kind, triples) in enumerate(VIDEOS):
        if triples is None:
            frames = rng.integers(0, 256, (FRAMES, 64, 64, 3), dtype=np.uint8)
            prompts = ["a red circle moving left"]
        else:
            frames = np.concatenate([sample_video(rng, *t, num_frames=FRAMES, size=64) for t in triples])
            prompts = [f"a {c} {s} moving {m}" for c, s, m in triples]
        name = f"{i:02d}-{kind}-seed0"
        encode_mp4_file(frames, out / "videos" / f"{name}.mp4", 8.0)
        write_gif(frames, out / "videos" / f"{name}.gif", 8.0)
        records.append({"kind": kind, "prompts": prompts, "seed": 0, "file": f"videos/{name}.mp4",
                        "gif": f"videos/{name}.gif", "request_seconds": 0.1,
                        "segments": [[k * FRAMES, (k + 1) * FRAMES] for k in range(len(prompts))]
                        if len(prompts) > 1 else None})  # fmt: skip
    adherence = score_records(records, out)

    tokenizer_eval = {"step": 4, "clips": 2, "psnr_db": 24.5, "perplexity": 9.5, "used_codes": 12}
    if with_fidelity:
        truths = (
            ("red", "circle", "left"),
            ("blue", "square", "up"),
            ("green", "triangle", "down"),
            ("yellow", "circle", "right"),
        )
        clips = np.stack([sample_video(rng, *t, num_frames=FRAMES, size=32) for t in truths])
        recon = clips.copy()
        recon[2:] = rng.integers(0, 256, recon[2:].shape, dtype=np.uint8)  # two reconstructions lost
        report = score_reconstructions(recon, truths, clips)
        report["examples"] = write_examples(
            out / FIDELITY_DIR, FidelityClips(clips, truths), recon, report, count=4
        )
        tokenizer_eval["fidelity"] = report

    loss = np.linspace(2.0, 0.5, 30)
    write_metrics(out / "tokenizer", "tokenizer", [
        {"loss": float(v), "psnr": 10 + 10 * (2 - float(v)), "used_codes": 20.0, "perplexity": 12.0} for v in loss
    ])  # fmt: skip
    write_metrics(
        out / "transformer",
        "transformer",
        [{"loss": float(v), "mask_accuracy": 1 - float(v) / 2} for v in loss],
    )
    results = {"records": records, "adherence": adherence, "tokenizer_eval": tokenizer_eval,
               "timings_s": {"synth: the synthetic world": 1.0, "train-tokenizer": 30.0, "total": 40.0},
               "config": "debug", "fast": True}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results))
    write_page(out, results)
    return results


# ------------------------------------------------------------------------------------------ pure functions
def test_headline_wording_from_an_adherence_summary():
    held_out = summary(clean=0.8, n=10, colour=0.6)
    assert share_text(0.8, 10) == "8 of 10 (80%)" and share_text(None, 0) == "not asked"
    rows = headline_rows("held-out", held_out)
    assert [label for label, _, _ in rows] == ["one clean object", "right colour", "right shape", "right motion",
                                               "all three right"]  # fmt: skip
    assert rows[0] == ("one clean object", 0.8, 10)
    purple = headline_rows("purple", summary(clean=0.5, n=4, colour=0.25, every_frame=0.25))
    assert purple[-1] == ("purple in every frame", 0.25, 4)

    table = headline_table({"held-out": held_out, "purple": summary(0.5, 4, 0.25, 0.25)})
    assert "one object" in table[0] and "every frame" in table[0]
    assert (
        table[1].startswith("Held-out compositions") and "8/10  80%" in table[1] and "6/10  60%" in table[1]
    )
    assert table[1].rstrip().endswith("-")  # colour in every frame: purple only
    assert table[2].startswith("Purple") and table[2].rstrip().endswith("1/4  25%")


def test_diagnosis_says_which_stage_loses_the_object():
    generated = {"held-out": summary(clean=0.3, n=10), "story": summary(clean=0.5, n=2)}
    fidelity = {"clips": 72, "clean": 0.97, "colour": 0.9, "shape": 0.9, "motion": 0.9, "all": 0.8}
    assert diagnosis(generated, {"fidelity": fidelity}).startswith("In the transformer: 70 of 72")
    assert "4 of 12 generated clips" in diagnosis(generated, {"fidelity": fidelity})
    assert diagnosis(generated, {"fidelity": {**fidelity, "clean": 0.2}}).startswith(
        "In the tokenizer: only 14 of 72"
    )
    assert diagnosis(generated, {"fidelity": {**fidelity, "clean": 0.6}}).startswith(
        "In both stages: only 43 of 72"
    )
    good = {"held-out": summary(clean=0.9, n=10)}
    assert diagnosis(good, {"fidelity": fidelity}).startswith("Neither stage loses the object")
    for missing in (None, {"psnr_db": 24.0}):  # checkpoints from before the fidelity evaluation
        assert diagnosis(generated, missing).startswith("Unknown.")


def test_page_without_fidelity_says_so(tmp_path):
    results = {"records": [], "adherence": {"held-out": summary(0.5, 2)},
               "tokenizer_eval": {"step": 3, "clips": 2, "psnr_db": 20.0}, "timings_s": {"total": 5.0}}  # fmt: skip
    page = render(results, tmp_path, [], "phenaki eval --results x")
    assert "Object fidelity was not measured" in page and "PSNR 20.0 dB" in page
    assert "Object fidelity was not measured" in render({**results, "tokenizer_eval": None}, tmp_path, [], "")
    assert "No videos." in page
    text = summary_text({**results, "tokenizer_eval": None}, tmp_path)
    assert "object fidelity not measured" in text and "Where quality is lost: Unknown." in text


def test_training_plots_from_metrics_files(tmp_path):
    from PIL import Image

    write_metrics(tmp_path / "tokenizer", "tokenizer", [{"loss": 1.0 / s, "psnr": 10.0 + s, "used_codes": 8.0,
                                                          "perplexity": 4.0} for s in range(1, 6)])  # fmt: skip
    made = plot_training(tmp_path, METRICS_FILE)
    tokenizer, transformer = made
    assert (
        tokenizer["file"] == "plots/tokenizer.png" and transformer["file"] is None
    )  # no transformer metrics
    with Image.open(tmp_path / tokenizer["file"]) as image:
        assert image.width > image.height > 100  # three panels side by side

    rows = read_metrics(tmp_path / "tokenizer" / METRICS_FILE)
    resumed = [*rows, {"step": 4, "loss": 9.0}, {"step": 5, "loss": float("nan")}]  # steps 4-5 run again
    steps, values = series(resumed, "loss")
    assert steps == [1, 2, 3, 4, 5] and values[3] == 9.0 and values[4] == pytest.approx(0.2)
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_terminal_summary_has_the_headline_and_fidelity(tmp_path):
    results = make_demo_out(tmp_path / "out")
    text = summary_text(results, tmp_path / "out")
    assert "Held-out compositions  2/3  67%" in text and "Purple" in text
    assert "Tokenizer reconstructions: one clean object 2/4, colour 2/4" in text
    assert "Where quality is lost:" in text and "phenaki generate --checkpoint" in text
    assert (tmp_path / "out" / "index.html").as_uri() in text


# ------------------------------------------------------------------------------------------ in a browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium(tmp_path_factory.mktemp("chromium-profile"), window="1280,2000")


def test_page_in_a_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By

    out = tmp_path / "demo-out"
    results = make_demo_out(out)
    browser.get((out / "index.html").as_uri())
    until(browser, "document.readyState === 'complete'")

    # The headline, in words and counts a person reads.
    headline = browser.find_element(By.ID, "headline").text
    for words in ("Held-out compositions", "2 of 3 videos", "show one clean object", "right colour", "2 of 3 (67%)",
                  "Purple", "1 of 1 video", "purple in every frame", "Story", "2 of 2 segments"):  # fmt: skip
        assert words in headline, words
    verdict = browser.find_element(By.ID, "verdict").text
    assert verdict.startswith(
        "Where quality is lost: In the tokenizer: only 2 of 4 tokenizer reconstructions"
    )
    fidelity = browser.find_element(By.ID, "fidelity").text
    assert "2 of 4 clips" in fidelity and "right colour" in fidelity and "PSNR 24.5 dB" in fidelity

    # Every generated video, with its prompt(s) and the detector's reading.
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == len(results["records"])
    for card, record in zip(cards, results["records"], strict=True):
        video = card.find_element(By.TAG_NAME, "video")
        assert video.get_attribute("src") == (out / record["file"]).as_uri()
        for prompt in record["prompts"]:
            assert f"“{prompt}”" in card.text
        assert card.text.count("one clean object") == len(record["prompts"])
    noise = cards[2].text
    assert "✗ one clean object" in noise and "colour: asked red, saw" in noise
    assert "✓ one clean object" in cards[0].text and "✓ colour red" in cards[0].text
    assert "frames 0–8" in cards[4].text and "frames 9–17" in cards[4].text
    assert "✓ purple in every frame" in cards[3].text
    # The browser decodes every H.264 file (metadata at least).
    until(browser, "[...document.querySelectorAll('video')].every(v => v.readyState >= 1)")
    assert (
        browser.execute_script("return [...document.querySelectorAll('video')].map(v => v.videoWidth)")
        == [64] * 5
    )

    # Images (training plots, fidelity strips) actually loaded.
    until(browser, "[...document.images].every(i => i.complete)")
    images = browser.execute_script(
        "return [...document.images].filter(i => !i.closest('video')).map(i => [i.getAttribute('src'), i.naturalWidth])"
    )
    sources = [src for src, _ in images]
    assert {"plots/tokenizer.png", "plots/transformer.png"} <= set(sources)
    assert sum(src.startswith(FIDELITY_DIR) for src in sources) == 4
    assert all(width > 0 for _, width in images), images

    # No broken links, and nothing outside the folder.
    urls = browser.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(a => a.href)"
        ".concat([...document.querySelectorAll('[src]')].map(e => e.src))"
    )
    assert urls and all(u.startswith("file://") for u in urls), urls
    for url in urls:
        path = Path(url.removeprefix("file://"))
        assert path.is_file() and out in path.parents, url
    assert "http://" not in browser.page_source and "https://" not in browser.page_source
