"""A stage's peak memory: Linux's high-water mark, reset at the stage's start, kept across a resume."""

import sys

import pytest

from mathtune.io import atomic_write_json, read_json
from mathtune.run import _StageClock

from conftest import python_on_glibc

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="VmHWM and clear_refs are Linux's")


def test_the_peak_is_the_stages_own():
    # In a fresh process on glibc's malloc, where a freed 300 MiB block goes back to the OS at once (tcmalloc, or a
    # test process's own heap, may keep it resident, and then it rightly still counts).
    code = (
        "from mathtune import memory\n"
        "assert memory.reset_peak()\n"
        "big = b'\\x01' * (300 * 2**20)\n"  # written, so resident
        "with_big = memory.peak_gb()\n"
        "del big\n"
        "assert memory.reset_peak()\n"
        "print(with_big, memory.peak_gb())\n"
    )
    out = python_on_glibc(code)
    with_big, without = map(float, out.split())
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
