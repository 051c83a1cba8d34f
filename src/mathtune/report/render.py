"""The report as a list of blocks, drawn from analysis.json, then written as Markdown or as self-contained HTML.

One document, two renderers: report.md and report.html say the same things. Blocks:
  ("h1"|"h2"|"h3"|"p"|"note", text)    ("table", headers, rows)    ("img", file name, alt text)
  ("example", {id, question, reference, answers})    ("changes", {a, b, rows}): fixed or broken questions
Every string that came from data is escaped by the HTML renderer (html.escape) and fenced or escaped by the
Markdown one; no block carries markup of its own.
"""

from __future__ import annotations

import base64
import html
import re

from mathtune.analysis.categories import RULES

Block = tuple


def _says(q: dict) -> str:
    """The false equation's message (analysis.json's `says`; older files have only the left side's value)."""
    return q.get("says") or f"left side is {q['left']}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _headline(a: dict) -> list[Block]:
    out: list[Block] = [("h2", "Answer accuracy")]
    if not a["models"]:
        return out + [("p", "No predictions yet.")]
    protocol = a["models"][0]["protocol"] or "unknown"
    c = a.get("comparison")
    if c:
        ma = next(m for m in a["models"] if m["name"] == c["a"])
        mb = next(m for m in a["models"] if m["name"] == c["b"])
        significant = c["mcnemar_p"] < 0.05
        direction = "better" if c["diff"] > 0 else "worse"
        out.append(
            (
                "p",
                f"{c['b']}: {pct(mb['accuracy'])} (95% CI {pct(mb['ci95'][0])} to {pct(mb['ci95'][1])}) "
                f"against {c['a']}: {pct(ma['accuracy'])} ({pct(ma['ci95'][0])} to {pct(ma['ci95'][1])}), "
                f"a change of {100 * c['diff']:+.1f} points (95% CI {100 * c['diff_ci95'][0]:+.1f} to "
                f"{100 * c['diff_ci95'][1]:+.1f}) on {c['n']} paired questions; exact McNemar p = "
                f"{c['mcnemar_p']:.3g}.",
            )
        )
        out.append(
            (
                "p",
                f"{c['b']} is significantly {direction} than {c['a']} at the 5% level."
                if significant
                else f"The change is not significant at the 5% level: with {c['n']} questions, a difference this "
                f"size can come from chance.",
            )
        )
        if c.get("power"):
            out.append(("p", _power_sentence(c)))
    out += [("p", _also_answered(m, a["models"])) for m in a["models"] if "n_all" in m]
    protocols = {m["name"]: m["protocol"] or "unknown" for m in a["models"]}
    named = (
        f"protocol `{protocol}`"
        if len(set(protocols.values())) == 1
        else "protocols " + ", ".join(f"`{p}` ({n})" for n, p in protocols.items())
    )
    out.append(
        (
            "p",
            f"Generated answers, the final number extracted and compared exactly with the reference; "
            f"{named}. Strict: only a `#### N` answer counts (lm-evaluation-harness's strict-match).",
        )
    )
    rows = [
        [
            m["name"],
            m["protocol"] or "",
            m["n"],
            m["correct"],
            pct(m["accuracy"]),
            f"{pct(m['ci95'][0])} to {pct(m['ci95'][1])}",
            pct(m["strict_accuracy"]),
            m["format_failures"],
            m["truncated"],
        ]
        for m in a["models"]
    ]
    out.append(
        (
            "table",
            [
                "model",
                "protocol",
                "n",
                "correct",
                "accuracy",
                "95% CI (Wilson)",
                "strict (lm-eval)",
                "no number found",
                "truncated",
            ],
            rows,
        )
    )
    sampled = [m for m in a["models"] if "k" in m]
    if sampled:
        out.append(
            (
                "p",
                "Sampled answers: "
                + "; ".join(
                    f"{m['name']} maj@{m['k']} {pct(m['maj_at_k'])}, pass@{m['k']} {pct(m['pass_at_k'])}"
                    for m in sampled
                ),
            )
        )
    if c:
        out.append(
            (
                "table",
                ["", f"{c['b']} right", f"{c['b']} wrong"],
                [[f"{c['a']} right", c["both_correct"], c["only_a"]], [f"{c['a']} wrong", c["only_b"], c["neither"]]],
            )
        )
    return out + [("img", "accuracy.png", "answer accuracy with 95% intervals")]


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _power_sentence(c: dict) -> str:
    """What this n could detect (alpha 0.05, 80% power, at the observed share of discordant pairs)."""
    p = c["power"]
    if p["discordant_share"] == 0:
        return (
            f"Power: no question was answered right by one model only, so this comparison cannot say what "
            f"difference {c['n']} questions could detect."
        )
    head = (
        f"Power (paired, alpha {p['alpha']}, {100 * p['power']:.0f}% power, {pct(p['discordant_share'])} of "
        f"questions discordant): "
    )
    if p["detectable_diff"] is None:  # even every discordant question going one way would not reach the power
        text = head + (
            f"with {c['n']} questions this comparison cannot detect any change: not even +-"
            f"{_points(p['discordant_share'])} points, every discordant question going one way"
        )
    else:
        text = (
            head
            + f"with {c['n']} questions this comparison could detect changes of +-{_points(p['detectable_diff'])} points"
        )
    if c["n"] < p["full_split_n"] and p["full_split_detectable_diff"] is not None:
        text += f"; all {p['full_split_n']:,} GSM8K test questions would detect +-{_points(p['full_split_detectable_diff'])}"
    if p["n_needed_for_observed"] is not None:
        text += f"; detecting the observed {100 * c['diff']:+.1f} points would take about {p['n_needed_for_observed']:,} questions"
    return text + "."


def _also_answered(m: dict, models: list[dict]) -> str:
    others = " and ".join(o["name"] for o in models if o is not m)
    return (
        f"{m['name']} also answered {m['n_all'] - m['n']} questions that {others} did not: "
        f"{m['correct_all']}/{m['n_all']} = {pct(m['accuracy_all'])} (95% CI {pct(m['ci95_all'][0])} to "
        f"{pct(m['ci95_all'][1])}) on all of its own. Every other figure is on the {m['n']} questions all answered."
    )


BEHAVIOUR = [
    ("mean_generated_tokens", "mean generated tokens", lambda x: num(x, ".1f")),
    ("format_compliance", "ends with a `#### N` line", pct),
    ("truncated", "hit the token limit", pct),
    ("repetition_loop", "in a repetition loop", pct),
    ("no_number", "no number found", pct),
]


def _behaviour(a: dict) -> list[Block]:
    b = a.get("behaviour")
    if not b:
        return []
    names = list(b["models"])
    change = b.get("change")

    def signed(key, x):
        if x is None:
            return "n/a"
        return f"{x:+.1f}" if key == "mean_generated_tokens" else f"{100 * x:+.1f} points"

    rows = [
        [label] + [fmt(b["models"][n][key]) for n in names] + ([signed(key, change[key])] if change else [])
        for key, label, fmt in BEHAVIOUR
    ]
    return [
        ("h2", "How the answers look"),
        (
            "p",
            "What fine-tuning changes first in a small model is its format. Shares of each model's answers "
            "(rules in docs/analysis-schema.md).",
        ),
        ("table", ["", *names] + ([f"change ({names[-1]} - {names[0]})"] if change else []), rows),
    ]


def _calculator(a: dict) -> list[Block]:
    calc = a.get("calculator")
    if not calc:
        return []
    slips = a.get("failures", {}).get("arithmetic_slip", {})
    models = {m["name"]: m for m in a["models"]}
    rows = [
        [
            m["name"],
            f"{m['correct']}/{m['n']}",
            pct(m["accuracy"]),
            f"{pct(m['ci95'][0])} to {pct(m['ci95'][1])}",
            slips.get(f"n_{m['name']}", "n/a"),
        ]
        for m in a["models"]
    ]
    out: list[Block] = [
        ("h2", "The calculator"),
        (
            "p",
            "Each model also answered with the GSM8K paper's calculator in the decoding loop: after `<<EXPR=` the "
            "result and `>>` are forced (src/mathtune/evaluate/calculator.py). Arithmetic slips are answers that hold "
            "an equation that is false when re-evaluated.",
        ),
        ("table", ["arm", "correct", "accuracy", "95% CI (Wilson)", "answers with an arithmetic slip"], rows),
    ]
    for c in calc:
        p = c["mcnemar_p"]
        out.append(
            (
                "p",
                f"{c['a']} with the calculator: {pct(models[c['b']]['accuracy'])} against "
                f"{pct(models[c['a']]['accuracy'])} without, {100 * c['diff']:+.1f} points (95% CI "
                f"{100 * c['diff_ci95'][0]:+.1f} to {100 * c['diff_ci95'][1]:+.1f}) on {c['n']} questions; "
                f"{c['only_b']} fixed, {c['only_a']} broken; exact McNemar p = {p:.3g}"
                f"{' (significant at 5%)' if p < 0.05 else ' (not significant at 5%)'}; "
                f"{c['calculator_calls']} calculator calls.",
            )
        )
    return out


MD_CHANGES = 20  # rows of each kind in report.md; analysis.json and report.html hold them all


def _changes(a: dict) -> list[Block]:
    ch = a.get("changes")
    if not ch:
        return []
    out: list[Block] = [
        ("h2", "Which questions changed"),
        (
            "p",
            f"Fixed: wrong for {ch['a']}, right for {ch['b']} ({len(ch['fixed'])}). Broken: right "
            f"for {ch['a']}, wrong for {ch['b']} ({len(ch['broken'])}). These are the discordant "
            f"pairs of the McNemar test.",
        ),
    ]
    for kind in ("fixed", "broken"):
        if ch[kind]:
            out.append(("h3", f"{kind.capitalize()} ({len(ch[kind])})"))
            out.append(("changes", {"a": ch["a"], "b": ch["b"], "rows": ch[kind]}))
    return out


def _training(t: dict | None) -> list[Block]:
    if not t:
        return []
    dec = lambda x: "n/a" if x is None else f"{x:.1f}%"  # noqa: E731
    return [
        ("h2", "Training"),
        (
            "table",
            ["", "first", "last", "decrease"],
            [
                [
                    "train loss (logged means)",
                    num(t["first_train_loss"]),
                    num(t["last_train_loss"]),
                    dec(t["train_loss_decrease_pct"]),
                ],
                [
                    f"validation loss (step {t['first_val_step']} to {t['last_val_step']})",
                    num(t["first_val_loss"]),
                    num(t["last_val_loss"]),
                    dec(t["val_loss_decrease_pct"]),
                ],
                [
                    "mean token accuracy (train batches)",
                    pct(t["first_mean_token_accuracy"]),
                    pct(t["last_mean_token_accuracy"]),
                    "",
                ],
            ],
        ),
        ("p", f"Curve verdict: {t['curve_verdict'].replace('_', ' ')}. {t['recommendation']}"),
        (
            "note",
            "Mean token accuracy is a training metric: the share of answer tokens predicted right given the "
            "reference so far (teacher forcing). It is not answer accuracy; the section above is.",
        ),
        (
            "p",
            f"Steps: {t['steps']}; best validation step: {t['best_step']}; early stopped: "
            f"{'yes' if t['early_stopped'] else 'no'}; training tokens: {t['tokens']}; mean throughput: "
            f"{num(t['tokens_per_s'], '.1f')} tokens/s.",
        ),
        ("img", "loss.png", "train and validation loss"),
        ("img", "token_accuracy.png", "mean token accuracy"),
    ]


def _categories(a: dict) -> list[Block]:
    f = a.get("failures")
    if not f:
        return []
    names = [m["name"] for m in a["models"]]
    focus = names[-1]
    headers = (
        ["category", "rule"]
        + [f"n ({n})" for n in names]
        + [f"accuracy {n}" for n in names]
        + [f"wrong answers of {focus}", "share of its wrong"]
    )
    rows = []
    for cat, e in f.items():
        rows.append(
            [cat.replace("_", " "), RULES.get(cat, "")]
            + [e[f"n_{n}"] for n in names]
            + [pct(e[f"accuracy_{n}"]) for n in names]
            + [e["count"], pct(e["share_of_wrong"])]
        )
    steps_rows = [
        [r["steps"], r["n"]] + [f"{r[f'correct_{n}']}/{r[f'n_{n}']} ({pct(r[f'accuracy_{n}'])})" for n in names]
        for r in a["by_steps"]
    ]
    return [
        ("h2", "What improved and what did not"),
        (
            "p",
            "Categories are deterministic rules, several per question (docs/analysis-schema.md). Question "
            "categories hold for every model; answer categories are per model, so each model's n differs there. "
            f"Counts of wrong answers are {focus}'s.",
        ),
        ("table", headers, rows),
        ("img", "categories.png", "accuracy by question category"),
        ("h3", "By number of steps in the reference solution"),
        ("table", ["steps", "n"] + names, steps_rows),
        ("img", "steps.png", "accuracy by number of steps"),
    ]


def _examples(a: dict) -> list[Block]:
    f, ex = a.get("failures"), a.get("examples", {})
    if not f or not ex:
        return []
    out: list[Block] = [
        ("h2", "Failure examples"),
        (
            "p",
            f"Up to three wrong answers of {a['models'][-1]['name']} per category, in the order of its "
            "predictions file. "
            "False equations are marked with the value of the side that was computed.",
        ),
    ]
    for cat, e in f.items():
        if e["examples"]:
            out.append(("h3", f"{cat.replace('_', ' ')} ({e['count']} wrong answers)"))
            out += [("example", {"id": i, **ex[i]}) for i in e["examples"] if i in ex]
    return out


def _cost(a: dict) -> list[Block]:
    c = a.get("cost")
    if not c:
        return []
    rows = [[k, f"{v:.1f}"] for k, v in c["stages_seconds"].items()] + [["total", f"{c['wall_seconds']:.1f}"]]
    header = ["stage", "wall time (s)"]
    peaks = c.get("stages_peak_rss_gb") or {}
    if any(v is not None for v in peaks.values()):
        header.append("peak memory (GB)")
        peaks = {**peaks, "total": max(v for v in peaks.values() if v is not None)}  # the run's: its largest stage's
        rows = [row + [_gb(peaks.get(row[0]))] for row in rows]
    if c["gpus"]:
        text = (
            f"{c['gpus']} x {c['device']}: {c['gpu_hours']:.3f} GPU-hours at ${c['price_per_gpu_hour']:.2f} per "
            f"GPU-hour ({c['price_source']}{', ' + c['price_date'] if c['price_date'] else ''}): "
            f"${c['dollars']:.2f}."
        )
    else:
        text = f"A CPU run: $0 of GPU time; wall time {c['wall_seconds'] / 60:.1f} minutes on {c['device']}" + (
            f", costed at ${c['price_per_gpu_hour']:.2f}/h: ${c['dollars']:.2f}." if c["dollars"] else "."
        )
    blocks = [("h2", "Cost"), ("table", header, rows), ("p", text)]
    p = c.get("predicted") or {}
    if "train_seconds" in p:
        actual = c["stages_seconds"]
        blocks.append(
            (
                "p",
                f"Predicted before the run by mathtune estimate: training {p['train_seconds']:.0f} s "
                f"(actual {actual.get('train', 0):.0f} s), evaluation {p['eval_seconds']:.0f} s (actual "
                f"{actual.get('eval', 0):.0f} s), ${p['dollars']:.2f}. Basis: {p['basis']}.",
            )
        )
    return blocks


def _gb(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _reproducibility(a: dict) -> list[Block]:
    r = a.get("reproducibility")
    if not r:
        return []
    d = r["data"]
    packages = ", ".join(f"{k} {v}" for k, v in r["packages"].items() if v)
    return [
        ("h2", "Reproducibility"),
        (
            "table",
            ["", ""],
            [
                ["model", r["model"]],
                ["config hash", r["config_hash"]],
                ["git commit", r["git_commit"] or "unknown"],
                ["seeds", ", ".join(f"{k} {v}" for k, v in r["seeds"].items())],
                [
                    "data",
                    f"{d['source']} ({d['location']}): {d['rows_before_split']} rows before the split, {d['train']} "
                    f"train, {d['val']} validation; test {d['test_source']}, {d['test']} questions",
                ],
                ["machine", f"{r['gpu'] or r['cpu']} ({r['cores']} cores), python {r['python']}"],
                ["packages", packages],
                ["started / finished", f"{r['started']} / {r['finished']}"],
            ],
        ),
    ]


def _runs(a: dict) -> list[Block]:
    r = a.get("runs")
    if not r:
        return []
    na, nb = r["names"]
    diffs = [[d["key"], d["a"], d["b"]] for d in r["config_differences"]] or [["(none)", "", ""]]
    out: list[Block] = [("h2", "The two runs"), ("h3", "Config differences"), ("table", ["key", na, nb], diffs)]
    ta, tb = r["training"]
    if ta and tb:
        dec = lambda x: "n/a" if x is None else f"{x:.1f}%"  # noqa: E731
        rows = [
            [
                "validation loss first / last",
                f"{num(ta['first_val_loss'])} / {num(ta['last_val_loss'])}",
                f"{num(tb['first_val_loss'])} / {num(tb['last_val_loss'])}",
            ],
            ["validation loss decrease", dec(ta["val_loss_decrease_pct"]), dec(tb["val_loss_decrease_pct"])],
            [
                "train loss first / last",
                f"{num(ta['first_train_loss'])} / {num(ta['last_train_loss'])}",
                f"{num(tb['first_train_loss'])} / {num(tb['last_train_loss'])}",
            ],
            [
                "mean token accuracy last (train batches)",
                pct(ta["last_mean_token_accuracy"]),
                pct(tb["last_mean_token_accuracy"]),
            ],
            ["steps (best)", f"{ta['steps']} ({ta['best_step']})", f"{tb['steps']} ({tb['best_step']})"],
            ["tokens/s", num(ta["tokens_per_s"], ".1f"), num(tb["tokens_per_s"], ".1f")],
            ["curve verdict", ta["curve_verdict"], tb["curve_verdict"]],
        ]
        out += [("h3", "Training"), ("table", ["", na, nb], rows)]
    return out


def document(a: dict, images: set[str]) -> list[Block]:
    out: list[Block] = [("h1", f"mathtune report: {a['title']}")]
    out += [("note", f"Warning: {w}") for w in a.get("warnings", [])]
    out += [("note", f"Warning: {w}") for w in a.get("reproducibility", {}).get("data", {}).get("warnings", [])]
    out += (
        _headline(a)
        + _calculator(a)
        + _runs(a)
        + _training(a.get("training"))
        + _behaviour(a)
        + _changes(a)
        + _categories(a)
        + _examples(a)
        + _cost(a)
        + _reproducibility(a)
    )
    return [b for b in out if b[0] != "img" or b[1] in images]


# Markdown -------------------------------------------------------------------------------------------------


def _md_cell(x) -> str:
    return str(x).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_text(s: str) -> str:
    """Data in running Markdown text: no raw HTML, no accidental emphasis or links. Code spans are left as they are:
    Markdown shows their content literally, so `<<EXPR=` escaped would read `&lt;&lt;EXPR=`."""
    parts = re.split(r"(`[^`]+`)", str(s))
    return "".join(
        p if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p, quote=False) for p in parts
    )


def _fence(text: str) -> str:
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return f"{ticks}text\n{text}\n{ticks}"


def _md_example(e: dict) -> list[str]:
    lines = [
        f"**{_md_text(e['id'])}**: {_md_text(e['question'])}",
        "",
        f"Reference: {_md_text(e['reference'].split('####')[-1].strip())}",
        "",
    ]
    for name, ans in e["answers"].items():
        mark = "right" if ans["correct"] else "wrong"
        lines += [
            f"{_md_text(name)} ({mark}, extracted {_md_text(ans['extracted'])}):",
            "",
            _fence(ans["completion"]),
            "",
        ]
        lines += [
            f"- false equation: `{_md_cell(q['equation'])}` ({_md_cell(_says(q))})" for q in ans["false_equations"]
        ]
        lines += [""] if ans["false_equations"] else []
    return lines


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + _md_text(b[1]), ""]
        elif kind == "p":
            lines += [_md_text(b[1]), ""]
        elif kind == "note":
            lines += ["> " + _md_text(b[1]), ""]
        elif kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            lines.append("")
        elif kind == "img":
            lines += [f"![{b[2]}](plots/{b[1]})", ""]
        elif kind == "example":
            lines += _md_example(b[1])
        elif kind == "changes":
            lines += _md_changes(b[1])
    return "\n".join(lines)


def _start(question: str, words: int = 14) -> str:
    parts = question.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _md_changes(c: dict) -> list[str]:
    rows = c["rows"]
    lines = [f"| id | question | reference | {_md_cell(c['a'])} | {_md_cell(c['b'])} |", "|---|---|---|---|---|"]
    lines += [
        f"| {_md_cell(r['id'])} | {_md_cell(_start(r['question']))} | {_md_cell(r['reference'])} | "
        f"{_md_cell(r['extracted_a'])} | {_md_cell(r['extracted_b'])} |"
        for r in rows[:MD_CHANGES]
    ]
    if len(rows) > MD_CHANGES:
        lines.append(f"\n{len(rows) - MD_CHANGES} more in analysis.json (`changes`) and in report.html.")
    return lines + [""]


# HTML -----------------------------------------------------------------------------------------------------

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;border-left:3px solid #ccc}
mark{background:#ffd1d1}.note{background:#fff8e1;padding:.4em .8em;border-left:3px solid #f0b400}
.example{border:1px solid #ddd;padding:.5em 1em;margin:1em 0}img{max-width:100%}code{background:#f3f3f3}
details{border-bottom:1px solid #eee;padding:.2em 0}summary{cursor:pointer}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1em}.pair pre{margin:0}"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans (written by the document, around escaped text) into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _highlight(completion: str, equations: list[dict]) -> str:
    """The completion, escaped, with each false equation marked where its numbers can be found in order."""
    spans = []
    for q in equations:
        numbers = re.findall(r"\d+(?:\.\d+)?", q["equation"])
        if not numbers:
            continue
        pattern = r"[^\d\n]{0,12}?".join(re.escape(n) for n in numbers)
        m = re.search(pattern, completion)
        if m:
            spans.append((m.start(), m.end()))
    out, pos = [], 0
    for start, end in sorted(spans):
        if start < pos:
            continue
        out += [html.escape(completion[pos:start]), "<mark>", html.escape(completion[start:end]), "</mark>"]
        pos = end
    return "".join(out + [html.escape(completion[pos:])])


def _html_example(e: dict) -> str:
    parts = [
        f"<div class='example'><p><b>{html.escape(e['id'])}</b>: {html.escape(e['question'])}</p>",
        f"<p>Reference: {html.escape(e['reference'].split('####')[-1].strip())}</p>",
    ]
    for name, ans in e["answers"].items():
        mark = "right" if ans["correct"] else "wrong"
        parts.append(f"<p>{html.escape(name)} ({mark}, extracted {html.escape(str(ans['extracted']))}):</p>")
        parts.append(f"<pre>{_highlight(ans['completion'], ans['false_equations'])}</pre>")
        parts += [
            f"<p>False equation: <code>{html.escape(q['equation'])}</code> ({html.escape(_says(q))})</p>"
            for q in ans["false_equations"]
        ]
    return "".join(parts) + "</div>"


def _html_changes(c: dict) -> str:
    """One row per question; each opens (<details>) onto both completions side by side."""
    a, b = html.escape(c["a"]), html.escape(c["b"])
    rows = []
    for r in c["rows"]:
        summary = (
            f"<b>{html.escape(r['id'])}</b>: {html.escape(_start(r['question']))} (reference "
            f"{html.escape(str(r['reference']))}; {a}: {html.escape(str(r['extracted_a']))}; "
            f"{b}: {html.escape(str(r['extracted_b']))})"
        )
        rows.append(
            f"<details><summary>{summary}</summary><p>{html.escape(r['question'])}</p><div class='pair'>"
            f"<div><p>{a}</p><pre>{html.escape(r['completion_a'])}</pre></div>"
            f"<div><p>{b}</p><pre>{html.escape(r['completion_b'])}</pre></div></div></details>"
        )
    return "<div class='changes'>" + "".join(rows) + "</div>"


def to_html(blocks: list[Block], images: dict[str, bytes]) -> str:
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "note":
            body.append(f"<p class='note'>{_inline(b[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            data = base64.b64encode(images[b[1]]).decode("ascii")
            body.append(f"<p><img src='data:image/png;base64,{data}' alt='{html.escape(b[2])}'></p>")
        elif kind == "example":
            body.append(_html_example(b[1]))
        elif kind == "changes":
            body.append(_html_changes(b[1]))
    title = html.escape(blocks[0][1]) if blocks else "mathtune report"
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
