"""`benchmarks/RESULTS.md` and its PNG plots, rendered from the result JSONs on disk (no benchmark is run here).

Every row names the figure, the baseline it is held against, the ratio or goal, the machine (the JSON's
`machine`), the date (the JSON's `date`; for a JSON written before benchmarks recorded one, the git commit
date of the file, marked as such) and the JSON it comes from. The sections are built in
`benchmarks.report_sections`, the plots in `benchmarks.report_plots`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.suite import BENCHMARKS, RESULTS_DIR, plan_text, read_outcomes

DEFAULT_OUT = Path(__file__).parent / "RESULTS.md"
QUICK_OUT = Path(__file__).parent / "RESULTS-quick.md"
NOT_MEASURED_GPU = "not measured: no GPU was lent to this session"
DATE_FROM_GIT = "git"  # Loaded.date_source when the JSON has no `date`
DATE_FROM_MTIME = "mtime"


@dataclass
class Loaded:
    """One result JSON: its data, where it lies (relative to the report) and when it was measured."""

    name: str
    data: dict
    path: Path
    link: str  # the path as the report links it
    date: str
    date_source: str  # "json", DATE_FROM_GIT or DATE_FROM_MTIME

    @property
    def machine(self) -> str:
        return machine_text(self.data.get("machine"))

    @property
    def date_text(self) -> str:
        return self.date + {"json": "", DATE_FROM_GIT: " †", DATE_FROM_MTIME: " ‡"}[self.date_source]


@dataclass
class Row:
    """One line of the summary table (and of its section's table)."""

    figure: str
    value: str
    baseline: str
    ratio: str
    machine: str
    date: str
    source: str  # the JSON as a markdown link, or what is missing


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row]
    body: str = ""  # markdown after the section's rows: detail tables, notes
    plots: list[tuple[str, str]] = field(default_factory=list)  # (file name under plots/, caption)


def machine_text(machine: object) -> str:
    """`describe_machine()`'s dict -> 'AMD EPYC, 2 CPUs, no GPU' ('unknown' when absent)."""
    if not isinstance(machine, dict):
        return "unknown (the JSON does not describe it)"
    parts = [str(machine.get("cpu") or "unknown CPU")]
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} CPUs")
    parts.append(f"GPU {machine['gpu']}" if machine.get("gpu") else "no GPU")
    return ", ".join(parts)


def file_date(path: Path) -> tuple[str, str]:
    """(YYYY-MM-DD, source) for a JSON with no `date`: its last git commit, else its modification time."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    if out:
        return out, DATE_FROM_GIT
    return time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime)), DATE_FROM_MTIME


def load_results(results_dir: Path, report_dir: Path) -> dict[str, Loaded]:
    """Every `<name>.json` of the suite's benchmarks found in `results_dir` (missing ones are left out)."""
    loaded = {}
    for bench in BENCHMARKS:
        path = results_dir / f"{bench.name}.json"
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(
                f"{path} is not valid JSON ({e}): rerun `python -m benchmarks --only {bench.name}`"
            ) from e
        if isinstance(data.get("date"), str):
            date, source = data["date"][:10], "json"  # a date or an ISO time stamp: the day is what is shown
        else:
            date, source = file_date(path)
        link = Path(os.path.relpath(path, report_dir)).as_posix()
        loaded[bench.name] = Loaded(bench.name, data, path, link, date, source)
    return loaded


def cell(text: object) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


ROW_HEADER = ["figure", "value", "baseline", "ratio / goal", "machine", "date", "JSON"]


def row_cells(row: Row) -> list[object]:
    return [row.figure, row.value, row.baseline, row.ratio, row.machine, row.date, row.source]


def plots_dir_for(out: Path) -> Path:
    """benchmarks/RESULTS.md -> benchmarks/plots/; any other report -> plots/<its stem>/ beside it."""
    return out.parent / "plots" if out.name == DEFAULT_OUT.name else out.parent / "plots" / out.stem


def render(results_dir: Path = RESULTS_DIR, out: Path = DEFAULT_OUT, *, quick: bool = False) -> list[Section]:
    """Writes `out` and its plots from the JSONs in `results_dir`; -> the sections written."""
    from benchmarks.report_sections import build_sections

    out = out.resolve()
    plots = plots_dir_for(out)
    plots.mkdir(parents=True, exist_ok=True)
    results_dir = results_dir.resolve()
    results = load_results(results_dir, out.parent)
    sections = build_sections(results, plots)
    outcomes = read_outcomes(results_dir)
    out.write_text(markdown(sections, results_dir, results, outcomes, plots, out, quick=quick))
    return sections


def markdown(
    sections: list[Section],
    results_dir: Path,
    results: dict[str, Loaded],
    outcomes: dict[str, dict],
    plots: Path,
    out: Path,
    *,
    quick: bool,
) -> str:
    command = "python -m benchmarks --quick" if quick else "python -m benchmarks"
    results_link = Path(os.path.relpath(results_dir, out.parent)).as_posix()
    parts = [
        "# Benchmark results" + (" (quick pass: smoke figures, not results)" if quick else ""),
        "",
        f"Generated by `{command}` (or `python -m benchmarks --render` from the JSONs on disk) on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. Do not edit by hand: every figure comes from a JSON under "
        f"`{results_link}/`, "
        "written by `python -m benchmarks.<name>` with the machine and the date.",
        "",
        "How to read it: *value* is what we measured, *baseline* what it is held against (measured in the same "
        "run unless the row says otherwise), *ratio / goal* the comparison. CPU figures come from a 2-core "
        "machine that other work shared at times; ratios within one run are more trustworthy than absolute "
        "times. Dates marked † are the git commit date of a JSON written before benchmarks recorded their "
        "date; ‡ a file's modification time.",
        "",
        "Where to look when choosing a configuration: what more MaskGIT steps cost, and MaskGIT against "
        "autoregressive decoding, in *Sampling*; each tokenizer preset's cost per clip in *Tokenizer*; how close "
        "data preparation runs to pure decoding in *Prepare*; what a second worker buys in *Training*; what "
        "request batching buys under load in *Serving*; what the demo preset reaches in *Demo quality*, judged by "
        "a detector whose own accuracy is in *The adherence detector itself*.",
        "",
        "## Summary",
        "",
        table(ROW_HEADER, [row_cells(r) for s in sections for r in s.rows]),
        "",
    ]
    for s in sections:
        parts += [f"## {s.title}", "", table(ROW_HEADER, [row_cells(r) for r in s.rows]), ""]
        if s.body:
            parts += [s.body.strip(), ""]
        for name, caption in s.plots:
            rel = Path(os.path.relpath(plots / name, out.parent)).as_posix()
            parts += [f"![{caption}]({rel})", ""]
    parts += ["## Regenerating", "", "```", plan_text(list(BENCHMARKS), quick=quick), "```", ""]
    parts += [
        "`python -m benchmarks --skip slow` leaves out the slow ones (demo_stages, image_ablation, magvit_quality); "
        "`--only NAME,...` runs a few; `--render` re-renders this file from the JSONs without running anything. "
        "Each benchmark runs as its own process (its output in `results/logs/<name>.log`), so one failing "
        "does not lose the others.",
        "",
    ]
    if outcomes:
        parts += ["### Last suite run", ""]
        parts.append(
            table(
                ["benchmark", "outcome", "seconds", "date", "why it failed"],
                [
                    [o["name"], "ok" if o["ok"] else "FAILED", o["seconds"], o["date"], o["reason"] or ""]
                    for o in outcomes.values()
                ],
            )
        )
        parts.append("")
    return "\n".join(parts)
