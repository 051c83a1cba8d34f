import json

import pytest

from mathtune.config import load_config
from mathtune.data import sources
from mathtune.data.rows import reference_answer, strip_calculator
from mathtune.data.stage import SYMBOLIC_LEAK, run_data, split_rows
from mathtune.errors import MathtuneError
from mathtune.io import read_jsonl


def test_jsonl_reads_the_original_files(gsm8k):
    train = sources.from_jsonl(gsm8k, "train")
    test = sources.from_jsonl(gsm8k / "test.jsonl", "test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0]["id"] == "train-0" and test[-1]["id"] == "test-1318"
    assert all(reference_answer(r["answer"]) is not None for r in train + test)
    assert test[0]["question"].startswith("Janet")
    assert reference_answer(test[0]["answer"]) == "18"


def test_hub_path_on_local_files(gsm8k):
    # The same datasets.load_dataset call as for openai/gsm8k, pointed at a local folder of the same files.
    rows = sources.from_hub(str(gsm8k), None, "test")
    assert len(rows) == 1319
    assert rows == sources.from_jsonl(gsm8k, "test")  # same ids, questions and answers from either source


def test_hub_unreachable_is_a_clear_error(tmp_path):
    with pytest.raises(MathtuneError, match="data.hub_id"):
        sources.from_hub(str(tmp_path / "missing"), None, "test")


def test_gsm_symbolic_rows_have_final_answers():
    rows = sources.from_gsm_symbolic(size=12, seed=3)
    assert len(rows) == 12
    assert all(reference_answer(r["answer"]) is not None for r in rows)
    assert rows == sources.from_gsm_symbolic(size=12, seed=3)  # deterministic


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "Q?"}', "missing or empty 'answer'"),
        ('{"question": "", "answer": "#### 3"}', "missing or empty 'question'"),
        ('{"question": "Q?", "answer": "no final number"}', "#### <number>"),
        ('{"question": "Q?", "answer": "#### 3"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    p = tmp_path / "train.jsonl"
    p.write_text('{"question": "Q?", "answer": "2+2=4\\n#### 4"}\n' + line + "\n")
    with pytest.raises(MathtuneError) as e:
        sources.from_jsonl(p, "train")
    assert f"{p}:2" in str(e.value) and message in str(e.value)


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(MathtuneError, match="no rows"):
        sources.from_jsonl(empty, "train")
    binary = tmp_path / "test.jsonl"
    binary.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(MathtuneError, match="not UTF-8"):
        sources.from_jsonl(binary, "test")


def test_split_is_deterministic_and_disjoint(gsm8k):
    rows = sources.from_jsonl(gsm8k, "train")
    train, val = split_rows(rows, 0.1, 42)
    again, _ = split_rows(rows, 0.1, 42)
    other, _ = split_rows(rows, 0.1, 7)
    assert len(val) == 748 and len(train) == 7473 - 748
    assert [r["id"] for r in train] == [r["id"] for r in again]
    assert [r["id"] for r in train] != [r["id"] for r in other]
    assert not {r["id"] for r in train} & {r["id"] for r in val}


def test_strip_calculator():
    answer = "She has 3*4=<<3*4=12>>12 eggs.\n#### 12"
    assert strip_calculator(answer) == "She has 3*4=12 eggs.\n#### 12"


def test_data_stage_writes_the_splits(tmp_path, gsm8k):
    cfg = load_config(
        None,
        [
            "data.source=jsonl",
            f"data.path={gsm8k}",
            "data.max_train_rows=20",
            "data.max_val_rows=5",
            "eval.limit=7",
            "data.strip_calculator=true",
        ],
    )
    info = run_data(cfg, tmp_path)
    assert (info["train"], info["val"], info["test"], info["rows_before_split"]) == (20, 5, 7, 7473)
    train = read_jsonl(tmp_path / "data" / "train.jsonl")
    assert not any("<<" in r["answer"] for r in train)
    test = read_jsonl(tmp_path / "data" / "test.jsonl")
    assert [r["id"] for r in test] == [f"test-{i}" for i in range(7)]
    assert json.loads((tmp_path / "data" / "info.json").read_text())["warnings"] == []


def test_gsm_symbolic_stage_warns_about_the_test_leak(tmp_path, gsm8k):
    cfg = load_config(
        None,
        [
            "data.source=gsm_symbolic",
            "data.symbolic_size=20",
            "data.test_source=jsonl",
            f"data.test_path={gsm8k}",
            "eval.limit=3",
        ],
    )
    info = run_data(cfg, tmp_path)
    assert info["warnings"] == [SYMBOLIC_LEAK]
    assert (info["train"], info["val"]) == (18, 2)
