"""A stage's peak memory: Linux's high-water mark, reset at the stage's start, kept across a resume."""

import sys

import pytest

from mathtune import memory
from mathtune.io import atomic_write_json, read_json
from mathtune.run import _StageClock

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="VmHWM and clear_refs are Linux's")


def test_the_peak_is_the_stages_own():
    assert memory.reset_peak()
    big = b"\x01" * (300 * 2**20)  # 300 MiB written, so resident
    with_big = memory.peak_gb()
    del big
    assert memory.reset_peak()
    without = memory.peak_gb()
    assert with_big - without > 0.25  # the freed block no longer counts once the mark is reset


def test_the_stage_clock_records_the_peak_and_keeps_a_resumed_stages_larger_part(tmp_path):
    atomic_write_json(tmp_path / "run.json", {"stages": {"train": {"seconds": 5.0, "peak_rss_gb": 99.0}}})
    with _StageClock(tmp_path, "train"):
        pass
    with _StageClock(tmp_path, "eval"):
        pass
    stages = read_json(tmp_path / "run.json")["stages"]
    assert stages["train"]["peak_rss_gb"] == 99.0 and stages["train"]["seconds"] >= 5.0
    assert 0 < stages["eval"]["peak_rss_gb"] < 99.0
