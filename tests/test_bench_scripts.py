"""The benchmark scripts run (tiny settings) and write the fields the README and `mathtune estimate` read.
Their figures are not checked here: speed lives in bench/results, measured on real runs."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_training_benchmark_runs_on_a_2_layer_model_on_the_cpu(tmp_path, gsm8k):
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput_gpu.py"), "--tiny", "--steps", "2",
                          "--warmup", "0", "--gsm8k", str(gsm8k), "--out", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s", "mfu", "peak_memory_gb", "gpu"):
        assert key in r, key
    assert r["baseline_tokens_per_s"] > 0 and r["mathtune_tokens_per_s"] > 0 and r["gpu"] is None


def test_committed_results_have_their_fields():
    cpu = json.loads((ROOT / "bench" / "results" / "train_throughput_cpu.json").read_text())
    for key in ("ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s", "baseline_final_loss", "mathtune_final_loss",
                "peak_rss_gb", "machine", "date", "levers"):
        assert key in cpu, key
    assert cpu["ratio"] == pytest.approx(cpu["mathtune_tokens_per_s"] / cpu["baseline_tokens_per_s"], rel=0.01)
