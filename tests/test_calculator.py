"""The calculator in the decoding loop: true annotations pass through unchanged, forced results are right, other rows
are untouched, both decoders agree, the evaluator is safe, and the calculator arms resume."""

import builtins
import json
import re
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mathtune.analysis.equations import evaluate, normalise
from mathtune.evaluate.calculator import Calculator, calculate
from mathtune.evaluate.decoder import Decoding, decode
from mathtune.io import read_json, read_jsonl
from mathtune.models import SMOLLM2, TINY, ensure_local

from conftest import ROOT, mathtune_cli

ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_local(SMOLLM2))


@pytest.mark.parametrize(
    "expr, value",
    [
        ("48/2", "24"),
        ("1,200*3", "3600"),
        ("2 x 3", "6"),
        ("4 × 5", "20"),
        ("(3+4)*2", "14"),
        ("-5+2", "-3"),
        ("10/3", "3.33"),
        ("0.5*5", "2.5"),
        ("1/3000", "0.0003"),
        ("$12.50*2", "25"),
    ],
)
def test_calculate(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr", ["9**9**9", "2^999", "abc", "3+", "", "1/0", "(" * 40 + "1" + ")" * 40, "x" * 500])
def test_not_arithmetic_is_left_to_the_model(expr):
    assert calculate(expr) is None


@settings(max_examples=300, deadline=1000)
@given(st.text(alphabet="0123456789.,+-*/x×()^ $", max_size=80))
def test_fuzz_never_crashes_or_hangs(expr):
    value = calculate(expr)
    assert value is None or re.fullmatch(r"-?\d+(\.\d+)?", value)


def test_never_calls_eval(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("eval called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert calculate("(2+3)*4") == "20"


def _teacher_force(tok, text: str) -> tuple[str, list]:
    """Feed `text` through the calculator as if a model wrote it: at each step the model's choice is the next token
    of what is left of the text; the calculator may replace it. Returns the text written and the calls."""
    calc = Calculator(tok)
    written, ids = "", []
    for _ in range(2000):
        rest = text[len(written) :] if text.startswith(written) else None
        if not rest:
            break
        want = tok.encode(rest, add_special_tokens=False)[0]
        ids.append(calc.choose(0, want))
        written = tok.decode(ids)
        if not text.startswith(written):  # the calculator wrote something else: follow the text after its ">>"
            m = re.match(r"(?s)(.*<<[^<>=]*=)([^<>]*)>>$", written)
            assert m, written[-80:]
            true_end = text.index(">>", len(m.group(1))) + 2
            assert Fraction(evaluate(normalise(m.group(2)))) == Fraction(
                evaluate(normalise(text[len(m.group(1)) : true_end - 2]))
            ), (m.group(2), text[len(m.group(1)) : true_end])
            text = written + text[true_end:]
    return written, calc.calls.get(0, [])


def test_true_annotations_pass_through(tok, gsm8k):
    """Real GSM8K reference solutions, teacher-forced through the calculator: every forced result equals the
    reference's own (GSM8K's annotations are true), so the text is the reference's, up to how a number is written
    ("144.00" is written "144")."""
    rows = [json.loads(line) for line in (gsm8k / "test.jsonl").open()][:60]
    calls = 0
    for r in rows:
        written, made = _teacher_force(tok, r["answer"])
        calls += len(made)
        strip = lambda s: ANNOTATION.sub(lambda m: f"<<{m.group(1)}={Fraction(evaluate(normalise(m.group(2))))}>>", s)  # noqa: E731
        assert strip(written) == strip(r["answer"]), r["id"]
        assert [c["value"] for c in made] == [
            calculate(e) for e, _ in ANNOTATION.findall(r["answer"]) if calculate(e) is not None
        ][: len(made)]
    assert calls > 100


def _scripted(model, tok, scripts: dict[str, str]):
    """The tiny model, made to write a text: the next token is a function of the current one (a chain per script),
    so a forced result sends the row on with what follows it. The real forward still runs (and fills the cache)."""
    table = {}
    for text in scripts.values():
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        for a, b in zip(ids, ids[1:]):
            assert table.get(a, b) == b, "scripts must not share a token with two successors"
            table[a] = b
    starts = {
        tok.encode(k, add_special_tokens=False)[-1]: tok.encode(v, add_special_tokens=False)[0]
        for k, v in scripts.items()
    }
    real = model.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        ids = kwargs["input_ids"]
        logits = torch.full_like(out.logits, -1e9)
        for b, last in enumerate(ids[:, -1].tolist()):
            logits[b, -1, starts.get(last, table.get(last, tok.eos_token_id))] = 0.0
        out.logits = logits
        return out

    model.forward = forward
    return model


def _both_decoders(tok, scripts: dict[str, str], calculator=True):
    from transformers import AutoModelForCausalLM

    model = _scripted(AutoModelForCausalLM.from_pretrained(ensure_local(TINY)).eval(), tok, scripts)
    prompts = [tok.encode(k, add_special_tokens=False) for k in scripts]
    ids = [f"q{i}" for i in range(len(prompts))]
    got = {}
    for engine in ("compact", "static"):
        out = dict(decode(engine, model, tok, prompts, ids, Decoding(24, calculator=calculator), 3, engine))
        got[engine] = [out[i][0] for i in range(len(prompts))]
    assert [c.text for c in got["compact"]] == [c.text for c in got["static"]]
    return got["compact"]


def test_forced_results_and_other_rows(tok):
    """A wrong result the model writes (97 for 12*3) is replaced by the calculator's; the row beside it is untouched."""
    scripts = {" Alpha": " So<<12*3=97>> then done", " Beta": " Hello world again"}
    alpha, beta = _both_decoders(tok, scripts)
    assert alpha.text.startswith(" So<<12*3=36>>"), alpha.text  # 97 was the model's: 36 is forced
    assert alpha.calculator_calls == ({"expr": "12*3", "value": "36"},)
    assert beta.text == " Hello world again" and beta.calculator_calls == ()
    alpha, _ = _both_decoders(tok, scripts, calculator=False)
    assert alpha.text.startswith(" So<<12*3=97>>") and alpha.calculator_calls == ()


def test_a_true_annotation_is_written_as_it_was(tok):
    [gamma] = _both_decoders(tok, {" Gamma": " Yes<<7+8=15>> ok"})
    assert gamma.text == " Yes<<7+8=15>> ok" and gamma.calculator_calls == ({"expr": "7+8", "value": "15"},)


@pytest.mark.slow
def test_calculator_arms_run_and_resume(tmp_path, gsm8k):
    run = tmp_path / "run"
    res = mathtune_cli(
        "run",
        "--config",
        ROOT / "configs" / "tiny.yaml",
        "--out",
        run,
        f"data.path={gsm8k}",
        "eval.limit=4",
        "eval.calculator=true",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    names = sorted(p.name for p in (run / "predictions").glob("*.jsonl"))
    assert names == ["base-calculator.jsonl", "base.jsonl", "finetuned-calculator.jsonl", "finetuned.jsonl"]
    arm = run / "predictions" / "finetuned-calculator.jsonl"
    rows = read_jsonl(arm)
    assert all("calculator_calls" in r for r in rows)
    analysis = read_json(run / "analysis.json")
    assert [m["name"] for m in analysis["models"]] == ["base", "base-calculator", "finetuned-calculator", "finetuned"]
    assert [(c["a"], c["b"]) for c in analysis["calculator"]] == [
        ("base", "base-calculator"),
        ("finetuned", "finetuned-calculator"),
    ]
    assert analysis["comparison"]["a"] == "base" and analysis["comparison"]["b"] == "finetuned"
    # Cut the arm back to two answered questions, as a crash would leave it, and resume.
    arm.unlink()
    (run / "predictions" / "finetuned-calculator.partial.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:2])
    )
    info = read_json(run / "eval.json")
    info.pop("finetuned-calculator")
    (run / "eval.json").write_text(json.dumps(info))
    res = mathtune_cli("run", "--resume", "--out", run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["id"] for r in read_jsonl(arm)] == [r["id"] for r in rows]
    assert "mathtune: train: already done, skipped" in res.stdout
