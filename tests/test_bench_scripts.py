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


@pytest.mark.slow
def test_cpu_training_benchmark_runs_each_setting_in_its_own_process(tmp_path, gsm8k):
    out = tmp_path / "cpu.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--config",
                          str(ROOT / "configs" / "tiny.yaml"), "--rows", "16", "--steps", "2", "--gsm8k", str(gsm8k),
                          "--only", "baseline,mathtune,limit_256", "--out", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [s["name"] for s in r["settings"]] == ["baseline", "mathtune", "limit_256"]
    assert r["limit_length"] == 256 and r["ratio"] > 0 and r["limit_ratio"] > 0
    assert r["mathtune_batching"] == "packed"
    assert all(s["peak_rss_gb"] > 0 and s["tokens"] > 0 for s in r["settings"])


def test_committed_results_have_their_fields():
    cpu = json.loads((ROOT / "bench" / "results" / "train_throughput_cpu.json").read_text())
    for key in ("ratio", "limit_ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s", "limit_tokens_per_s",
                "baseline_final_loss", "mathtune_final_loss", "peak_rss_gb", "machine", "date", "settings"):
        assert key in cpu, key
    assert cpu["ratio"] == pytest.approx(cpu["mathtune_tokens_per_s"] / cpu["baseline_tokens_per_s"], rel=0.01)
    assert cpu["limit_ratio"] == pytest.approx(cpu["mathtune_tokens_per_s"] / cpu["limit_tokens_per_s"], rel=0.01)
