"""The speed sections of `benchmarks/RESULTS.md`: sampling, tokenizer, the peer comparison, prepare, training,
serving, and the GPU rows. Each builder reads one result JSON (a `Loaded`, or None when it is not on disk)
and returns a `Section`; `build_sections` puts them in report order (the quality sections are in
`benchmarks.report_quality`). Plots are drawn into `plots` as a side effect."""

from __future__ import annotations

from pathlib import Path

from benchmarks import report_plots
from benchmarks.report import NOT_MEASURED_GPU, Loaded, Row, Section, table


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio_text(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def row(loaded: Loaded, figure: str, value: str, baseline: str, ratio: str) -> Row:
    return Row(
        figure,
        value,
        baseline,
        ratio,
        loaded.machine,
        loaded.date_text,
        f"[{loaded.path.name}]({loaded.link})",
    )


def missing_row(name: str, figure: str, baseline: str, goal: str, why: str = "not run yet") -> Row:
    return Row(figure, f"{why}: `python -m benchmarks --only {name}`", baseline, goal,
               "none (not measured)", "none (not measured)", f"results/{name}.json (absent)")  # fmt: skip


def missing_section(key: str, title: str, name: str, figures: list[tuple[str, str, str]]) -> Section:
    return Section(key, title, [missing_row(name, f, b, g) for f, b, g in figures])


# ---- sampling ---------------------------------------------------------------------------------------------
def sampling(loaded: Loaded | None, plots: Path) -> Section:
    title = "Sampling: MaskGIT steps, vs KV-cached autoregressive, FLOP/s vs matmul peak"
    if loaded is None:
        return missing_section("sampling", title, "sampling_speed", [
            ("MaskGIT sample time vs steps", "the 12-step sample", "linear in steps"),
            ("MaskGIT vs KV-cached AR", "KV-cached AR decoding of the same transformer", "AR / MaskGIT time"),
            ("sampling-step FLOP/s", "fp32 matmul peak, same run", "fraction of peak")])  # fmt: skip
    d = loaded.data
    peak = d["matmul_peak"]["gflops"]
    rows, detail, series, hlines = [], [], {}, {}
    for name, m in d["models"].items():
        label = f"{name} ({m['seq_len']} tokens)"
        steps = {int(k): v["seconds_median"] for k, v in m["sampling_vs_steps"].items()}
        ks = sorted(steps)
        rows.append(row(loaded, f"MaskGIT sample time vs steps, {label}",
                        " / ".join(f"{k}: {fmt(steps[k], 3)} s" for k in ks), f"the {ks[0]}-step sample",
                        f"{ks[-1]} steps = {steps[ks[-1]] / steps[ks[0]]:.2f}x the {ks[0]}-step time "
                        f"({ks[-1] / ks[0]:.0f}x if linear)"))  # fmt: skip
        ar = m["autoregressive"]["seconds_median"]
        ratios = {int(k): v["ar_seconds_over_maskgit_seconds"] for k, v in m["ar_vs_maskgit"].items()}
        rows.append(row(loaded, f"MaskGIT vs KV-cached AR, {label}",
                        f"MaskGIT {ks[0]} steps {fmt(steps[ks[0]], 3)} s; AR {fmt(ar, 3)} s "
                        f"({m['autoregressive']['forward_passes']} one-token steps)",
                        "KV-cached autoregressive decoding of the same transformer, same guidance",
                        "MaskGIT speed-up (AR time / MaskGIT time): " + ", ".join(f"{ratios[k]:.2f}x at {k} steps" for k in sorted(ratios))))  # fmt: skip
        step = m["flops"]["maskgit_step"]
        ar_step = m["flops"]["ar_step"]
        rows.append(row(loaded, f"guided MaskGIT step FLOP/s, {label}", f"{fmt(step['achieved_gflops'], 1)} GFLOP/s",
                        f"fp32 matmul peak {fmt(peak, 1)} GFLOP/s, same run",
                        f"{step['fraction_of_peak']:.2f} of peak (AR step: {ar_step['fraction_of_peak']:.3f})"))  # fmt: skip
        series[label] = (ks, [steps[k] for k in ks])
        hlines[f"{label}: KV-cached AR"] = ar
        detail.append([label, m.get("maskgit_params"), *(fmt(steps[k], 3) for k in ks), fmt(ar, 3),
                       fmt(m["decode"]["seconds_median"], 3), f"{step['fraction_of_peak']:.2f}"])  # fmt: skip
    ks = sorted(int(k) for k in next(iter(d["models"].values()))["sampling_vs_steps"])
    body = table(["model", "MaskGIT params", *(f"{k} steps (s)" for k in ks), "AR (s)", "C-ViViT decode (s)",
                  "step / peak"], detail)  # fmt: skip
    est = d.get("full_preset_estimate")
    if est:
        body += (f"\n\nThe full {est['preset']} transformer (24 x 2048) is not run on CPU: one guided step is "
                 f"{est['guided_step_flops'] / 1e12:.1f} TFLOP, about {est['seconds_per_step_at_narrowed_model_rate']} s "
                 "per step at the narrowed model's rate (an estimate, not a measurement).")  # fmt: skip
    plots_made = [("sampling_vs_steps.png", "MaskGIT sample time vs steps, KV-cached AR dashed")]
    report_plots.lines(plots / plots_made[0][0], "Sample time vs MaskGIT steps (batch 1, guided)", "steps",
                       "seconds (log)", series, hlines=hlines, logy=True)  # fmt: skip
    names = list(d["models"])
    fractions = {"guided MaskGIT step": [d["models"][n]["flops"]["maskgit_step"]["fraction_of_peak"] for n in names],
                 "KV-cached AR step": [d["models"][n]["flops"]["ar_step"]["fraction_of_peak"] for n in names]}  # fmt: skip
    plots_made.append(("sampling_fraction_of_peak.png", "achieved FLOP/s as a fraction of the matmul peak"))
    report_plots.grouped_bars(plots / plots_made[-1][0], f"Achieved FLOP/s / fp32 matmul peak ({fmt(peak, 0)} GFLOP/s)",
                              "fraction of peak", names, fractions, horizontal_labels=True)  # fmt: skip
    return Section("sampling", title, rows, body, plots_made)


# ---- tokenizer --------------------------------------------------------------------------------------------
def tokenizer(loaded: Loaded | None, plots: Path) -> Section:
    title = "Tokenizer encode / decode throughput"
    if loaded is None:
        return missing_section("tokenizer", title, "tokenizer_throughput", [
            ("tokenizer encode / decode clips/s", "fp32 matmul peak, same run", "fraction of peak")])  # fmt: skip
    d = loaded.data
    peak = d["matmul_peak"]["gflops"]
    rows, names, enc, dec = [], [], [], []
    for name, m in d["models"].items():
        c, t, h, w = m["clip_shape"]
        e, de = m["encode"], m["decode"]
        rows.append(row(loaded, f"{name} ({m['preset']}, {t}x{h}x{w} clips, {m['tokens_per_clip']} tokens, batch {m['batch']})",
                        f"encode {fmt(e['clips_per_s'])} clips/s ({fmt(e['tokens_per_s'], 0)} tokens/s); "
                        f"decode {fmt(de['clips_per_s'])} clips/s",
                        f"fp32 matmul peak {fmt(peak, 1)} GFLOP/s, same run",
                        f"encode {e['fraction_of_peak']:.2f}, decode {de['fraction_of_peak']:.2f} of peak"))  # fmt: skip
        names.append(name)
        enc.append(e["clips_per_s"])
        dec.append(de["clips_per_s"])
    plot = ("tokenizer_throughput.png", "Tokenizer clips/s, encode and decode")
    report_plots.grouped_bars(plots / plot[0], "Tokenizer throughput (fp32, CPU)", "clips/s (log)", names,
                              {"encode": enc, "decode": dec}, logy=True)  # fmt: skip
    body = "Random weights (the work per clip does not depend on them); batch and clip shape as in each row."
    if d.get("setup", {}).get("quick"):
        body += " Quick mode: the MAGVIT row is the debug preset, not B."
    return Section("tokenizer", title, rows, body, [plot])


# ---- peer comparison --------------------------------------------------------------------------------------
PEER_BASELINE = "phenaki-pytorch (PyPI) at the same configuration, same process"


def peer(loaded: Loaded | None, plots: Path) -> Section:
    """`benchmarks.peer_comparison`'s rows: {encode, decode, sample} -> ours / peer seconds, `ours_faster_by`,
    `goal_faster_by`, `goal_met`."""
    title = "Against phenaki-pytorch"
    if loaded is None:
        return missing_section("peer", title, "peer_comparison", [
            ("sampling a video from text, ours vs phenaki-pytorch", PEER_BASELINE, "goal >= 3x"),
            ("tokenizer encoding, ours vs phenaki-pytorch", PEER_BASELINE, "goal >= 2x")])  # fmt: skip
    d = loaded.data
    config = d.get("configuration", {})
    where = f"{config.get('name', '?')}, {config.get('seq_len', '?')} tokens"
    baseline = PEER_BASELINE + (f" ({d['peer'].get('version')})" if isinstance(d.get("peer"), dict) else "")
    rows, names, ratios = [], [], []
    for name, r in d.get("rows", {}).items():
        if not isinstance(r, dict) or "ours_faster_by" not in r:
            continue
        ours, theirs = r["ours"], r["peer"]
        goal = r.get("goal_faster_by")
        verdict = "" if goal is None else f" (goal >= {goal:g}x: {'met' if r.get('goal_met') else 'not met'})"
        rows.append(row(loaded, f"{name}, ours vs phenaki-pytorch ({where})",
                        f"ours {fmt(ours['seconds_median'], 3)} s, peer {fmt(theirs['seconds_median'], 3)} s "
                        f"per call of {r.get('clips_per_call', '?')} clip(s)",
                        baseline, f"ours at {ratio_text(r['ours_faster_by'])} the peer's speed{verdict}"))  # fmt: skip
        names.append(name)
        ratios.append(r["ours_faster_by"])
    if not rows:
        return Section("peer", title, [row(loaded, "peer comparison", "the JSON holds no `rows` with `ours_faster_by`",
                                           baseline, "goals: >= 3x sampling, >= 2x encoding")])  # fmt: skip
    plot = ("peer_comparison.png", "how many times faster ours is than phenaki-pytorch")
    report_plots.grouped_bars(plots / plot[0], "Ours vs phenaki-pytorch (peer seconds / our seconds)", "x faster",
                              names, {"ours faster by": ratios}, reference=("1x: parity", 1.0),
                              horizontal_labels=True)  # fmt: skip
    body = str(config.get("peer_differences", ""))
    if d.get("setup", {}).get("quick"):
        body = "Quick mode: tiny models, the code paths, not the speed. " + body
    return Section("peer", title, rows, body, [plot])


# ---- prepare ----------------------------------------------------------------------------------------------
def prepare(loaded: Loaded | None, plots: Path) -> Section:
    title = "Prepare vs the PyAV decode-only limit"
    if loaded is None:
        return missing_section("prepare", title, "prepare_throughput", [
            ("prepare clips/s", "PyAV decode-only, same files and worker count", "goal >= 0.7")])  # fmt: skip
    d = loaded.data
    goal = d.get("setup", {}).get("goal_ratio", 0.7)
    rows, groups, prep, dec = [], [], [], []
    for corpus, c in d["prepare"].items():
        for w in sorted(c["prepare"], key=int):
            p, o = c["prepare"][w]["clips_per_s"], c["decode_only"][w]["clips_per_s"]
            ratio = c["ratio_prepare_over_decode_only"][w]
            rows.append(row(loaded, f"prepare, {corpus} corpus ({c['preset']} preset), {w} worker(s)",
                            f"{fmt(p, 1)} clips/s", f"PyAV decode-only, same files, {w} process(es): {fmt(o, 1)} clips/s",
                            f"{ratio:.2f} (goal >= {goal}: {'met' if ratio >= goal else 'not met'})"))  # fmt: skip
            groups.append(f"{corpus}\n{w} worker(s)")
            prep.append(p)
            dec.append(o)
    body_rows = []
    for corpus, c in d["prepare"].items():
        b = c.get("breakdown_in_process", {})
        if b:
            body_rows.append([corpus, *(f"{100 * b['share'].get(k, 0):.0f}%" for k in
                                        ("fetch", "probe", "decode", "resize", "encode", "tar_write")),
                              fmt(b["per_record_ms"]["total"], 1)])  # fmt: skip
    body = ""
    if body_rows:
        body = "Where one record's time goes (in-process, one worker):\n\n" + table(
            ["corpus", "fetch", "probe", "decode", "resize", "encode", "tar write", "ms / record"], body_rows
        )
    tok = d.get("tokenize", {})
    if tok:
        body += "\n\nTokenize (Ray Data, bundled text encoder), end to end: " + "; ".join(
            f"{k} {fmt(v['clips_per_s'], 1)} clips/s" for k, v in tok.items()
        )
    plot = ("prepare_throughput.png", "prepare vs decode-only clips/s")
    report_plots.grouped_bars(plots / plot[0], "Prepare vs the PyAV decode-only limit", "clips/s", groups,
                              {"prepare": prep, "decode-only": dec}, horizontal_labels=True)  # fmt: skip
    return Section("prepare", title, rows, body, [plot])


# ---- training ---------------------------------------------------------------------------------------------
def training(loaded: Loaded | None, plots: Path) -> Section:
    title = "Training throughput and MFU (Ray Train + DeepSpeed, CPU workers)"
    if loaded is None:
        return missing_section("training", title, "training", [
            ("training samples/s and MFU", "1 worker; the matmul peak the workers measure", "1 -> 2 worker scaling")])  # fmt: skip
    d = loaded.data
    rows, groups, one, two = [], [], [], []
    for kind, presets in d.get("throughput", {}).items():
        for preset, s in presets.items():
            counts = sorted((k for k in s if k.isdigit()), key=int)
            if not counts:
                continue
            lo, hi = s[counts[0]], s[counts[-1]]
            mfu = [s[k].get("mfu_median") for k in counts]
            mfu_text = ("MFU " + " / ".join(f"{m:.2f}" if m is not None else "n/a" for m in mfu)
                        + f" on {' / '.join(counts)} worker(s)") if any(m is not None for m in mfu) else (
                        "MFU not in this JSON (written before the benchmark kept the jobs' per-step MFU; rerun "
                        "`python -m benchmarks --only training`)")  # fmt: skip
            scaling = s.get(f"scaling_{counts[0]}_to_{counts[-1]}")
            rows.append(row(loaded, f"train {kind} ({preset} preset), {counts[-1]} workers",
                            f"{fmt(hi['samples_per_s'], 1)} samples/s ({fmt(hi['tokens_per_s'], 0)} tokens/s); "
                            f"{counts[0]} worker: {fmt(lo['samples_per_s'], 1)} samples/s",
                            f"{counts[0]} worker; MFU against the matmul peak each worker measures at start",
                            f"scaling {ratio_text(scaling)}; {mfu_text}"))  # fmt: skip
            groups.append(f"{kind}\n{preset}")
            one.append(lo["samples_per_s"])
            two.append(hi["samples_per_s"])
    plot = ("training_throughput.png", "training samples/s on 1 and 2 workers")
    report_plots.grouped_bars(plots / plot[0], "Training samples/s (fp32, ZeRO-2, CPU workers)", "samples/s",
                              groups, {"1 worker": one, "2 workers": two}, horizontal_labels=True)  # fmt: skip
    return Section("training", title, rows, "", [plot])


# ---- serving ----------------------------------------------------------------------------------------------
def serving(loaded: Loaded | None, plots: Path) -> Section:
    title = "Serving: latency and batching"
    if loaded is None:
        return missing_section("serve", title, "serve_batching", [
            ("batched vs unbatched requests/s", "max_batch 1, same concurrency", "ratio")])  # fmt: skip
    d = loaded.data
    batched = d["batched"]
    c = str(d.get("ratio_concurrency", 8))
    rows = [row(loaded, f"serve throughput, batched vs unbatched at concurrency {c}",
                f"{fmt(batched[c]['requests_per_s'], 1)} vs {fmt(d['unbatched'][c]['requests_per_s'], 1)} requests/s",
                "the same server with max_batch 1, same burst", ratio_text(d.get("throughput_ratio")))]  # fmt: skip
    lo = min(batched, key=int)
    rows.append(row(loaded, f"serve latency, one request alone (concurrency {lo})",
                    f"p50 {fmt(batched[lo]['latency_p50_s'], 3)} s, p95 {fmt(batched[lo]['latency_p95_s'], 3)} s",
                    f"p50 at concurrency {c} batched: {fmt(batched[c]['latency_p50_s'], 3)} s",
                    f"{batched[c]['latency_p50_s'] / batched[lo]['latency_p50_s']:.2f}x the alone latency "
                    f"for {c}x the requests"))  # fmt: skip
    if d.get("shedding") and d.get("autoscaling"):
        a = d["autoscaling"]
        rows.append(row(loaded, "load shedding and autoscaling", f"503 in {fmt(d['shedding']['median_s'], 3)} s; "
                        f"1 -> 2 replicas in {fmt(a.get('to_2_replicas_s'), 1)} s, back in {fmt(a.get('back_to_1_replica_s'), 1)} s",
                        f"configured delays: upscale {a.get('upscale_delay_s')} s, downscale {a.get('downscale_delay_s')} s",
                        "n/a (absolute)"))  # fmt: skip
    cs = sorted(batched, key=int)
    plot = ("serve_batching.png", "requests/s and p50 latency vs concurrency")
    report_plots.lines(plots / plot[0], "Serve (demo-sized model, max_batch 8)", "concurrent requests",
                       "requests/s, p50 seconds", {"requests/s": ([int(k) for k in cs], [batched[k]["requests_per_s"] for k in cs]),
                                                   "p50 latency (s)": ([int(k) for k in cs], [batched[k]["latency_p50_s"] for k in cs])})  # fmt: skip
    return Section("serve", title, rows, "", [plot])


# ---- GPU rows ---------------------------------------------------------------------------------------------
GPU_FIGURES = (
    ("phenaki-1.8b under ZeRO-3: memory per GPU, MFU", "the GPU's dense bf16 datasheet peak"),
    ("bf16 training and sampling", "fp32 on the same GPU"),
    ("MAGVIT-B-sized 12-step sample of 16x128x128", "the MAGVIT paper: 0.25 s on a TPUv4i"),
    ("MaskGIT vs KV-cached AR at 1536 tokens", "KV-cached AR decoding of the same transformer"),
)


def gpu(training_json: Loaded | None, plots: Path) -> Section:
    """GPU rows: measured only where a JSON holds a GPU run (training.json's `gpu` part), else not measured."""
    run = (training_json.data.get("gpu") or {}) if training_json else {}
    measured = training_json is not None and "mfu" in run and "skipped" not in run and "error" not in run
    rows = []
    for i, (figure, baseline) in enumerate(GPU_FIGURES):
        if i == 0 and measured:
            held = run.get("deepspeed_gib", {})
            rows.append(row(training_json, f"{figure} ({run['cuda'].get('name', 'GPU')})",
                            f"MFU {run['mfu']}, {run['tokens_per_s']} tokens/s; DeepSpeed holds {held} GiB",
                            baseline + f" ({run.get('peak_source')})", f"MFU {run['mfu']}"))  # fmt: skip
            continue
        why = NOT_MEASURED_GPU
        if i == 0 and training_json is not None and ("skipped" in run or "error" in run):
            why += f" (training.json: {run.get('skipped') or run.get('error')})"
        rows.append(Row(figure, why, baseline, "n/a", "none (not measured)", "none (not measured)",
                        "no JSON holds a GPU measurement"))  # fmt: skip
    body = ""
    est = (training_json.data.get("estimates") or {}) if training_json else {}
    if est.get("setups"):
        body = "Model-state memory per GPU for phenaki-1.8b under ZeRO-3 (DeepSpeed's estimator, no offload, " \
               "not a measurement): " + "; ".join(
                   f"{k}: {v['deepspeed']['zero3']['no_offload']['zero_init']['gpu_gib_per_gpu']} GiB"
                   for k, v in est["setups"].items()) + " (nodes x GPUs per node)."  # fmt: skip
    return Section("gpu", "GPU rows", rows, body)


def build_sections(results: dict[str, Loaded], plots: Path) -> list[Section]:
    from benchmarks import report_quality

    return [
        sampling(results.get("sampling_speed"), plots),
        tokenizer(results.get("tokenizer_throughput"), plots),
        peer(results.get("peer_comparison"), plots),
        prepare(results.get("prepare_throughput"), plots),
        training(results.get("training"), plots),
        serving(results.get("serve_batching"), plots),
        *report_quality.build(results, plots),
        gpu(results.get("training"), plots),
    ]
