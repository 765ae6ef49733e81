"""A self-contained results page: `index.html` (inline CSS, no external assets) + `results.json`.

Records are `{"prompts": [...], "file": "videos/x.mp4", "gif": "videos/x.gif", "kind": "held-out", ...}` with
optional `adherence` (`{"colour": 1.0, "shape": False, ...}`, or a list of such dicts, one per segment),
`segments` (frame ranges per prompt), `seed` and `request_seconds`. Paths are relative to the output directory,
so the folder can be zipped or served as is.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222;background:#fafafa}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px;width:280px}
.card video,.card img{width:256px;height:256px;object-fit:contain;image-rendering:pixelated;background:#000;
 border-radius:4px;display:block}
.card ol{padding-left:1.3em;margin:.5em 0} .meta{color:#666;font-size:.85em}
.ok{color:#0a7a2f;font-weight:600} .bad{color:#b00020;font-weight:600} .na{color:#999}
.mark{display:inline-block;margin-right:.6em;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0 1em;background:#fff} caption{text-align:left;font-weight:600;margin:.3em 0}
td,th{border:1px solid #ddd;padding:.25em .7em;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#fff;border:1px solid #ddd;padding:.6em;overflow:auto}
"""


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, Paths, tuples and dataclasses -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A table cell / mark value."""
    if value is None:
        return '<span class="na">–</span>'
    if isinstance(value, bool):
        return '<span class="ok">✓</span>' if value else '<span class="bad">✗</span>'
    if isinstance(value, float):
        return _esc(f"{value:.3g}" if abs(value) >= 1000 or value == int(value) else f"{value:.2f}")
    if isinstance(value, dict | list):
        return f"<code>{_esc(json.dumps(value))}</code>"
    return _esc(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _marks(adherence: Any) -> str:
    """Adherence dict -> inline marks: booleans as ✓/✗, fractions as numbers (✓ at 1, ✗ at 0)."""
    if isinstance(adherence, list):
        return "".join(f"<div>segment {i + 1}: {_marks(a)}</div>" for i, a in enumerate(adherence))
    if not isinstance(adherence, dict):
        return _fmt(adherence)
    parts = []
    for key, value in adherence.items():
        if _is_num(value) and value in (0, 1):
            value = bool(value)
        parts.append(f'<span class="mark">{_esc(key)} {_fmt(value)}</span>')
    return "".join(parts)


def _segment_ranges(record: dict) -> list[tuple[int, int] | None]:
    """Frame range per prompt from `segments` in any of the shapes the pipeline writes."""
    prompts = record.get("prompts") or []
    segments = record.get("segments") or []
    out: list[tuple[int, int] | None] = []
    for i in range(len(prompts)):
        s = segments[i] if i < len(segments) else None
        if isinstance(s, dict) and "start" in s:
            out.append((int(s["start"]), int(s["end"])))
        elif isinstance(s, list | tuple) and len(s) >= 2:
            out.append((int(s[-2]), int(s[-1])))
        else:
            out.append(None)
    return out


def _card(record: dict) -> str:
    video, gif = record.get("file"), record.get("gif")
    fallback = (
        f'<img src="{_esc(gif)}" alt="generated video (GIF)">'
        if gif
        else (f'<a href="{_esc(video)}">download the video</a>' if video else "")
    )
    if video and str(video).lower().endswith(".gif"):
        media = f'<img src="{_esc(video)}" alt="generated video">'
    elif video:
        media = f'<video controls loop muted autoplay playsinline src="{_esc(video)}">{fallback}</video>'
    else:
        media = fallback or '<div class="na">no video</div>'
    ranges = _segment_ranges(record)
    items = "".join(
        f"<li>{_esc(p)}" + (f' <span class="meta">(frames {r[0]}–{r[1] - 1})</span>' if r else "") + "</li>"
        for p, r in zip(record.get("prompts") or [], ranges, strict=True)
    )
    meta = [f"{k} {_esc(record[k])}" for k in ("kind", "seed") if record.get(k) is not None]
    if record.get("request_seconds") is not None:
        meta.append(f"{float(record['request_seconds']):.2f} s")
    adherence = f"<div>{_marks(record['adherence'])}</div>" if record.get("adherence") is not None else ""
    return (
        f'<div class="card">{media}<ol>{items}</ol>{adherence}'
        f'<div class="meta">{" · ".join(meta)}</div></div>'
    )


def _table(caption: str, rows: dict[str, Any]) -> str:
    """dict of dicts -> a row per outer key, a column per inner key; dict of scalars -> key/value rows."""
    if rows and all(isinstance(v, dict) for v in rows.values()):
        cols: list[str] = []
        for v in rows.values():
            cols += [k for k in v if k not in cols]
        head = "".join(f"<th>{_esc(c)}</th>" for c in ["", *cols])
        body = "".join(
            f"<tr><th>{_esc(name)}</th>"
            + "".join(f'<td class="{"num" if _is_num(v.get(c)) else ""}">{_fmt(v.get(c))}</td>' for c in cols)
            + "</tr>"
            for name, v in rows.items()
        )
    else:
        head = "<th></th><th></th>"
        body = "".join(
            f'<tr><th>{_esc(k)}</th><td class="{"num" if _is_num(v) else ""}">{_fmt(v)}</td></tr>'
            for k, v in rows.items()
        )
    return f"<table><caption>{_esc(caption)}</caption><tr>{head}</tr>{body}</table>"


def summarise_records(records: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """Per kind: number of videos and the mean of every numeric/boolean adherence key (over segments too)."""
    out: dict[str, dict[str, Any]] = {}
    sums: dict[str, dict[str, list[float]]] = {}
    for r in records:
        kind = str(r.get("kind") or "other")
        row = out.setdefault(kind, {"videos": 0})
        row["videos"] += 1
        adherence = r.get("adherence")
        for a in adherence if isinstance(adherence, list) else [adherence]:
            if isinstance(a, dict):
                for key, value in a.items():
                    if isinstance(value, bool | int | float):
                        sums.setdefault(kind, {}).setdefault(key, []).append(float(value))
    for kind, keys in sums.items():
        for key, values in keys.items():
            out[kind][key] = sum(values) / len(values)
    return out


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _tabular(value: Any) -> bool:
    """A non-empty dict of scalars, or of dicts of scalars."""
    if not isinstance(value, dict) or not value:
        return False
    rows = list(value.values())
    return all(map(_is_scalar, rows)) or all(
        isinstance(v, dict) and all(map(_is_scalar, v.values())) for v in rows
    )


def _summary_html(summary: dict | None, records: list[dict]) -> str:
    parts = [_table("videos by kind", summarise_records(records))] if records else []
    scalars = {}
    for key, value in (summary or {}).items():
        if _is_scalar(value):
            scalars[key] = value
        elif _tabular(value):
            parts.append(_table(key, value))
        else:
            parts.append(f"<p><b>{_esc(key)}</b></p><pre>{_esc(json.dumps(value, indent=2))}</pre>")
    if scalars:
        parts.insert(0, _table("summary", scalars))
    return "".join(parts)


def write_gallery(
    out_dir: str | os.PathLike, records: list[dict], title: str, summary: dict | None = None
) -> tuple[Path, Path]:
    """Write `<out_dir>/index.html` and `<out_dir>/results.json` ({title, summary, records}); return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = to_jsonable(list(records))
    summary = to_jsonable(summary) if summary is not None else None
    results_path = out / "results.json"
    results_path.write_text(json.dumps({"title": title, "summary": summary, "records": records}, indent=2))

    kinds: dict[str, list[dict]] = {}
    for r in records:
        kinds.setdefault(str(r.get("kind") or "other"), []).append(r)
    sections = "".join(
        f'<h2>{_esc(kind)} <span class="meta">({len(rs)})</span></h2><div class="grid">{"".join(map(_card, rs))}</div>'
        for kind, rs in kinds.items()
    )
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f"<h1>{_esc(title)}</h1>"
        f'<p class="meta">{len(records)} videos · data in <a href="results.json">results.json</a></p>'
        f"{_summary_html(summary, records)}{sections or '<p>No videos.</p>'}</body></html>\n"
    )
    index_path = out / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path, results_path
