"""What fine-tuning changed, question by question: fixed and broken answers, behaviour, repetition loops, power, the
paired question set, and lm-eval's sample logs as input."""

import json
import random

import pytest
from scipy.stats import binomtest

from mathtune.analysis.behaviour import behaviour, ends_with_final_answer, repetition_loop
from mathtune.analysis.inputs import load_predictions
from mathtune.analysis.summary import analyze, pick_examples
from mathtune.evaluate.stats import mcnemar_detectable, mcnemar_n_needed
from mathtune.report.render import MD_CHANGES, document, to_html, to_markdown

from conftest import ROOT, bench_script, mathtune_cli

LABELLED = [json.loads(line) for line in (ROOT / "tests" / "data" / "graded_completions.jsonl").open()]
DEMO = {
    r["source"].split("demo (")[1].replace("), GSM8K ", ":"): r["completion"]
    for r in LABELLED
    if "demo (" in r["source"]
}


def row(i, correct, completion="#### 1", **kw):
    return {
        "id": f"test-{i}",
        "question": f"Question {i}: how many apples are there in all of the baskets?",
        "reference": "#### 1",
        "completion": completion,
        "extracted": "1" if correct else "2",
        "correct": correct,
        "strict_correct": correct,
        **kw,
    }


@pytest.mark.parametrize(
    "key",
    [
        "finetuned:test-12",
        "finetuned:test-17",
        "finetuned:test-19",
        "finetuned:test-9",
        "base:test-13",
        "base:test-28",
        "base:test-24",
    ],
)
def test_real_loops_are_loops(key):
    assert repetition_loop(DEMO[key]), DEMO[key][-200:]


@pytest.mark.parametrize(
    "key", ["base:test-9", "base:test-1", "base:test-14", "finetuned:test-0", "finetuned:test-3", "finetuned:test-21"]
)
def test_real_verbose_answers_are_not_loops(key):
    """SmolLM2's base answers restate phrases ("the total earnings for the first 40 hours of work") but do not loop."""
    assert not repetition_loop(DEMO[key]), DEMO[key][-200:]


def test_loop_rule_edges():
    assert repetition_loop("Start. " + "$2000/hour * 45 hours = " * 3 + "$2")  # numbers grow inside the loop
    assert not repetition_loop("#### 5\n#### 5\n#### 5")  # too short to be a runaway
    assert not repetition_loop("She has 3 + 4 = 7 apples.\n#### 7")
    assert ends_with_final_answer("so 7 in all\n#### 7\n") and not ends_with_final_answer("#### 7 apples")


def test_behaviour_shares():
    rows = [
        row(1, True, "a\n#### 1", generated_tokens=10),
        row(2, False, "x " * 5, generated_tokens=30, truncated=True, extracted=None),
        row(3, False, "So " + "12 * 3 = 36. " * 10, generated_tokens=50, truncated=True),
    ]
    b = behaviour(rows)
    assert b["mean_generated_tokens"] == 30 and b["format_compliance"] == pytest.approx(1 / 3)
    assert b["truncated"] == pytest.approx(2 / 3) and b["repetition_loop"] == pytest.approx(1 / 3)
    assert b["no_number"] == pytest.approx(1 / 3)


def _pair():
    rng = random.Random(0)
    base = [row(i, rng.random() < 0.3) for i in range(60)]
    ft = [row(i, rng.random() < 0.4) for i in range(60)]
    return base, ft


def test_changes_are_the_discordant_pairs():
    base, ft = _pair()
    a = analyze({"base": base, "finetuned": ft})
    c, ch = a["comparison"], a["changes"]
    assert len(ch["fixed"]) == c["only_b"] and len(ch["broken"]) == c["only_a"]
    fixed = {r["id"] for r in ch["fixed"]}
    assert fixed == {b["id"] for b, f in zip(base, ft) if not b["correct"] and f["correct"]}
    assert all(r["reference"] == "1" and r["extracted_b"] == "1" for r in ch["fixed"])


def test_report_shows_changed_questions():
    base = [row(i, i % 2 == 0) for i in range(50)]
    ft = [row(i, i % 2 == 1) for i in range(50)]  # 25 fixed, 25 broken
    a = analyze({"base": base, "finetuned": ft})
    md = to_markdown(document(a, set()))
    assert "## Which questions changed" in md and "### Fixed (25)" in md
    assert md.count("| test-") == 2 * MD_CHANGES and "5 more in analysis.json" in md
    html = to_html(document(a, set()), {})
    assert html.count("<details>") == 50  # all of them, each opening onto both completions
    assert "## How the answers look" in md and "ends with a `#### N` line" in md


def test_distinct_examples_per_category():
    assert pick_examples(["a", "b", "c", "d"], {"a", "b"}) == ["c", "d"]
    assert pick_examples(["a", "b"], {"a", "b"}) == ["a", "b"]  # nothing new: the category still shows its own
    assert pick_examples(["a", "b", "c", "d", "e"], set()) == ["a", "b", "c"]


def test_power_against_a_simulation():
    """Connor's formula against the exact McNemar test itself: at the detectable difference for n = 300 and 20%
    discordant pairs, simulated paired outcomes reach p < 0.05 about 80% of the time."""
    n, psi = 300, 0.2
    d = mcnemar_detectable(n, psi)
    assert mcnemar_n_needed(d, psi) == pytest.approx(n, rel=1e-6)
    rng = random.Random(1)
    p_b, p_a = (psi + d) / 2, (psi - d) / 2
    hits = 0
    trials = 1500
    for _ in range(trials):
        only_b = only_a = 0
        for _ in range(n):
            u = rng.random()
            only_b += u < p_b
            only_a += p_b <= u < p_b + p_a
        hits += binomtest(only_a, only_a + only_b, 0.5).pvalue < 0.05 if only_a + only_b else 0
    assert 0.72 < hits / trials < 0.86  # the exact test is a little conservative
    assert mcnemar_detectable(4 * n, psi) == pytest.approx(d / 2, rel=0.05)  # a quarter of the width... half
    assert mcnemar_n_needed(0.0, psi) is None and mcnemar_detectable(100, 0.0) is None


def test_power_sentence_in_the_report():
    base, ft = _pair()
    a = analyze({"base": base, "finetuned": ft})
    p = a["comparison"]["power"]
    assert p["full_split_n"] == 1319 and p["detectable_diff"] > p["full_split_detectable_diff"] > 0
    md = to_markdown(document(a, set()))
    assert "with 60 questions this comparison could detect changes of +-" in md
    assert "all 1,319 GSM8K test questions would detect +-" in md


def test_power_sentence_when_no_difference_could_reach_the_power():
    """The demo's case: 100 questions, 2 + 4 discordant. Even 6 points (every discordant question one way) is below
    80% power at n = 100, which is not the same as no discordant question at all."""
    base = [row(i, i < 2) for i in range(100)]
    ft = [row(i, 2 <= i < 6) for i in range(100)]
    c = analyze({"base": base, "finetuned": ft})["comparison"]
    assert (c["only_a"], c["only_b"]) == (2, 4) and c["power"]["detectable_diff"] is None
    md = to_markdown(document(analyze({"base": base, "finetuned": ft}), set()))
    assert "with 100 questions this comparison cannot detect any change: not even +-6.0 points" in md
    assert "no question was answered right by one model only" not in md
    same = analyze({"base": base, "finetuned": base})
    assert "no question was answered right by one model only" in to_markdown(document(same, set()))


# issue 16: the paired question set -----------------------------------------------------------------------------


def test_files_of_different_length_are_paired():
    """gemma3 answered 50 questions, demo 100 (the 50 and 50 more): every model figure is on the 50 both answered;
    demo's own 100 are in the *_all fields only."""
    demo = [row(i, i < 4) for i in range(100)]  # 4/100 right; on the first 50: 4/50
    gemma = [row(i, i in (0, 10)) for i in range(50)]
    a = analyze({"demo": demo, "gemma3": gemma})
    m = {x["name"]: x for x in a["models"]}
    c = a["comparison"]
    assert m["demo"]["n"] == m["gemma3"]["n"] == c["n"] == 50
    assert m["demo"]["correct"] == sum(r["correct"] for r in demo[:50]) == 4
    assert m["gemma3"]["correct"] == 2
    assert c["diff"] == pytest.approx((m["gemma3"]["correct"] - m["demo"]["correct"]) / 50)  # recomputable
    assert (m["demo"]["n_all"], m["demo"]["correct_all"]) == (100, 4) and "n_all" not in m["gemma3"]
    md = to_markdown(document(a, set()))
    assert "demo also answered 50 questions that gemma3 did not: 4/100 = 4.0%" in md
    assert "gemma3: 4.0% (95% CI" in md and "against demo: 8.0%" in md


def test_disjoint_extra_ids_on_both_sides():
    a_rows = [row(i, i % 3 == 0) for i in range(0, 40)]
    b_rows = [row(i, i % 2 == 0) for i in range(20, 70)]
    a = analyze({"a": a_rows, "b": b_rows})
    common = set(range(20, 40))
    m = {x["name"]: x for x in a["models"]}
    assert m["a"]["n"] == m["b"]["n"] == a["comparison"]["n"] == 20
    assert m["a"]["correct"] == sum(i % 3 == 0 for i in common) and m["b"]["correct"] == sum(i % 2 == 0 for i in common)
    assert (m["a"]["n_all"], m["b"]["n_all"]) == (40, 50)
    assert sum(r["n"] for r in a["by_steps"]) == 20


def test_three_arms_share_one_question_set():
    arms = {
        "base": [row(i, i < 5) for i in range(30)],
        "base-calculator": [row(i, i < 6) for i in range(25)],
        "finetuned": [row(i, i < 9) for i in range(28)],
    }
    a = analyze(arms)
    assert all(m["n"] == 25 for m in a["models"]) and a["comparison"]["n"] == 25
    assert a["comparison"]["a"] == "base" and a["comparison"]["b"] == "finetuned"


def test_different_protocols_name_each_one():
    a = analyze(
        {
            "a": [row(i, True, protocol="chat") for i in range(5)],
            "b": [row(i, True, protocol="plain") for i in range(5)],
        }
    )
    md = to_markdown(document(a, set()))
    assert "different protocols" in md and "protocols `chat` (a), `plain` (b)" in md


# lm-eval --log_samples as input ---------------------------------------------------------------------------------


def _lm_eval_sample(doc_id, question, answer, response, filt):
    return {
        "doc_id": doc_id,
        "doc": {"question": question, "answer": answer},
        "target": answer,
        "arguments": [[f"Question: {question}\nAnswer:", {"until": ["Question:"]}]],
        "resps": [[response]],
        "filtered_resps": [response],
        "filter": filt,
        "metrics": ["exact_match"],
        "exact_match": 0.0,
        "doc_hash": "d",
        "prompt_hash": f"p{doc_id}",
        "target_hash": "t",
    }


def test_lm_eval_log_samples_are_read(tmp_path, gsm8k):
    test = [json.loads(line) for line in (gsm8k / "test.jsonl").open()][:3]
    path = tmp_path / "samples_gsm8k_2026-11-26.jsonl"
    lines = []
    for filt in ("strict-match", "flexible-extract"):  # lm-eval writes one row per filter
        for i, r in enumerate(test):
            final = r["answer"].split("####")[-1].strip()
            lines.append(
                _lm_eval_sample(
                    i,
                    r["question"],
                    r["answer"],
                    f"So it is {final}.\n#### {final}" if i != 1 else "I do not know.",
                    filt,
                )
            )
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = load_predictions(path)
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2"]  # GSM8K test ids: they pair with mathtune's
    a = analyze({"lm-eval": rows})
    assert a["models"][0]["correct"] == 2 and a["models"][0]["n"] == 3


@pytest.mark.slow
def test_a_real_lm_eval_run_goes_through_the_paired_report(tmp_path, gsm8k):
    """lm-evaluation-harness itself (`lm_eval --model hf`, bench/eval_vs_lm_eval.py's local gsm8k task) on the tiny
    model, then its --log_samples file against mathtune's own answers: `mathtune analyze` pairs them by question."""

    out = tmp_path / "vs.json"
    res = bench_script(
        "eval_vs_lm_eval.py",
        "--model",
        "tiny-random-llama",
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--lm-eval-batch",
        "3",
        "--mathtune-batch",
        "3",
        "--gsm8k",
        str(gsm8k),
        "--keep",
        str(tmp_path / "work"),
        "--out",
        str(out),
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["n"] == 3 and r["ratio"] > 0 and 0 <= r["graded_the_same_strict"] <= 3
    assert r["ratio"] == pytest.approx(r["lm_eval"]["wall_seconds"] / r["mathtune"]["wall_seconds"], rel=0.02)
    assert r["mathtune_accuracy"]["n"] == 3 and len(r["lm_eval_strict_match"]["ci95"]) == 2
    [samples] = list((tmp_path / "work" / "lm_eval").rglob("samples_gsm8k_local_*.jsonl"))
    res = mathtune_cli(
        "analyze",
        str(samples),
        str(tmp_path / "work" / "mathtune.jsonl"),
        "--names",
        "lm-eval,mathtune",
        "--out",
        str(tmp_path / "report"),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    analysis = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert analysis["comparison"]["n"] == 3 and [m["name"] for m in analysis["models"]] == ["lm-eval", "mathtune"]
