"""The report's plots, drawn from analysis.json alone, as PNG bytes.

matplotlib's object API (Figure + the Agg canvas), not pyplot: no global figure state, no display needed.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 3.4):
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def loss_plot(t: dict) -> bytes:
    fig, ax = _figure()
    for key, label, style in (("train_loss", "train loss (logged means)", "-"), ("val_loss", "validation loss", "o-")):
        pts = t["curve"].get(key) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    if t.get("best_step") is not None:
        ax.axvline(t["best_step"], color="#999", ls=":", label=f"best step {t['best_step']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(f"Loss; curve verdict: {t['curve_verdict'].replace('_', ' ')}")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def token_accuracy_plot(t: dict) -> bytes:
    fig, ax = _figure()
    for key, label, style in (
        ("mean_token_accuracy", "train batches", "-"),
        ("val_mean_token_accuracy", "validation", "o-"),
    ):
        pts = t["curve"].get(key) or []
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token accuracy (%)")
    ax.set_title("Mean token accuracy (teacher-forced; not answer accuracy)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def accuracy_plot(models: list[dict]) -> bytes:
    fig, ax = _figure(5.0, 3.0)
    xs = range(len(models))
    acc = [100 * m["accuracy"] for m in models]
    err = [
        [100 * (m["accuracy"] - m["ci95"][0]) for m in models],
        [100 * (m["ci95"][1] - m["accuracy"]) for m in models],
    ]
    ax.bar(xs, acc, yerr=err, capsize=6, color=[COLORS[i % len(COLORS)] for i in xs])
    ax.set_xticks(list(xs), [m["name"] for m in models])
    ax.set_ylabel("answer accuracy (%)")
    ax.set_title("Answer accuracy, 95% Wilson interval")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _grouped(ax, labels: list[str], series: dict[str, list[float | None]]) -> None:
    width = 0.8 / max(1, len(series))
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [0 if v is None else 100 * v for v in values], width, label=name, color=COLORS[j % len(COLORS)])
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("answer accuracy (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)


def category_plot(failures: dict, names: list[str]) -> bytes:
    cats = [c for c, e in failures.items() if e["kind"] == "question"]
    fig, ax = _figure()
    _grouped(ax, [c.replace("_", " ") for c in cats], {n: [failures[c][f"accuracy_{n}"] for c in cats] for n in names})
    ax.set_title("Accuracy by question category")
    return _png(fig)


def steps_plot(by_steps: list[dict], names: list[str]) -> bytes:
    fig, ax = _figure()
    labels = [f"{r['steps']}\n(n={r['n']})" for r in by_steps]
    _grouped(ax, labels, {n: [r[f"accuracy_{n}"] for r in by_steps] for n in names})
    ax.set_xticks(range(len(labels)), labels, rotation=0, ha="center")
    ax.set_xlabel("steps in the reference solution")
    ax.set_title("Accuracy by number of reasoning steps")
    return _png(fig)


def make_plots(a: dict) -> dict[str, bytes]:
    """{file name: PNG} for every plot the analysis has data for."""
    names = [m["name"] for m in a["models"]]
    plots = {}
    if a["models"]:
        plots["accuracy.png"] = accuracy_plot(a["models"])
    t = a.get("training")
    if t and (t["curve"].get("train_loss") or t["curve"].get("val_loss")):
        plots["loss.png"] = loss_plot(t)
    if t and (t["curve"].get("mean_token_accuracy") or t["curve"].get("val_mean_token_accuracy")):
        plots["token_accuracy.png"] = token_accuracy_plot(t)
    if a.get("failures"):
        plots["categories.png"] = category_plot(a["failures"], names)
    if a.get("by_steps"):
        plots["steps.png"] = steps_plot(a["by_steps"], names)
    return plots
