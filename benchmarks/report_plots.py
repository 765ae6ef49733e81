"""The report's PNG plots (`benchmarks.report`): small generic charts drawn with matplotlib's `Figure` on the
Agg canvas (no pyplot, no display, no global state), as `pipelines.demo_plots` draws training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _figure(width: float = 6.4, height: float = 3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def lines(
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    hlines: dict[str, float] | None = None,
    logy: bool = False,
) -> Path:
    """One line per series (x, y) with markers; `hlines`: labelled dashed horizontal references."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, (xs, ys)) in enumerate(series.items()):
        (line,) = ax.plot(list(xs), list(ys), marker="o", label=label, color=f"C{i}")
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle="--", color=f"C{i}", alpha=0.7, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def grouped_bars(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    bars: dict[str, Sequence[float | None]],
    *,
    logy: bool = False,
    reference: tuple[str, float] | None = None,
    horizontal_labels: bool = False,
) -> Path:
    """Bars per group, one colour per `bars` key (a None value leaves a gap); values written on the bars;
    `reference`: a labelled dashed horizontal line (a goal)."""
    fig = _figure(min(11.0, max(6.4, 0.45 * len(groups) * max(1, len(bars)) + 2)), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(bars))
    for i, (label, values) in enumerate(bars.items()):
        xs = [g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))]
        kept = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        if not kept:
            continue
        rects = ax.bar([x for x, _ in kept], [v for _, v in kept], width, label=label, color=f"C{i}")
        ax.bar_label(rects, labels=[_short(v) for _, v in kept], fontsize=7, padding=1)
    if reference:
        ax.axhline(reference[1], linestyle="--", color="black", alpha=0.6, label=reference[0])
    ax.set_xticks(range(len(groups)), list(groups), rotation=0 if horizontal_labels else 15, fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def stacked_bar(path: Path, title: str, xlabel: str, parts: dict[str, float]) -> Path:
    """One horizontal bar split into labelled parts (e.g. wall time by stage), each with its value."""
    fig = _figure(7.5, 3.0)
    ax = fig.add_subplot()
    left = 0.0
    total = sum(parts.values()) or 1.0
    for i, (label, value) in enumerate(parts.items()):
        ax.barh([0], [value], left=left, color=f"C{i % 10}", label=f"{label} ({_short(value)})")
        if value / total > 0.06:
            ax.text(left + value / 2, 0, _short(value), ha="center", va="center", fontsize=8)
        left += value
    ax.set_yticks([])
    ax.set(title=title, xlabel=xlabel)
    fig.legend(fontsize=7, ncol=4, loc="outside lower center")
    fig.savefig(path)
    return path


def _short(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"
