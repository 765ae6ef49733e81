"""The demo's results page, `<out>/index.html`, written for a person who just ran `phenaki demo`.

It answers, in this order: how often do generated videos show one clean object of the asked colour, shape
and motion (per kind of prompt); where is quality lost (the tokenizer's reconstructions judged by the same
detector, beside generated videos); every generated video beside its prompt and the detector's reading;
the training curves; stage times; what to run next. Self-contained: inline CSS, no scripts, no external
assets, links relative to `<out>`, so the folder can be zipped or served as is.

Input: the demo's results (`jobs.demo.run_demo`): {"records", "adherence", "tokenizer_eval", "timings_s",
"config", "fast"}; see `pipelines.evaluate` for the adherence summaries and `pipelines.fidelity` for the
tokenizer's. Words and numbers come from small pure functions here, which the terminal summary reuses
(`headline_table`, `diagnosis`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pipelines.detector import parse_caption

# kind -> (title, what it tests)
KINDS = {
    "held-out": ("Held-out compositions", "colour + shape + motion triples that never appear together in a training video"),
    "purple": ("Purple", "a colour seen only in still images, never in a training video"),
    "story": ("Story", "several prompts in a row; each segment is scored against its own prompt"),
}  # fmt: skip
ATTRIBUTES = ("colour", "shape", "motion")
FIDELITY_DIR = "tokenizer/fidelity"  # where the tokenizer's evaluation writes its strips, under --out
# The detector reads ground truth exactly, so a tokenizer that keeps objects reconstructs nearly every clip
# clean; below this share it is the tokenizer that bounds what generated videos can show.
TOKENIZER_KEEPS_OBJECT = 0.9
# Generated counts are small (a few to a few dozen videos): a smaller gap to the tokenizer is noise.
TRANSFORMER_GAP = 0.2

CSS = """
*{box-sizing:border-box} body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
 background:#f4f5f7} main{max-width:1180px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 6px} h3{font-size:16px;margin:0 0 2px}
p.lead{color:#555;margin:0 0 14px} .meta{color:#667;font-size:13px}
.banner{background:#fff6dd;border:1px solid #e8cf7a;border-radius:8px;padding:10px 14px;margin:14px 0}
.verdict{background:#1d2330;color:#fff;border-radius:10px;padding:14px 18px;margin:16px 0;font-size:16px}
.verdict b{color:#ffd36b}
.row{display:flex;flex-wrap:wrap;gap:14px}
.panel{background:#fff;border:1px solid #dde0e6;border-radius:10px;padding:14px 16px}
.kind{flex:1 1 300px} .big{font-size:30px;font-weight:700;line-height:1.1;margin:8px 0 0}
.stat{display:grid;grid-template-columns:168px 1fr 104px;align-items:center;gap:8px;margin:5px 0;font-size:14px}
.stat .num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums;color:#333}
.meter{height:9px;background:#e8eaee;border-radius:5px;overflow:hidden}
.meter span{display:block;height:100%} .hi{background:#2e9d5b} .mid{background:#e0a526} .lo{background:#d0463b}
.strips{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px;margin-top:12px}
figure{margin:0;background:#fff;border:1px solid #dde0e6;border-radius:10px;padding:10px}
figure img{width:100%;image-rendering:pixelated;display:block;border-radius:4px}
figcaption{font-size:13px;margin-top:6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:14px}
.card{background:#fff;border:1px solid #dde0e6;border-radius:10px;padding:12px}
.card video{width:100%;aspect-ratio:1;image-rendering:pixelated;background:#000;border-radius:6px;display:block}
.seg{margin-top:10px} .prompt{font-weight:600} .seg ul{list-style:none;padding:0;margin:4px 0 0;font-size:13.5px}
.ok{color:#1f7a44} .bad{color:#b3261e} .na{color:#8a8f99}
.plots img{max-width:100%;display:block;margin-bottom:12px;background:#fff;border:1px solid #dde0e6;border-radius:10px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde0e6} td,th{padding:5px 12px;text-align:left}
tr+tr td{border-top:1px solid #eef0f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bar{width:260px} td.bar span{display:block;height:8px;background:#5b7bd5;border-radius:4px}
pre{background:#1d2330;color:#e8ecf4;padding:12px 14px;border-radius:8px;white-space:pre-wrap;font-size:13px}
#fidelity .stat{max-width:640px}
a{color:#2d5bd3}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def count_of(fraction: float | None, total: int) -> int:
    """How many of `total` a fraction over them stands for."""
    return round((fraction or 0.0) * total)


def share_text(fraction: float | None, total: int) -> str:
    """'8 of 10 (80%)'; 'not asked' when nothing was scored."""
    if fraction is None or not total:
        return "not asked"
    return f"{count_of(fraction, total)} of {total} ({fraction:.0%})"


def headline_rows(kind: str, summary: dict) -> list[tuple[str, float | None, int]]:
    """(label, fraction, out of) per headline number of one kind: one clean object first, then the
    attributes (which count only on clean videos), all three, and for purple the colour in every frame."""
    rows = [("one clean object", summary.get("clean"), summary.get("num_clean", 0))]
    rows += [(f"right {a}", summary.get(a), summary.get(f"num_{a}", 0)) for a in ATTRIBUTES]
    rows.append(("all three right", summary.get("all"), summary.get("num_segments", 0)))
    if kind == "purple":
        rows.append(
            (
                "purple in every frame",
                summary.get("colour_every_frame"),
                summary.get("num_colour_every_frame", 0),
            )
        )
    return rows


def headline_table(adherence: dict) -> list[str]:
    """The headline as terminal lines: a row per kind, a column per number ('8/10  80%')."""
    columns = ["one object", "colour", "shape", "motion", "all three", "every frame"]  # headline_rows' order
    width = max(len(KINDS.get(k, (k,))[0]) for k in [*adherence, "held-out"])

    def cell(fraction: float | None, total: int) -> str:
        return (
            "-" if fraction is None or not total else f"{count_of(fraction, total)}/{total} {fraction:4.0%}"
        )

    lines = [" " * (width + 2) + "".join(f"{c:<12}" for c in columns).rstrip()]
    for kind, summary in adherence.items():
        cells = [cell(f, n) for _, f, n in headline_rows(kind, summary)]
        cells += ["-"] * (len(columns) - len(cells))
        title = KINDS.get(kind, (kind,))[0]
        lines.append(f"{title:<{width}}  " + "".join(f"{c:<12}" for c in cells).rstrip())
    return lines


def unit(kind: str, n: int) -> str:
    word = "segment" if kind == "story" else "video"
    return word if n == 1 else word + "s"


def generated_clean(adherence: dict) -> tuple[int, int]:
    """(clean, scored) segments over every kind."""
    clean = sum(count_of(a.get("clean"), a.get("num_clean", 0)) for a in adherence.values())
    return clean, sum(a.get("num_clean", 0) for a in adherence.values())


def fidelity_of(tokenizer_eval: dict | None) -> dict | None:
    return (tokenizer_eval or {}).get("fidelity") or None


def diagnosis(adherence: dict, tokenizer_eval: dict | None) -> str:
    """Where quality is lost, in two or three plain sentences: the answer to 'where is quality lost?'."""
    clean, scored = generated_clean(adherence)
    fidelity = fidelity_of(tokenizer_eval)
    if fidelity is None:
        return (f"Unknown. {clean} of {scored} generated clips show one clean object, but the tokenizer's object "
                "fidelity was not measured (its checkpoint predates that evaluation), so this cannot tell whether "
                "the tokenizer or the transformer loses the objects.")  # fmt: skip
    n = fidelity["clips"]
    tok = f"{count_of(fidelity['clean'], n)} of {n} tokenizer reconstructions of clips it never saw"
    gen = f"{clean} of {scored} generated clips"
    tokenizer_loses = fidelity["clean"] < TOKENIZER_KEEPS_OBJECT
    transformer_loses = bool(scored) and clean / scored < fidelity["clean"] - TRANSFORMER_GAP
    if tokenizer_loses and transformer_loses:
        return (f"In both stages: only {tok} show one clean object, and fewer still of the generated clips "
                f"({gen}). Train the tokenizer first: every video is decoded by it.")  # fmt: skip
    if tokenizer_loses:
        return (f"In the tokenizer: only {tok} show one clean object. Every generated video is decoded by this "
                f"tokenizer, so it limits them ({gen} show one). Train the tokenizer longer first.")  # fmt: skip
    if transformer_loses:
        return (f"In the transformer: {tok} show one clean object, but only {gen} do. "
                "The tokenizer can draw the objects; the transformer needs more training.")  # fmt: skip
    return (f"Neither stage loses the object: {tok} and {gen} show one clean object. "
            "What remains is following the prompt: see colour, shape and motion.")  # fmt: skip


# ----------------------------------------------------------------------------------------------- pieces
def level(fraction: float | None) -> str:
    if fraction is None:
        return ""
    return "hi" if fraction >= 0.7 else "mid" if fraction >= 0.3 else "lo"


def stat_html(label: str, fraction: float | None, total: int) -> str:
    width = 0 if fraction is None else round(fraction * 100)
    return (f'<div class="stat"><span>{esc(label)}</span><div class="meter"><span class="{level(fraction)}" '
            f'style="width:{width}%"></span></div><span class="num">{esc(share_text(fraction, total))}</span></div>')  # fmt: skip


def headline_html(adherence: dict) -> str:
    panels = []
    for kind, summary in adherence.items():
        title, about = KINDS.get(kind, (kind, ""))
        rows = headline_rows(kind, summary)
        (_, clean, n), rest = rows[0], rows[1:]
        errors = summary.get("num_errors") or 0
        panels.append(
            f'<div class="panel kind" data-kind="{esc(kind)}"><h3>{esc(title)}</h3><div class="meta">{esc(about)}</div>'
            f'<div class="big">{count_of(clean, n)} of {n} {unit(kind, n)}</div>'
            f'<div class="meta">show one clean object{f" ({errors} could not be read)" if errors else ""}</div>'
            f'{stat_html("one clean object", clean, n)}'
            + "".join(stat_html(label, f, total) for label, f, total in rest)
            + "</div>"
        )  # fmt: skip
    if not panels:
        return "<p>No videos were generated.</p>"
    return (f'<div class="row" id="headline">{"".join(panels)}</div><p class="meta">Colour, shape and motion '
            "count only on videos that show one clean object: a frame of scattered patches can average to any colour.</p>")  # fmt: skip


def mark(ok: bool | None) -> str:
    if ok is None:
        return '<span class="na">–</span>'
    return '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'


def attribute_mark(asked: str | None, seen: str | None, clean: bool) -> str:
    """✓ right on a clean object, – right but not counted (no clean object), ✗ wrong."""
    return mark(True) if clean and seen == asked else mark(None) if seen == asked else mark(False)


def attribute_line(name: str, asked: str | None, seen: str | None, clean: bool) -> str:
    """'✓ colour red' / '✗ colour: asked red, saw purple' / '– shape square (not counted: no clean object)'."""
    if asked is None:
        return ""
    if seen != asked:
        return f"<li>{mark(False)} {name}: asked {esc(asked)}, saw {esc(seen or 'nothing')}</li>"
    note = "" if clean else ' <span class="na">(not counted: no clean object)</span>'
    return f"<li>{attribute_mark(asked, seen, clean)} {name} {esc(asked)}{note}</li>"


def reading_html(entry: dict, kind: str, show_range: bool) -> str:
    """The detector's reading of one scored segment beside its prompt."""
    frames = f' <span class="meta">frames {entry["start"]}–{entry["end"] - 1}</span>' if show_range else ""
    head = f'<div class="prompt">“{esc(entry["prompt"])}”{frames}</div>'
    detected = entry.get("detected")
    if not detected:
        return f'<div class="seg">{head}<ul><li>{mark(False)} could not be read: {esc(entry.get("error"))}</li></ul></div>'
    clean = bool(entry.get("clean"))
    share = f"{detected.get('clean_frames', 0):.0%}"
    lines = [f'<li>{mark(clean)} one clean object <span class="meta">(in {share} of frames)</span></li>']
    asked = parse_caption(entry["prompt"])
    lines += [attribute_line(a, getattr(asked, a), detected.get(a), clean) for a in ATTRIBUTES]
    if kind == "purple" and entry.get("colour_every_frame") is not None:
        lines.append(f"<li>{mark(entry['colour_every_frame'])} {esc(asked.colour)} in every frame</li>")
    return f'<div class="seg">{head}<ul>{"".join(lines)}</ul></div>'


def video_card(record: dict) -> str:
    fallback = f'<img src="{esc(record["gif"])}" alt="generated video">' if record.get("gif") else ""
    media = (f'<video src="{esc(record["file"])}" autoplay loop muted playsinline controls '
             f'title="{esc(" | ".join(record["prompts"]))}">{fallback}</video>')  # fmt: skip
    evaluation = record.get("evaluation") or [
        {"prompt": p, "start": 0, "end": 0, "detected": None, "error": "not scored"}
        for p in record["prompts"]
    ]
    story = len(evaluation) > 1
    readings = "".join(reading_html(e, record.get("kind", ""), story) for e in evaluation)
    seconds = f" · {record['request_seconds']:.2f} s" if record.get("request_seconds") is not None else ""
    return (f'<div class="card" data-kind="{esc(record.get("kind"))}">{media}{readings}'
            f'<div class="meta">seed {esc(record.get("seed"))}{seconds} · <a href="{esc(record["file"])}">mp4</a></div></div>')  # fmt: skip


def videos_html(records: list[dict]) -> str:
    parts = []
    for kind in dict.fromkeys(r.get("kind", "") for r in records):
        chosen = [r for r in records if r.get("kind", "") == kind]
        title, about = KINDS.get(kind, (kind, ""))
        parts.append(f'<h3 style="margin-top:18px">{esc(title)} <span class="meta">— {esc(about)}</span></h3>'
                     f'<div class="cards">{"".join(map(video_card, chosen))}</div>')  # fmt: skip
    return "".join(parts) or "<p>No videos.</p>"


def fidelity_html(tokenizer_eval: dict | None, out: Path) -> str:
    te = tokenizer_eval or {}
    psnr = te.get("psnr_db")
    facts = []
    if psnr is not None:
        facts.append(f"PSNR {psnr:.1f} dB on {te.get('clips')} held-out clips of the training data")
    if te.get("used_codes") is not None:
        facts.append(f"{te['used_codes']} codebook entries in use (perplexity {te.get('perplexity', 0):.1f})")
    extra = f'<p class="meta">{esc("; ".join(facts))}. PSNR hides object loss: the background is most of every frame.</p>'
    fidelity = fidelity_of(tokenizer_eval)
    if fidelity is None:
        return ('<div class="panel" id="fidelity"><p><b>Object fidelity was not measured</b> for this tokenizer '
                "(its checkpoint predates that evaluation). Retrain it to see whether its reconstructions keep "
                f"one clean object.</p>{extra if facts else ''}</div>")  # fmt: skip
    n = fidelity["clips"]
    stats = [("one clean object", fidelity["clean"]), *((f"right {a}", fidelity[a]) for a in ATTRIBUTES),
             ("all three right", fidelity["all"])]  # fmt: skip
    figures = []
    for ex in fidelity.get("examples", []):
        rel = f"{FIDELITY_DIR}/{ex['file']}"
        if not (out / rel).exists():
            continue
        truth, seen = ex["truth"], ex["detected"]
        reading = " ".join(
            f"{attribute_mark(t, s, ex['clean'])} {esc(s or 'nothing')}"
            for t, s in zip(truth, seen, strict=True)
        )
        figures.append(f'<figure><img src="{esc(rel)}" alt="{esc(" ".join(truth))}: input over reconstruction">'
                       f'<figcaption><b>{esc(" ".join(truth))}</b> → read as {reading}'
                       f'{"" if ex["clean"] else " <span class=na>(no clean object)</span>"}</figcaption></figure>')  # fmt: skip
    strips = (f'<p class="meta">Each strip: the input clip on top, the tokenizer\'s reconstruction below. '
              f'Clips the detector misread come first.</p><div class="strips">{"".join(figures)}</div>') if figures else ""  # fmt: skip
    return (f'<div class="panel" id="fidelity"><div class="big">{count_of(fidelity["clean"], n)} of {n} clips</div>'
            '<div class="meta">reconstructed with one clean object (every colour × shape × motion, fresh clips)</div>'
            + "".join(stat_html(label, f, n) for label, f in stats[1:])
            + f"{extra if facts else ''}</div>{strips}")  # fmt: skip


def plots_html(plots: list[dict]) -> str:
    parts = [f'<img src="{esc(p["file"])}" alt="{esc(p["title"])}">' if p["file"]
             else f"<p>{esc(p['title'])}: no metrics were logged.</p>" for p in plots]  # fmt: skip
    return f'<div class="plots" id="curves">{"".join(parts)}</div>'


def timings_html(timings: dict[str, float]) -> str:
    total = timings.get("total") or sum(timings.values()) or 1.0
    rows = "".join(
        f'<tr><td>{esc(name)}</td><td class="num">{seconds:.1f} s</td>'
        f'<td class="bar"><span style="width:{min(seconds / total, 1):.0%}"></span></td></tr>'
        for name, seconds in timings.items()
        if name != "total"
    )
    return f'<table id="timings">{rows}<tr><td><b>total</b></td><td class="num"><b>{total / 60:.1f} min</b></td><td></td></tr></table>'


def links_html(out: Path) -> str:
    files = ["results.json", "tokenizer/eval.json", "tokenizer/metrics.jsonl", "transformer/metrics.jsonl"]
    return " · ".join(f'<a href="{f}">{f}</a>' for f in files if (out / f).exists())


def render(results: dict, out: Path, plots: list[dict], next_commands: str) -> str:
    """The page's HTML from the demo's results (files it links are relative to `out`)."""
    records, adherence = results.get("records", []), results.get("adherence", {})
    timings = results.get("timings_s", {})
    minutes = f" · {timings['total'] / 60:.1f} min" if timings.get("total") else ""
    fast = ('<div class="banner">This was a <b>--fast</b> run: every stage ran, but the models trained for a '
            "handful of steps, so expect noise and poor readings. <code>phenaki demo</code> trains for real "
            "(about 15 minutes on a laptop).</div>") if results.get("fast") else ""  # fmt: skip
    sections = [
        f'<h1>phenaki-ray demo</h1><p class="lead">Text to video on a synthetic world of coloured shapes: '
        f'config <b>{esc(results.get("config", ""))}</b> · {len(records)} videos{minutes}</p>{fast}',
        "<h2>Do the videos show what the prompts ask?</h2>"
        '<p class="lead">A deterministic detector reads each generated video: is there one clean object, and '
        "are its colour, shape and motion the ones asked for?</p>" + headline_html(adherence),
        f'<div class="verdict" id="verdict"><b>Where quality is lost:</b> {esc(diagnosis(adherence, results.get("tokenizer_eval")))}</div>',
        "<h2>Tokenizer fidelity</h2><p class=\"lead\">Every video is decoded by the tokenizer, so it bounds what "
        "the transformer can show. The same detector reads its reconstructions of fresh clips it never saw.</p>"
        + fidelity_html(results.get("tokenizer_eval"), out),
        '<h2>Every generated video</h2><p class="lead">Beside its prompt and what the detector read: ✓ counted, '
        "✗ wrong, – right but not counted (no clean object).</p>" + videos_html(records),
        "<h2>Training curves</h2>" + plots_html(plots),
        "<h2>Stage times</h2>" + timings_html(timings),
        '<h2>What to run next</h2><p class="lead">Everything the demo made is kept; these reuse it.</p>'
        f"<pre>{esc(next_commands)}</pre><p class=\"meta\">Data: {links_html(out)}</p>",
    ]  # fmt: skip
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>phenaki-ray demo</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><main>{"".join(sections)}</main></body></html>\n')  # fmt: skip


def write_demo_page(out_dir: str | Path, results: dict, next_commands: str, metrics_file: str) -> Path:
    """Plot the training curves (`<out>/plots/`) and write `<out>/index.html`; returns its path.
    `metrics_file`: the trainers' per-step metrics file name (`jobs.training.metrics.METRICS_FILE`)."""
    from pipelines.demo_plots import plot_training

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = render(results, out, plot_training(out, metrics_file), next_commands)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
