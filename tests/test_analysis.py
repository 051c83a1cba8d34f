"""`mathtune analyze` and `mathtune compare` on predictions files written by hand and on run directories."""

import json
import time

import pytest
from scipy.stats import binomtest

from mathtune.analysis.inputs import load_predictions
from mathtune.analysis.summary import analyze
from mathtune.errors import MathtuneError
from mathtune.io import read_jsonl

from conftest import mathtune_cli


def mathtune(*args, cwd=None):
    return mathtune_cli(*args, cwd=cwd, timeout=300)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def gsm_rows(gsm8k):
    return [json.loads(line) for line in (gsm8k / "test.jsonl").open()][:40]


def predictions(rows, right: set[int], slip: set[int] = frozenset()):
    """Rows of the documented shape: id, question, reference, completion (no verdicts: analyze grades them)."""
    out = []
    for i, r in enumerate(rows):
        answer = r["answer"].split("####")[-1].strip()
        if i in right:
            completion = f"Working it out.\n#### {answer}"
        elif i in slip:
            completion = "First 12 * 4 = 46, so the answer is 46.\n#### 46"
        else:
            completion = "I think the answer is 123456789."
        out.append({"id": f"test-{i}", "question": r["question"], "reference": r["answer"], "completion": completion})
    return out


def test_analyze_handwritten_files(tmp_path, gsm_rows):
    base = write_jsonl(tmp_path / "base.jsonl", predictions(gsm_rows, right=set(range(0, 10)), slip={20, 21}))
    tuned = write_jsonl(tmp_path / "tuned.jsonl", predictions(gsm_rows, right=set(range(5, 25)), slip={30, 31, 32}))
    res = mathtune("analyze", base, tuned, "--names", "base,finetuned", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    a = json.loads((tmp_path / "out" / "analysis.json").read_text())
    [mb, mf] = a["models"]
    assert (mb["correct"], mf["correct"], mb["n"]) == (10, 20, 40)
    c = a["comparison"]
    assert (c["both_correct"], c["only_a"], c["only_b"], c["neither"]) == (5, 5, 15, 15)
    assert c["mcnemar_p"] == pytest.approx(binomtest(5, 20, 0.5).pvalue)
    assert c["diff"] == pytest.approx(10 / 40)
    f = a["failures"]
    assert f["arithmetic_slip"]["count"] == 3 and f["arithmetic_slip"]["examples"] == ["test-30", "test-31", "test-32"]
    assert f["reasoning_error"]["count"] == 20 - 3
    assert f["arithmetic_slip"]["share_of_wrong"] == pytest.approx(3 / 20)
    assert a["examples"]["test-30"]["answers"]["finetuned"]["false_equations"] == [
        {"equation": "12 * 4 = 46", "left": "48", "right": "46", "computed": "left", "says": "left side is 48"}
    ]
    assert sum(r["n"] for r in a["by_steps"]) == 40
    assert sum(r["correct_finetuned"] for r in a["by_steps"]) == 20
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<mark>12 * 4 = 46</mark>" in html
    assert "finetuned: 20/40 = 50.0%" in res.stdout


def test_questions_only_in_one_file_are_left_out_of_the_pairing(tmp_path, gsm_rows):
    a = predictions(gsm_rows[:30], right=set(range(10)))
    b = predictions(gsm_rows, right=set(range(20)))[10:]
    result = analyze({"a": a, "b": b})
    assert result["comparison"]["n"] == 20


def test_html_escapes_everything_from_data(tmp_path, gsm_rows):
    rows = predictions(gsm_rows[:4], right=set())
    rows[0]["question"] = "<script>alert(1)</script> How many?"
    rows[0]["completion"] = '"><img src=x onerror=alert(1)> 2 + 2 = 5 <script>alert(2)</script>'
    rows[1]["id"] = "<b>id</b>"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert mathtune("analyze", path, path, "--names", "x,<i>y</i>", "--out", tmp_path / "out").returncode == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b>id" not in html and "<i>y" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script>" not in md.split("```")[0]  # outside code fences, data is escaped in Markdown too


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "1", "question": "q", "reference": "#### 1"}], "completion"),
        ([{"question": "q", "reference": "#### 1", "completion": "1"}], "'id'"),
        ([], "no predictions"),
    ],
)
def test_wrong_fields_are_a_one_line_error(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    res = mathtune("analyze", path, "--out", out)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr and str(path) in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_no_common_ids_is_refused(tmp_path, gsm_rows):
    a = write_jsonl(tmp_path / "a.jsonl", predictions(gsm_rows[:5], right=set()))
    b_rows = predictions(gsm_rows[:5], right=set())
    for r in b_rows:
        r["id"] = "other-" + r["id"]
    b = write_jsonl(tmp_path / "b.jsonl", b_rows)
    res = mathtune("analyze", a, b, "--out", tmp_path / "out")
    assert res.returncode == 2 and "no question ids in common" in res.stderr


def test_duplicate_ids_are_refused(tmp_path, gsm_rows):
    rows = predictions(gsm_rows[:3], right=set())
    path = write_jsonl(tmp_path / "dup.jsonl", rows + rows[:1])
    with pytest.raises(MathtuneError, match="not unique"):
        load_predictions(path)


def test_analyze_2x1319_rows_takes_seconds(tmp_path, gsm8k):
    rows = [json.loads(line) for line in (gsm8k / "test.jsonl").open()]
    assert len(rows) == 1319
    base = write_jsonl(tmp_path / "base.jsonl", predictions(rows, right=set(range(0, 1319, 3)), slip={1, 4, 7}))
    tuned = write_jsonl(tmp_path / "tuned.jsonl", predictions(rows, right=set(range(0, 1319, 2))))
    start = time.perf_counter()
    res = mathtune("analyze", base, tuned, "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert time.perf_counter() - start < 120  # a hang check; the figure itself is in the note/README
    a = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert a["models"][1]["n"] == 1319 and a["comparison"]["n"] == 1319


def fake_run(path, rows, right, r_value):
    """A finished run directory with the files `compare` reads."""
    (path / "predictions").mkdir(parents=True)
    write_jsonl(path / "predictions" / "finetuned.jsonl", predictions(rows, right=right))
    (path / "config.yaml").write_text(f"model:\n  name: m\nlora:\n  r: {r_value}\ntrain:\n  epochs: 1\n")
    metrics = [{"step": s, "epoch": s / 40, "val_loss": 1.0 - 0.01 * s} for s in range(0, 41, 8)]
    metrics += [
        {"step": s, "epoch": s / 40, "train_loss": 1.1 - 0.01 * s, "mean_token_accuracy": 0.6 + s / 400}
        for s in range(5, 41, 5)
    ]
    write_jsonl(path / "metrics.jsonl", sorted(metrics, key=lambda m: m["step"]))
    return path


def test_compare_two_runs(tmp_path, gsm_rows):
    a = fake_run(tmp_path / "r8", gsm_rows, set(range(10)), 8)
    b = fake_run(tmp_path / "r16", gsm_rows, set(range(5, 20)), 16)
    res = mathtune("compare", a, b, "--out", tmp_path / "cmp")
    assert res.returncode == 0, res.stderr
    an = json.loads((tmp_path / "cmp" / "analysis.json").read_text())
    assert [m["name"] for m in an["models"]] == ["r8", "r16"]
    assert (an["comparison"]["only_a"], an["comparison"]["only_b"]) == (5, 10)
    assert an["runs"]["config_differences"] == [{"key": "lora.r", "a": 8, "b": 16}]
    assert an["runs"]["training"][0]["curve_verdict"] == "still_improving"
    assert "| lora.r | 8 | 16 |" in (tmp_path / "cmp" / "report.md").read_text()


def test_compare_needs_finished_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    res = mathtune("compare", tmp_path / "empty", tmp_path / "empty", "--out", tmp_path / "cmp")
    assert res.returncode == 2 and "finetuned.jsonl" in res.stderr and res.stderr.count("\n") == 1


def test_out_that_is_a_file_is_refused(tmp_path, gsm_rows):
    path = write_jsonl(tmp_path / "p.jsonl", predictions(gsm_rows[:3], right=set()))
    res = mathtune("analyze", path, "--out", path)
    assert res.returncode == 2 and "not a directory" in res.stderr
    assert read_jsonl(path)[0]["id"] == "test-0"  # untouched


def test_markdown_escapes_text_but_not_code_spans():
    from mathtune.report.render import _md_text

    assert _md_text("after `<<EXPR=` comes <b>x</b>") == "after `<<EXPR=` comes &lt;b&gt;x&lt;/b&gt;"
    assert _md_text("a lone ` and <i>") == "a lone ` and &lt;i&gt;"
