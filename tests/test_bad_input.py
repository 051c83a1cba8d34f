"""The bad-input table (docs/bad-input.md): each case is a subprocess that must exit 2 with one line on stderr
that names the file, line or key, no traceback, and no file that existed before modified."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GSM8K, ROOT, mathtune_cli

TINY = ROOT / "configs" / "tiny.yaml"


def snapshot(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def gsm_folder(tmp: Path, train_lines: list[str] | bytes) -> Path:
    """A data folder like GSM8K's: the given train.jsonl, and the real test.jsonl's first rows."""
    folder = tmp / "data"
    folder.mkdir()
    if isinstance(train_lines, bytes):
        (folder / "train.jsonl").write_bytes(train_lines)
    else:
        (folder / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    (folder / "test.jsonl").write_text("".join((GSM8K / "test.jsonl").read_text().splitlines(True)[:4]))
    return folder


def real_rows(n: int = 20) -> list[str]:
    return (GSM8K / "train.jsonl").read_text().splitlines()[:n]


def finished_run(tmp: Path) -> Path:
    run = tmp / "finished"
    run.mkdir()
    (run / "config.yaml").write_text(TINY.read_text())
    (run / "report.md").write_text("# a finished report\n")
    return run


def preds(tmp: Path, name: str, ids: list[str]) -> Path:
    path = tmp / name
    path.write_text(
        "".join(json.dumps({"id": i, "question": "q", "reference": "#### 1", "completion": "1"}) + "\n" for i in ids)
    )
    return path


def run_args(tmp, *overrides):
    return ["run", "--config", TINY, "--out", tmp / "run", f"data.path={GSM8K}", *overrides]


def data_args(tmp, lines):
    return ["run", "--config", TINY, "--out", tmp / "run", f"data.path={gsm_folder(tmp, lines)}"]


# (case id, function tmp -> argv, words the error line must contain)
CASES = [
    ("missing config", lambda t: ["run", "--config", t / "nope.yaml", "--out", t / "run"], ["nope.yaml"]),
    (
        "yaml syntax error",
        lambda t: ["run", "--config", _write(t / "bad.yaml", "train: [1, 2\n"), "--out", t / "r"],
        ["bad.yaml:"],
    ),
    ("unknown key", lambda t: run_args(t, "train.epoch=2"), ["train.epoch"]),
    ("wrong type", lambda t: run_args(t, "train.epochs=many"), ["train.epochs"]),
    ("lora r 0", lambda t: run_args(t, "lora.r=0"), ["lora.r"]),
    ("negative learning rate", lambda t: run_args(t, "train.learning_rate=-1e-4"), ["train.learning_rate"]),
    ("split 1.5", lambda t: run_args(t, "data.val_fraction=1.5"), ["data.val_fraction"]),
    ("epochs 0", lambda t: run_args(t, "train.epochs=0"), ["train.epochs"]),
    ("override without =", lambda t: run_args(t, "train.epochs"), ["train.epochs"]),
    ("missing data file", lambda t: run_args(t, f"data.path={t / 'nowhere'}"), ["nowhere"]),
    ("empty data file", lambda t: data_args(t, []), ["train.jsonl"]),
    (
        "malformed JSONL line",
        lambda t: data_args(t, real_rows(3) + ['{"question": "q", "answer": ']),
        ["train.jsonl:4"],
    ),
    (
        "row without question",
        lambda t: data_args(t, real_rows(2) + ['{"answer": "#### 3"}']),
        ["train.jsonl:3", "question"],
    ),
    (
        "answer without a final number",
        lambda t: data_args(t, real_rows(2) + ['{"question": "q?", "answer": "three"}']),
        ["train.jsonl:3", "####"],
    ),
    ("non-UTF-8 bytes", lambda t: data_args(t, b'{"question": "\xff\xfe", "answer": "#### 1"}\n'), ["train.jsonl"]),
    (
        "a row of several MB",
        lambda t: data_args(t, real_rows(2) + [json.dumps({"question": "x" * 3_000_000, "answer": "#### 1"})]),
        ["train.jsonl:3", "question"],
    ),
    ("unknown model name", lambda t: run_args(t, "model.name=no-such-model-anywhere"), ["no-such-model-anywhere"]),
    (
        "model folder without weights",
        lambda t: run_args(t, f"model.name={_folder(t / 'empty-model')}"),
        ["empty-model"],
    ),
    (
        "output directory is a file",
        lambda t: ["run", "--config", TINY, "--out", _write(t / "file", "keep me")],
        ["file"],
    ),
    (
        "finished run without --resume",
        lambda t: ["run", "--config", TINY, "--out", finished_run(t)],
        ["finished", "--resume"],
    ),
    (
        "analyze: wrong fields",
        lambda t: ["analyze", _write(t / "p.jsonl", '{"id": "1", "answer": "2"}\n'), "--out", t / "a"],
        ["p.jsonl:1"],
    ),
    (
        "analyze: no common ids",
        lambda t: ["analyze", preds(t, "a.jsonl", ["1", "2"]), preds(t, "b.jsonl", ["3"]), "--out", t / "a"],
        ["no question ids in common"],
    ),
    (
        "compare: not runs",
        lambda t: ["compare", _folder(t / "x"), _folder(t / "y"), "--out", t / "c"],
        ["finetuned.jsonl"],
    ),
    (
        "eval: negative limit",
        lambda t: ["eval", "--model", "tiny-random-llama", "--limit", "-3", "--data", GSM8K, "--out", t / "p.jsonl"],
        ["eval.limit"],
    ),
    (
        "eval: unknown protocol",
        lambda t: [
            "eval",
            "--model",
            "tiny-random-llama",
            "--protocol",
            "zero-shot-magic",
            "--data",
            GSM8K,
            "--out",
            t / "p.jsonl",
        ],
        ["eval.protocol"],
    ),
    (
        "eval: adapter that does not match",
        lambda t: [
            "eval",
            "--model",
            "tiny-random-llama",
            "--adapter",
            _bad_adapter(t),
            "--data",
            GSM8K,
            "--limit",
            "1",
            "--out",
            t / "p.jsonl",
        ],
        ["adapter"],
    ),
    (
        "grade: not JSONL",
        lambda t: ["grade", _write(t / "g.jsonl", "not json\n"), "--out", t / "o.jsonl"],
        ["g.jsonl:1"],
    ),
    (
        "grade: --out under a file",
        lambda t: [
            "grade",
            _write(t / "g.jsonl", '{"completion": "4", "reference": "4"}\n'),
            "--out",
            _write(t / "FILE", "keep me") / "x.jsonl",
        ],
        ["FILE"],
    ),
    (
        "eval: old key eval.kv_cache",
        lambda t: [
            "eval",
            "--model",
            "tiny-random-llama",
            "--data",
            GSM8K,
            "--out",
            t / "p.jsonl",
            "eval.kv_cache=static",
        ],
        ["eval.decoder"],
    ),
    ("report: not a run", lambda t: ["report", _folder(t / "notarun")], ["notarun"]),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _bad_adapter(tmp: Path) -> Path:
    """A PEFT adapter folder whose LoRA targets modules the model does not have."""
    folder = _folder(tmp / "adapter")
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 4,
                "lora_alpha": 8,
                "target_modules": ["no_such_module"],
                "base_model_name_or_path": "tiny-random-llama",
            }
        )
    )
    return folder


@pytest.fixture(scope="module", autouse=True)
def embedded_models_cached():
    """On a fresh machine the first use of an embedded model dequantizes it, with progress bars on stderr: do that
    here, so each case's stderr holds only what the bad input printed."""
    from mathtune.models import TINY, ensure_local

    ensure_local(TINY)  # builds on SmolLM2's tokenizer, so SmolLM2 is dequantized too


@pytest.mark.parametrize("name, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, argv, words):
    args = argv(tmp_path)
    before = snapshot(tmp_path)
    res = mathtune_cli(*args, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that existed was changed


def test_table_has_at_least_25_cases():
    assert len(CASES) >= 25
    documented = (ROOT / "docs" / "bad-input.md").read_text()
    for name, _, _ in CASES:
        assert f"| {name} |" in documented, name


def test_ctrl_c_during_a_run_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    # As a terminal's Ctrl-C: SIGINT handled, even when this test runs as a background job (which ignores it).
    proc = subprocess.Popen(
        [sys.executable, "-m", "mathtune.cli", *map(str, run_args(tmp_path))],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (out / "data" / "info.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == f"mathtune: interrupted; resume with: mathtune run --resume --out {out}"
    assert "Traceback" not in err
    assert (out / "config.yaml").is_file()  # what was written stays


if os.environ.get("MATHTUNE_DOC_TABLE"):  # regenerate docs/bad-input.md's rows: MATHTUNE_DOC_TABLE=1 pytest -k print

    def test_print_table(tmp_path):
        for name, argv, _ in CASES:
            case = tmp_path / name.replace(" ", "_").replace(":", "")
            case.mkdir()
            res = mathtune_cli(*argv(case), cwd=case)
            line = res.stderr.strip().splitlines()[-1].replace(str(case), "…").replace(str(GSM8K), "GSM8K")
            line = line.replace(f"{ROOT}/", "")
            end = " " if line.endswith("`") else ""  # double backticks: some messages hold one
            print(f"| {name} | {res.returncode} | ``{line}{end}`` |")
