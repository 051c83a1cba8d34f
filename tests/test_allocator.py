"""Process memory settings made before torch starts (allocator.py)."""

import os
import subprocess
import sys

import pytest

from mathtune.allocator import (
    ONEDNN_CACHE,
    ONEDNN_CACHE_CHOSEN_BY,
    ONEDNN_CACHE_REPEATING_SHAPES,
    ONEDNN_CACHE_SIZE,
    bound_onednn_cache,
    training_onednn_cache,
)

from conftest import python_on_glibc


def test_onednn_cache_is_capped_unless_the_user_set_it(monkeypatch):  # conftest: both variables unset at first
    assert bound_onednn_cache() == str(ONEDNN_CACHE_SIZE)
    # mathtune's own choice may be made again: the training stage sizes it for its rows
    assert bound_onednn_cache(ONEDNN_CACHE_REPEATING_SHAPES) == os.environ[ONEDNN_CACHE] == "1024"
    monkeypatch.delenv(ONEDNN_CACHE_CHOSEN_BY)
    monkeypatch.setenv(ONEDNN_CACHE, "8")
    assert bound_onednn_cache() == bound_onednn_cache(ONEDNN_CACHE_REPEATING_SHAPES) == "8"  # the user's stands
    assert ONEDNN_CACHE_CHOSEN_BY not in os.environ


def test_training_keeps_the_kernels_of_shapes_that_repeat():
    assert training_onednn_cache(None) == ONEDNN_CACHE_SIZE == 64  # unpadded rows: each shape met once
    assert training_onednn_cache(64) == ONEDNN_CACHE_REPEATING_SHAPES == 1024  # oneDNN's default


def test_the_training_and_generating_commands_set_it_before_torch_starts():
    # `mathtune eval` with a bad argument fails before any model loads; the cap is set first all the same.
    code = (
        "import os, sys\n"
        "sys.argv = ['mathtune', 'eval', '--no-such-option']\n"
        "from mathtune import cli\n"
        "cli.main()\n"
        "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (ONEDNN_CACHE, ONEDNN_CACHE_CHOSEN_BY)}
    env["MATHTUNE_ALLOCATOR"] = "system"  # no restart under tcmalloc: this process is the one inspected
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(ONEDNN_CACHE_SIZE), "False"]


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim and /proc are Linux's")
def test_freed_memory_goes_back_to_the_os_between_stages():
    # 200 MB in 100 kB blocks with every tenth kept: the holes stay inside the heap until they are released.
    code = (
        "from pathlib import Path\n"
        "from mathtune.allocator import release_free_memory\n"
        "rss = lambda: int(next(l for l in Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmRSS')).split()[1]) / 1024\n"
        "blocks = [bytes(100_000) for _ in range(2000)]\n"
        "kept = blocks[::10]\n"
        "del blocks\n"
        "before = rss()\n"
        "print(release_free_memory(), before - rss())\n"
    )
    out = python_on_glibc(code)
    how, released_mb = out.split()
    assert how == "glibc" and float(released_mb) > 100
