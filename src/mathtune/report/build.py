"""Write a report folder: analysis.json, plots/*.png, report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path

from mathtune.analysis.summary import summarize_run
from mathtune.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from mathtune.report.plots import make_plots
from mathtune.report.render import document, to_html, to_markdown


def write_report(analysis: dict, out_dir: Path) -> None:
    """Everything is rendered from `analysis` (also written, so the report can be checked against it)."""
    out_dir = Path(out_dir)
    plots = make_plots(analysis)
    blocks = document(analysis, set(plots))
    atomic_write_json(out_dir / "analysis.json", analysis)
    for name, png in plots.items():
        atomic_write_bytes(out_dir / "plots" / name, png)
    atomic_write_text(out_dir / "report.md", to_markdown(blocks))
    atomic_write_text(out_dir / "report.html", to_html(blocks, plots))


def build_report(run_dir: Path) -> dict:
    analysis = summarize_run(run_dir)
    write_report(analysis, run_dir)
    return analysis
