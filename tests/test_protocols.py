import json

import pytest

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.errors import MathtuneError
from mathtune.evaluate.protocols import COT_EXEMPLARS, PROTOCOLS, encode_prompt, get_protocol, pick_shots, render_plain
from mathtune.io import read_jsonl

from conftest import ROOT, mathtune_cli

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def test_few_shot_is_lm_eval_gsm8k(gsm8k):
    p = PROTOCOLS["few-shot"]
    train = from_jsonl(gsm8k, "train")
    shots = pick_shots(p, train)
    assert len(shots) == 5 and shots == pick_shots(p, train)  # fixed, seeded
    assert all((i, q, a) in {(r["id"], r["question"], r["answer"]) for r in train} for i, q, a in shots)
    text = render_plain(p, Q, shots, "unused {question}")
    blocks = text.split("\n\n")
    assert len(blocks) == 6
    assert blocks[0] == f"Question: {shots[0][1]}\nAnswer: {shots[0][2]}"
    assert blocks[-1] == f"Question: {Q}\nAnswer:"
    assert {"Question:", "</s>", "<|im_end|>"} <= set(p.stop)


def test_few_shot_cot_is_lm_eval_gsm8k_cot():
    p = PROTOCOLS["few-shot-cot"]
    shots = pick_shots(p, None)
    assert [(q, t) for _, q, t in shots] == COT_EXEMPLARS and len(shots) == 8
    assert [i for i, _, _ in shots] == [f"cot-{n}" for n in range(1, 9)]
    text = render_plain(p, Q, shots, "unused {question}")
    assert text.startswith("Q: There are 15 trees in the grove.")
    assert text.endswith(f"\n\nQ: {Q}\nA:")
    assert all(t.rstrip(".").split("The answer is ")[-1].isdigit() for _, _, t in shots)


def test_plain_is_the_training_template():
    cfg = load_config(None)
    assert render_plain(PROTOCOLS["plain"], Q, [], cfg.model.plain_template) == f"Question: {Q}\nAnswer:"


def test_chat_needs_a_chat_template():
    class NoTemplate:
        chat_template = None

    with pytest.raises(MathtuneError, match="no chat template"):
        encode_prompt(NoTemplate(), PROTOCOLS["chat"], Q, [], load_config(None).model)


def test_unknown_protocol():
    with pytest.raises(MathtuneError, match="unknown protocol"):
        get_protocol("zero-shot-magic")


def run_eval(*args):
    return mathtune_cli("eval", *args, cwd=ROOT)


@pytest.mark.parametrize("protocol, extra", [("few-shot", []), ("few-shot-cot", []), ("chat", ["eval.dtype=bfloat16"])])
def test_standalone_eval(tmp_path, gsm8k, protocol, extra):
    out = tmp_path / "preds.jsonl"
    res = run_eval(
        "--model",
        "tiny-random-llama",
        "--protocol",
        protocol,
        "--limit",
        3,
        "--data",
        gsm8k,
        "--out",
        out,
        "eval.max_new_tokens=4",
        "model.dtype=float32",
        *extra,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2"]
    assert all(r["protocol"] == protocol and "strict_correct" in r for r in rows)
    assert all(r["generated_tokens"] <= 4 for r in rows)  # the key=value override reached the config
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n"] == 3 and summary["protocol"] == protocol and summary["split"] == "test"
    assert f"protocol {protocol}" in res.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["--limit", "-1"], ["eval.limit"]),
        (["--protocol", "magic"], ["eval.protocol"]),
        (["--adapter", "/nonexistent-adapter"], ["nonexistent-adapter"]),
    ],
)
def test_standalone_eval_bad_input(tmp_path, gsm8k, args, words):
    res = run_eval("--model", "tiny-random-llama", "--data", gsm8k, "--out", tmp_path / "p.jsonl", "--limit", 2, *args)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert all(w in res.stderr for w in words)


def test_maj_at_k_and_pass_at_k(tmp_path, gsm8k):
    from mathtune.evaluate.extract import extract_answer, is_correct
    from mathtune.evaluate.stats import majority

    def run(out):
        res = run_eval(
            "--model",
            "tiny-random-llama",
            "--protocol",
            "chat",
            "--limit",
            3,
            "--data",
            gsm8k,
            "--out",
            out,
            "eval.max_new_tokens=6",
            "eval.samples=3",
            "eval.temperature=1.0",
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return read_jsonl(out.with_name("p.samples.jsonl")), json.loads(out.with_suffix(".summary.json").read_text())

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows, summary = run(tmp_path / "a" / "p.jsonl")
    assert len(rows) == 3 and all(len(r["completions"]) == 3 for r in rows)
    for r in rows:
        assert r["answers"] == [extract_answer(c) for c in r["completions"]]
        assert r["maj_answer"] == majority(r["answers"])
        assert r["pass_at_k"] == any(is_correct(a, r["reference"]) for a in r["answers"])
    assert summary["k"] == 3 and summary["pass_at_k"] >= summary["maj_at_k"]
    assert len({c for r in rows for c in r["completions"]}) > 3  # sampled, not greedy copies
    again, _ = run(tmp_path / "b" / "p.jsonl")
    assert [r["completions"] for r in again] == [r["completions"] for r in rows]  # seeded
