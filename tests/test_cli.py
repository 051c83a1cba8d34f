"""Bad input: one line on stderr, exit code 2, no traceback."""

import pytest

from conftest import ROOT, mathtune_cli


def mathtune(*args, cwd=ROOT):
    return mathtune_cli(*args, cwd=cwd, timeout=300)


def assert_clean_error(res, *words):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for w in words:
        assert w in lines[0]


def test_missing_config(tmp_path):
    assert_clean_error(mathtune("run", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "r"), "nope.yaml")


def test_unknown_key(tmp_path):
    res = mathtune("run", "--config", ROOT / "configs" / "tiny.yaml", "--out", tmp_path / "r", "train.epoch=2")
    assert_clean_error(res, "train.epoch", "unknown key")
    assert not (tmp_path / "r").exists()


def test_impossible_value(tmp_path):
    res = mathtune("run", "--config", ROOT / "configs" / "tiny.yaml", "--out", tmp_path / "r", "lora.r=0")
    assert_clean_error(res, "lora.r")


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert_clean_error(mathtune("run", "--config", ROOT / "configs" / "tiny.yaml", "--out", f), "not a directory")
    assert f.read_text() == "keep me"


def test_missing_data_file(tmp_path):
    res = mathtune(
        "run", "--config", ROOT / "configs" / "tiny.yaml", "--out", tmp_path / "r", f"data.path={tmp_path / 'nodata'}"
    )
    assert_clean_error(res, "train.jsonl", "not found")


def test_stage_on_a_folder_that_is_not_a_run(tmp_path):
    assert_clean_error(mathtune("eval", tmp_path), "not a run directory")


def test_unknown_model(tmp_path, gsm8k):
    res = mathtune(
        "run",
        "--config",
        ROOT / "configs" / "tiny.yaml",
        "--out",
        tmp_path / "r",
        f"data.path={gsm8k}",
        f"model.name={tmp_path / 'no-model'}",
    )
    assert_clean_error(res, "model.name")
    assert not (tmp_path / "r" / "data").exists()  # refused before the first stage, not after the data stage


@pytest.mark.parametrize("args", [["run"], ["nosuchcommand"], ["run", "--out"]])
def test_usage_errors(args):
    assert_clean_error(mathtune(*args))
