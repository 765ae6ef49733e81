"""Training curves as PNG plots, from the `metrics.jsonl` each trainer writes (`jobs.training.metrics.MetricsLog`).

One figure per run, one panel per thing a person watches: the tokenizer's loss, reconstruction PSNR and
codebook usage (`used_codes`, `perplexity`); the transformer's loss and masked-token accuracy. Panels whose
metrics the run did not log are left out. Drawn with matplotlib's `Figure` (the Agg canvas, no pyplot), so
no display and no global state are needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# (run directory under the demo's --out, figure title, [(panel title, [metric keys])])
RUNS = (
    ("tokenizer", "Tokenizer (C-ViViT) training",
     [("loss", ["loss"]), ("reconstruction PSNR (dB)", ["psnr"]), ("codebook usage", ["used_codes", "perplexity"])]),
    ("transformer", "Transformer (MaskGIT) training",
     [("loss", ["loss"]), ("masked-token accuracy", ["mask_accuracy"])]),
)  # fmt: skip


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of a metrics file ([] when there is none; a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, sorted by step. A step logged twice (a run resumed from an earlier
    checkpoint re-runs steps) keeps its last value, the one the run went on from."""
    by_step: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if "step" in row and isinstance(value, int | float) and math.isfinite(value):
            by_step[int(row["step"])] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (the first ones over what there is): noisy per-step losses read
    as a trend."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(rows: list[dict], title: str, panels: list[tuple[str, list[str]]], path: str | Path) -> bool:
    """One PNG with a panel per (title, keys) that has data; False (and no file) when none has."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn = [(name, [(k, *series(rows, k)) for k in keys]) for name, keys in panels]
    drawn = [(name, [s for s in lines if s[1]]) for name, lines in drawn]
    drawn = [(name, lines) for name, lines in drawn if lines]
    if not drawn:
        return False
    fig = Figure(figsize=(4.2 * len(drawn), 3.2), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    for ax, (name, lines) in zip(fig.subplots(1, len(drawn), squeeze=False)[0], drawn, strict=True):
        for i, (key, steps, values) in enumerate(lines):
            colour = f"C{i}"
            window = max(1, len(values) // 40)
            if window > 1:
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, smooth(values, window), color=colour, linewidth=1.6, label=key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def plot_training(out_dir: str | Path, metrics_file: str, plots_dir: str = "plots") -> list[dict]:
    """Plot every run under `out_dir` that has `<run>/<metrics_file>` (the trainers' name for it,
    `jobs.training.metrics.METRICS_FILE`); returns [{run, title, file}] with `file` relative to `out_dir`, or
    None for a run without metrics."""
    out = Path(out_dir)
    made = []
    for run, title, panels in RUNS:
        rel = f"{plots_dir}/{run}.png"
        ok = plot_run(read_metrics(out / run / metrics_file), title, panels, out / rel)
        made.append({"run": run, "title": title, "file": rel if ok else None})
    return made
