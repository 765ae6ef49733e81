"""The demo and quality sections of `benchmarks/RESULTS.md`: demo wall time by stage, demo adherence, the
detector's own accuracy and shape reading, the image ablation and MAGVIT quality (see
`benchmarks.report_sections` for the speed sections)."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report_plots
from benchmarks.report import Loaded, Section, table
from benchmarks.report_sections import fmt, missing_section, ratio_text, row

DETECTOR_BASELINE = "ground-truth renders read by the same detector: {} (detector_accuracy)"


def demo(stages: Loaded | None, detector: Loaded | None, plots: Path) -> list[Section]:
    t_speed, t_quality = "Demo wall time by stage", "Demo quality (synthetic-world adherence)"
    if stages is None:
        return [missing_section("demo", t_speed, "demo_stages", [("demo wall time", "none (absolute)", "n/a")]),
                missing_section("demo_quality", t_quality, "demo_stages", [
                    ("demo adherence", DETECTOR_BASELINE.format("n/a"), "n/a")])]  # fmt: skip
    d = stages.data
    seconds = d["stage_seconds_median"]
    stages_only = {k.split(":")[0]: v for k, v in seconds.items() if ":" in k}
    total = seconds.get("total")
    top = sorted(stages_only.items(), key=lambda kv: -kv[1])[:2]
    speed = Section("demo", t_speed, [row(stages, f"`phenaki demo` (median of {d.get('runs')} runs)",
                                          f"{fmt(total, 0)} s in all: " + ", ".join(f"{k} {fmt(v, 0)} s" for k, v in top),
                                          "none (absolute); the time budgets of the two trainings set most of it",
                                          "n/a")],  # fmt: skip
                    table(["stage", "median seconds"], [[k, fmt(v, 1)] for k, v in seconds.items()]),
                    [("demo_stages.png", "demo wall time by stage")])  # fmt: skip
    report_plots.stacked_bar(plots / "demo_stages.png", "phenaki demo: wall time by stage (median)", "seconds",
                             stages_only)  # fmt: skip
    truth = "n/a"
    if detector is not None:
        truth = fmt(detector.data["clip"]["accuracy"]["all"])
    rows = []
    for kind, a in d["adherence_median"].items():
        rows.append(row(stages, f"demo adherence, {kind} prompts", f"all {fmt(a['all'])} (clean {fmt(a['clean'])}, "
                        f"colour {fmt(a['colour'])}, shape {fmt(a['shape'])}, motion {fmt(a['motion'])})",
                        DETECTOR_BASELINE.format(truth), f"{fmt(a['all'])} of {truth}"))  # fmt: skip
    if d.get("tokenizer_psnr_db_median") is not None:
        fid = d.get("tokenizer_fidelity_median", {})
        rows.append(row(stages, "demo tokenizer reconstruction", f"PSNR {fmt(d['tokenizer_psnr_db_median'], 1)} dB; "
                        f"detector reads shape right on {fmt(fid.get('shape'))} of reconstructions",
                        "the ground-truth clips it reconstructs", f"shape {fmt(fid.get('shape'))} of 1.00"))  # fmt: skip
    groups = list(d["adherence_median"])
    attrs = ("clean", "colour", "shape", "motion", "all")
    report_plots.grouped_bars(plots / "demo_quality.png", "Demo adherence by prompt set (median of runs)",
                              "fraction read right", groups,
                              {a: [d["adherence_median"][g].get(a) for g in groups] for a in attrs},
                              horizontal_labels=True)  # fmt: skip
    quality = Section(
        "demo_quality", t_quality, rows, "", [("demo_quality.png", "demo adherence by prompt set")]
    )
    return [speed, quality]


def detector_section(detector: Loaded | None, shapes: Loaded | None, plots: Path) -> Section:
    title = "The adherence detector itself"
    rows = []
    if detector is not None:
        d = detector.data
        parts = [k for k in ("full", "clip", "degraded", "still") if k in d]
        rows.append(row(detector, "detector on ground-truth renders after H.264 (colour, shape, motion all right)",
                        ", ".join(f"{k} {fmt(d[k]['accuracy']['all'])} (n={d[k]['n']})" for k in parts),
                        "the renders' own labels", f"{fmt(min(d[k]['accuracy']['all'] for k in parts))} at worst"))  # fmt: skip
    if shapes is not None:
        s = shapes.data
        blur = s.get("blurred_ground_truth_shapes_of_72", {})
        if blur:
            worst = max(blur, key=float)
            rows.append(row(shapes, "shape read right on blurred ground truth", ", ".join(
                f"sigma {k}: {v}/72" for k, v in blur.items()), "the clips' true shapes",
                f"{blur[worst] / 72:.2f} at sigma {worst}"))  # fmt: skip
        for source, p in s.get("person", {}).items():
            rows.append(row(shapes, f"detector vs a person's shape labels, {source}",
                            f"agrees on {p['detector_agrees_with_person']}/{p['clips']}; right {p['detector_right']}, "
                            f"person right {p['person_right']}", "a person's labels of the same frames",
                            f"{p['detector_agrees_with_person'] / p['clips']:.2f} agreement"))  # fmt: skip
    if not rows:
        return missing_section("detector", title, "detector_accuracy", [
            ("detector accuracy", "the renders' own labels", "n/a")])  # fmt: skip
    return Section("detector", title, rows)


def ablation(loaded: Loaded | None, plots: Path) -> Section:
    title = "Do stills teach what videos lack? (image ablation)"
    if loaded is None:
        return missing_section("ablation", title, "image_ablation", [
            ("purple (only in stills) read right", "the same transformer trained on videos only", "difference")])  # fmt: skip
    arms = loaded.data["arms"]
    with_images, videos_only = arms.get("with-images"), arms.get("videos-only")
    rows = []
    for kind in ("purple", "held-out"):
        for attr in ("colour", "all"):
            a, b = with_images["adherence"][kind][attr], videos_only["adherence"][kind][attr]
            rows.append(row(loaded, f"{kind} compositions, {attr} read right", f"with stills {fmt(a)}",
                            f"videos only: {fmt(b)} (same steps, batches, sampling)", f"{a - b:+.2f}"))  # fmt: skip
    return Section("ablation", title, rows, "Purple appears only in the stills, so the videos-only arm has never "
                   "seen it; the held-out compositions are the control.")  # fmt: skip


def magvit(loaded: Loaded | None, plots: Path) -> Section:
    title = "MAGVIT quality (3D-VQ vs C-ViViT, COMMIT)"
    if loaded is None:
        return missing_section("magvit", title, "magvit_quality", [
            ("3D-VQ vs C-ViViT PSNR", "C-ViViT demo preset, same steps and batches", "ratio")])  # fmt: skip
    d = loaded.data
    tok = d["tokenizers"]
    vq, cv = tok["magvit_vq"], tok["cvivit_demo"]
    rows = [row(loaded, f"tokenizer reconstruction PSNR, 3D-VQ ({vq['preset']}, {vq['parameters']:,} params)",
                f"{fmt(vq['psnr_db']['median'], 1)} dB median", f"C-ViViT demo ({cv['parameters']:,} params), same "
                f"steps and batches: {fmt(cv['psnr_db']['median'], 1)} dB",
                ratio_text(d.get("tokenizer_psnr_ratio_magvit_over_cvivit_demo")))]  # fmt: skip
    mean = d["commit_vs_latent_masking"]["mean_psnr_generated_db"]["all_ten"]
    rows.append(row(loaded, "COMMIT, generated-region PSNR over the ten tasks", f"{fmt(mean['commit'], 1)} dB",
                    f"MaskGIT-style latent masking, same budget: {fmt(mean['latent_masking'], 1)} dB",
                    ratio_text(mean["ratio_commit_over_latent_masking"], 3)))  # fmt: skip
    tasks = list(d["commit_per_task"])
    report_plots.grouped_bars(plots / "magvit_commit.png", "COMMIT per task: generated-region PSNR", "dB", tasks, {
        "COMMIT": [d["commit_per_task"][t]["psnr_generated_db"] for t in tasks],
        "latent masking": [d["commit_vs_latent_masking"]["tasks"][t]["latent_masking_psnr_generated_db"] for t in tasks],
        "tokenizer ceiling": [d["tokenizer_ceiling_per_task"][t]["psnr_generated_db"] for t in tasks]},
        horizontal_labels=True)  # fmt: skip
    body = "Quick-mode figures (tiny budget)." if d.get("quick") else ""
    return Section("magvit", title, rows, body, [("magvit_commit.png", "COMMIT per-task PSNR")])


def build(results: dict[str, Loaded], plots: Path) -> list[Section]:
    return [
        *demo(results.get("demo_stages"), results.get("detector_accuracy"), plots),
        detector_section(results.get("detector_accuracy"), results.get("shape_reading"), plots),
        ablation(results.get("image_ablation"), plots),
        magvit(results.get("magvit_quality"), plots),
        metrics_maths(results.get("frechet_distance")),
    ]


def metrics_maths(loaded: Loaded | None) -> Section:
    """The Fréchet distance behind FID / FVD against pytorch-fid's (`benchmarks.frechet_distance`)."""
    title = "Metrics: the Fréchet distance behind FID and FVD"
    baseline = "pytorch-fid's calculate_frechet_distance (scipy sqrtm), same sets"
    if loaded is None:
        return missing_section("metrics", title, "frechet_distance", [
            ("Fréchet distance error and time", baseline, "error against the exact value")])  # fmt: skip
    d = loaded.data
    ours, ref = d["methods"]["ours"], d["methods"]["pytorch_fid"]
    setting = f"{d['dim']} dimensions, {d['samples']} samples a set (singular covariances)"
    rows = [
        row(loaded, f"relative error against the exact distance ({setting})",
            f"{ours['relative_error']:.1e}; a set against itself {ours['distance_to_itself']:.1e}",
            baseline, f"pytorch-fid: {ref['relative_error']:.1e}; against itself {ref['distance_to_itself']:.1e}"),
        row(loaded, f"time of one distance ({setting})", f"{ours['seconds_median']:.2f} s",
            f"{baseline}: {ref['seconds_median']:.2f} s", f"{d['speedup_median']:.1f}x faster"),
    ]  # fmt: skip
    body = "The exact value comes from the Gram identity (see the benchmark's docstring); docs/metrics.md has the protocols."
    return Section("metrics", title, rows, body)
