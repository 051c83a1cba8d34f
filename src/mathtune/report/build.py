"""report.md from analysis.json: every figure here comes from that file, which comes from the run's files."""

from __future__ import annotations

from pathlib import Path

from mathtune.analysis.summary import summarize_run
from mathtune.io import atomic_write_json, atomic_write_text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _headline(a: dict) -> list[str]:
    lines = ["## Answer accuracy on the test split", ""]
    if not a["models"]:
        return lines + ["No predictions yet.", ""]
    lines += [
        "Generated answers, final number extracted and compared exactly with the reference "
        f"(protocol: `{a['models'][0]['protocol']}`, greedy). Strict: only a `#### N` answer counts, as in "
        "lm-evaluation-harness's strict-match.",
        "",
        "| model | n | correct | accuracy | 95% CI (Wilson) | strict (lm-eval) | no number found | truncated |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for m in a["models"]:
        lo, hi = m["ci95"]
        lines.append(
            f"| {m['name']} | {m['n']} | {m['correct']} | {_pct(m['accuracy'])} | "
            f"{_pct(lo)} to {_pct(hi)} | {_pct(m['strict_accuracy'])} | {m['no_answer']} | {m['truncated']} |"
        )
    sampled = [m for m in a["models"] if "k" in m]
    if sampled:
        lines += ["", "Sampled answers: " + "; ".join(
            f"{m['name']} maj@{m['k']} {_pct(m['maj_at_k'])}, pass@{m['k']} {_pct(m['pass_at_k'])}" for m in sampled) + "."]
    c = a.get("comparison")
    if c:
        verdict = "significant" if c["mcnemar_p"] < 0.05 else "not significant"
        lines += [
            "",
            f"Change: {100 * c['diff']:+.1f} points ({c['b']} minus {c['a']}, {c['n']} paired questions; 95% CI "
            f"{100 * c['diff_ci95'][0]:+.1f} to {100 * c['diff_ci95'][1]:+.1f}). "
            f"Both right {c['both_correct']}, only {c['a']} {c['only_a']}, only {c['b']} {c['only_b']}, "
            f"neither {c['neither']}. Exact McNemar p = {c['mcnemar_p']:.3g}: {verdict} at the 5% level.",
        ]
    return lines + [""]


def _training(t: dict | None) -> list[str]:
    if not t:
        return []
    dec = lambda x: "n/a" if x is None else f"{x:.1f}%"  # noqa: E731
    return [
        "## Training",
        "",
        "| | first | last | decrease |",
        "|---|---:|---:|---:|",
        f"| train loss (logged means) | {_num(t['first_train_loss'])} | {_num(t['last_train_loss'])} | "
        f"{dec(t['train_loss_decrease_pct'])} |",
        f"| validation loss (step {t['first_val_step']} to {t['last_val_step']}) | {_num(t['first_val_loss'])} | "
        f"{_num(t['last_val_loss'])} | {dec(t['val_loss_decrease_pct'])} |",
        f"| mean token accuracy (train batches) | {_pct(t['first_mean_token_accuracy'])} | "
        f"{_pct(t['last_mean_token_accuracy'])} | |",
        "",
        "Mean token accuracy is a training metric: the share of answer tokens the model predicts right given the "
        "reference so far (teacher forcing). It is not answer accuracy; the table above is.",
        "",
        f"Steps: {t['steps']}; best validation step: {t['best_step']}; early stopped: "
        f"{'yes' if t['early_stopped'] else 'no'}; training tokens: {t['tokens']}; mean throughput: "
        f"{_num(t['tokens_per_s'], '.1f')} tokens/s.",
        "",
    ]


def _run(a: dict) -> list[str]:
    env = a.get("environment", {})
    pk = env.get("packages", {})
    lines = ["## Run", "", "| stage | wall time (s) |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in a["stages_seconds"].items()]
    cost = a["cost"]
    price = f"${cost['price_per_hour']:.2f}/h" + (f" ({cost['price_source']})" if cost["price_source"] else "")
    lines += [
        "",
        f"Total {cost['wall_seconds']:.0f} s at {price}: ${cost['dollars']:.2f}.",
        f"Device: {env.get('gpu') or 'CPU'} ({env.get('cores')} cores); python {env.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in pk.items() if v),
        f"Config hash {a.get('config_hash')}, git commit {a.get('git_commit') or 'unknown'}.",
        "",
    ]
    return lines


def render_markdown(a: dict) -> str:
    d = a.get("data", {})
    lines = [f"# mathtune report: {a.get('model_name')}", ""]
    if d:
        lines += [
            f"Data: {d.get('source')} ({d.get('train')} train rows, {d.get('val')} validation rows); "
            f"test: {d.get('test_source')} ({d.get('test')} questions).",
            "",
        ]
        lines += [f"> **Warning:** {w}" for w in d.get("warnings", [])] + ([""] if d.get("warnings") else [])
    lines += _headline(a) + _training(a.get("training")) + _run(a)
    return "\n".join(lines)


def build_report(run_dir: Path) -> dict:
    analysis = summarize_run(run_dir)
    atomic_write_json(run_dir / "analysis.json", analysis)
    atomic_write_text(run_dir / "report.md", render_markdown(analysis))
    return analysis
