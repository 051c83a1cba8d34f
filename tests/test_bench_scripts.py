"""The benchmark scripts run (tiny settings) and write the fields the README and `mathtune estimate` read.
Their figures are not checked here: speed lives in bench/results, measured on real runs."""

import json
import subprocess
from pathlib import Path

import pytest

from mathtune.allocator import ONEDNN_CACHE_SIZE
from mathtune.config import load_config

from conftest import ROOT, bench_script


@pytest.mark.slow
def test_gpu_training_benchmark_runs_on_a_2_layer_model_on_the_cpu(tmp_path, gsm8k):
    out = tmp_path / "gpu.json"
    res = bench_script(
        "train_throughput_gpu.py",
        "--tiny",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--settings",
        "baseline,mathtune",  # the levers' settings run the same code with other arguments
        "--gsm8k",
        str(gsm8k),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("ratio", "baseline_tokens_per_s", "mathtune_tokens_per_s", "mfu", "peak_memory_gb", "gpu"):
        assert key in r, key
    assert r["baseline_tokens_per_s"] > 0 and r["mathtune_tokens_per_s"] > 0 and r["gpu"] is None
    assert r["levers"]["mathtune_liger"] == "not chosen (--settings)"


@pytest.mark.slow
def test_leftover_benchmark_finds_trainings_kernel_caches(tmp_path, gsm8k):
    """The reason `mathtune run` trains in a process of its own: most of what training leaves allocated once it has
    ended is compiled kernels (oneDNN's, ideep's, ATen's), which no Python object owns."""
    out = tmp_path / "leftover.json"
    args = ["--config", tiny_bf16_config(tmp_path), "--steps", "1", "--gsm8k", gsm8k, "--out", out]
    res = bench_script("train_leftover_memory.py", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    owners = r["by_owner_mb"]
    assert set(owners) <= {
        "onednn_primitive_cache",
        "ideep_matmul_descriptors",
        "aten_brgemm_kernels",
        "mkl_buffers",
        "other",
    }
    assert sum(owners.values()) == pytest.approx(r["leftover_mb"], abs=0.5) and r["leftover_allocations"] > 0
    kernels = sum(v for k, v in owners.items() if k != "other")
    assert kernels > owners.get("other", 0), owners


def tiny_bf16_config(tmp_path, **train) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["train"]["bf16"] = True  # bf16 autocast: oneDNN's and ATen's kernels, as on the demo, on a 2-layer model
    cfg["train"].update(train)
    (tmp_path / "tiny-bf16.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "tiny-bf16.yaml"


@pytest.mark.slow
def test_saved_tensors_benchmark_sums_what_each_forward_keeps(tmp_path, gsm8k):
    """What autograd saves grows with the tokens of a forward; the LoRA A products' inputs are part of it (their
    dropout masks no longer: DroppedLinear draws them again in the backward).
    The config pads packed rows, as the demo's does: the padding row is counted apart."""
    out = tmp_path / "saved.json"
    config = tiny_bf16_config(tmp_path, batching="packed", pad_to_multiple_of=16)
    args = ["--config", config, "--rows-per-forward", "1,4", "--gsm8k", gsm8k, "--out", out]
    res = bench_script("train_saved_tensors.py", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    one, four = r["forwards"]
    assert (one["rows"], four["rows"]) == (1, 4) and four["tokens"] > 2 * one["tokens"]
    assert all((f["tokens"] + f["pad_tokens"]) % 16 == 0 and f["pad_tokens"] < 16 for f in (one, four))
    assert four["saved_mb"] > one["saved_mb"] and r["saved_kb_per_token"] > 0
    for f in (one, four):
        assert sum(f["by_kind_mb"].values()) == pytest.approx(f["saved_mb"], abs=0.5)
        assert f["by_kind_mb"]["lora_A_inputs"] > 0 and f["by_kind_mb"].get("lora_dropout_masks", 0) == 0
        assert f["by_kind_mb"]["weight_copies"] == one["by_kind_mb"]["weight_copies"]  # once per forward


@pytest.mark.slow
def test_cpu_training_benchmark_runs_each_setting_in_its_own_process(tmp_path, gsm8k):
    out = tmp_path / "cpu.json"
    res = bench_script(
        "train_throughput.py",
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--rows",
        "16",
        "--steps",
        "2",
        "--gsm8k",
        str(gsm8k),
        "--only",
        "baseline,mathtune,limit_256",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [s["name"] for s in r["settings"]] == ["baseline", "mathtune", "limit_256"]
    assert r["limit_length"] == 256 and r["ratio"] > 0 and r["limit_ratio"] > 0
    assert r["mathtune_batching"] == "packed"
    # The rows per forward the Trainer was given: tiny.yaml leaves train.rows_per_forward unset, so the whole batch.
    assert r["mathtune_rows_per_forward"] == load_config(ROOT / "configs" / "tiny.yaml").train.batch_size == 4
    assert all(s["peak_rss_gb"] > 0 and s["tokens"] > 0 for s in r["settings"])
    # oneDNN's primitive cache: oneDNN's default for plain TRL and the limit (shapes that repeat), for mathtune
    # what its training stage chooses for the config (tiny.yaml's rows are unpadded: the cap).
    assert load_config(ROOT / "configs" / "tiny.yaml").train.pad_to_multiple_of is None
    assert [s["onednn_cache"] for s in r["settings"]] == [1024, ONEDNN_CACHE_SIZE, 1024]


def test_every_training_bench_setting_is_a_valid_demo_config():
    """Each setting's overrides load with the config the bench reads (the demo's), so no setting fails after an
    hour of the others: a per-row layout, for one, has to take the demo's packed-row padding out."""
    import sys

    from mathtune.config import load_config

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from train_throughput import settings
    finally:
        sys.path.remove(str(ROOT / "bench"))
    specs = settings(32, 8)
    assert len({name for name, _ in specs}) == len(specs)
    for name, spec in specs:
        cfg = load_config(ROOT / "configs" / "demo-cpu.yaml", spec.get("overrides", []))
        assert cfg.train.batching in ("auto", "packed", "per_sequence"), name


def test_committed_results_have_their_fields():
    cpu = json.loads((ROOT / "bench" / "results" / "train_throughput_cpu.json").read_text())
    for key in (
        "ratio",
        "limit_ratio",
        "baseline_tokens_per_s",
        "mathtune_tokens_per_s",
        "limit_tokens_per_s",
        "baseline_final_loss",
        "mathtune_final_loss",
        "peak_rss_gb",
        "machine",
        "date",
        "settings",
    ):
        assert key in cpu, key
    assert cpu["ratio"] == pytest.approx(cpu["mathtune_tokens_per_s"] / cpu["baseline_tokens_per_s"], rel=0.01)
    assert cpu["limit_ratio"] == pytest.approx(cpu["mathtune_tokens_per_s"] / cpu["limit_tokens_per_s"], rel=0.01)
    # The oneDNN cache pair (allocator.py's cap): its summary figures are its two runs', at the cap mathtune sets.
    pair = json.loads((ROOT / "bench" / "results" / "train_onednn_cache_cpu.json").read_text())
    capped, default = pair["onednn_cache_64"], pair["onednn_cache_1024"]
    assert capped["onednn_cache"] == ONEDNN_CACHE_SIZE and default["onednn_cache"] == 1024
    assert pair["peak_rss_gb"] == {"64": capped["peak_rss_gb"], "1024": default["peak_rss_gb"]}
    assert pair["speed_ratio_64_over_1024"] == round(capped["tokens_per_s"] / default["tokens_per_s"], 3)
    assert pair["same_final_loss"] == (capped["final_loss"] == default["final_loss"])
    # The same pair on the padded demo config, run twice: each run's ratio and loss check are its own figures'.
    padded = json.loads((ROOT / "bench" / "results" / "train_onednn_cache_padded_cpu.json").read_text())
    for run in padded["runs"]:
        capped, default = run["cap_64"], run["cap_1024"]
        assert capped["onednn_cache"] == ONEDNN_CACHE_SIZE and default["onednn_cache"] == 1024
        assert run["speed_ratio_1024_over_64"] == round(default["tokens_per_s"] / capped["tokens_per_s"], 3)
        assert run["same_final_loss"] == (capped["final_loss"] == default["final_loss"])
    # Saved tensors per forward: the per-token figure the README cites is the slope between its two forwards.
    saved = json.loads((ROOT / "bench" / "results" / "train_saved_tensors_cpu.json").read_text())
    first, last = saved["forwards"][0], saved["forwards"][-1]
    processed = lambda f: f["tokens"] + f.get("pad_tokens", 0)  # noqa: E731
    slope = (last["saved_mb"] - first["saved_mb"]) / (processed(last) - processed(first)) * 1e3
    assert saved["saved_kb_per_token"] == round(slope, 1) and "machine" in saved and "date" in saved
    for f in saved["forwards"]:
        assert sum(f["by_kind_mb"].values()) == pytest.approx(f["saved_mb"], abs=0.5)


@pytest.mark.slow
def test_gpu_generation_benchmark_runs_on_a_2_layer_model_on_the_cpu(tmp_path, gsm8k):
    out = tmp_path / "gen.json"
    res = bench_script(
        "eval_throughput_gpu.py",
        "--tiny",
        "--n",
        "6",
        "--max-new-tokens",
        "8",
        "--gsm8k",
        str(gsm8k),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["identical_answers"] == 6 and r["static_tokens"] == r["compact_tokens"] and r["gpu"] is None


@pytest.mark.slow
def test_gpu_probe_profiles_mathtunes_step_on_a_2_layer_model_on_the_cpu(gsm8k):
    res = bench_script("gpu_probe.py", "--tiny", "--part", "profile", "--gsm8k", str(gsm8k))
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["device"] == "cpu" and r["wall_s_per_step"] > 0 and "aten::mm" in r["top_cpu_ops_ms_per_step"]


def test_gpu_check_script_parses_and_names_its_parts():
    script = ROOT / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for part in (
        "train_throughput_gpu.py",
        "configs/tiny-gemma2.yaml",
        "eval_throughput_gpu.py",
        "estimate",
        "--no-index --no-deps",
        "gpu_check.json",
    ):
        assert part in text, part
    assert "gpu-wheels:" in (ROOT / "Makefile").read_text() and "gpu-check:" in (ROOT / "Makefile").read_text()


def test_estimate_takes_a_measured_mfu():
    from mathtune.config import load_config
    from mathtune.estimate import ASSUMED_MFU, MEASURED_MFU, estimate

    cfg = load_config(ROOT / "configs" / "gemma2-9b-gsm8k.yaml")
    tokens = {"train_rows": 6725, "train": 1_300_000, "val": 50_000, "test_questions": 1319, "test_reference": 200_000}
    committed = estimate(cfg, tokens, 9_240_000_000, "NVIDIA H100 80GB HBM3")
    given = estimate(cfg, tokens, 9_240_000_000, "NVIDIA H100 80GB HBM3", mfu=0.7)
    assumed = estimate(cfg, tokens, 9_240_000_000, "NVIDIA A100-SXM4-80GB")
    assert given["train_seconds"] == pytest.approx(committed["train_seconds"] * MEASURED_MFU["H100"] / 0.7, rel=1e-3)
    assert "at 70.0% MFU for training (measured: --mfu" in given["basis"]
    assert "at 4.8% MFU for training (measured: bench/results/train_throughput_gpu.json" in committed["basis"]
    # An A100 at the assumed share would outrun the H200's measured step (launch-bound): capped at its tokens/s.
    assert "at 15.2% MFU for training (assumed: no measurement on this GPU; 35%, at most" in assumed["basis"]
    assert assumed["train_seconds"] == pytest.approx(committed["train_seconds"], rel=1e-3) and ASSUMED_MFU == 0.35


def test_committed_gpu_results_are_one_runs_and_the_estimate_uses_them():
    """bench/results/gpu_check.json is the summary of the run that wrote train_throughput_gpu.json (an H200), and
    `mathtune estimate` costs Hopper GPUs at the MFU that run measured on mathtune's path."""
    from mathtune.estimate import MEASURED_MFU

    results = ROOT / "bench" / "results"
    train = json.loads((results / "train_throughput_gpu.json").read_text())
    check = json.loads((results / "gpu_check.json").read_text())
    assert {k: v for k, v in check["train_throughput_gpu"].items() if k != "command"} == {
        k: v for k, v in train.items() if k != "command"
    }
    assert train["gpu"] == check["environment"]["gpu"] == "NVIDIA H200"
    by = {s["name"]: s for s in train["settings"]}
    assert train["mathtune_tokens_per_s"] == by["mathtune"]["tokens_per_s"]
    assert train["ratio"] == round(by["mathtune"]["tokens_per_s"] / by["baseline"]["tokens_per_s"], 2)
    assert train["mfu"] == round(by["mathtune"]["tokens_per_s"] * by["mathtune"]["flops_per_token"] / 989e12, 4)
    assert MEASURED_MFU["H200"] == MEASURED_MFU["H100"] == train["mfu"]
    assert check["tiny_gemma2_run"]["run"]["device"] == "cuda" and check["estimate"]["device"] == "NVIDIA H200"
    probe = json.loads((results / "gpu_probe.json").read_text())
    p = probe["profile"]
    assert (
        p["gpu_busy_share"] == round(p["gpu_busy_s_per_step"] / p["wall_s_per_step"], 3)
        and probe["gpu"] == train["gpu"]
    )


@pytest.mark.slow
def test_full_split_benchmark_runs_and_takes_a_matching_runs_base_evaluation(tmp_path, gsm8k):
    import yaml

    from mathtune.config import load_config

    small = ["--sweep", "2", "--batch-sizes", "1,2", "--check", "2", "--max-new-tokens", "8", "--gsm8k", gsm8k]
    res = bench_script(
        "eval_full_test_split.py", *small, "--limit", "3", "--keep", tmp_path / "a", "--out", tmp_path / "a.json"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["n"] == 3 and a["settings"]["dtype"] == "float32" and a["settings"]["batch_size"] in (1, 2)
    assert a["batch_size_sweep"]["same_answers"] == {"1 vs 2": 2}  # float32 answers do not depend on the batch
    assert a["static_check"]["n"] == 2 and a["static_check"]["same_answers"] == 2  # the static engine agrees
    # torch's own linear layers against oneDNN's, on the sweep's questions: the same float32 answers.
    linear = a["linear_layers"]
    assert a["settings"]["cpu_linear"] == "auto" and linear["aten"]["generated_tokens"] > 0 and linear["ratio"] > 0
    assert linear["same_answers"] == linear["same_completions"] == 2
    assert a["command"].startswith("mathtune eval") and a["peak_rss_gb"] > 0
    # The answers compared with the full study's (its committed float32 base predictions), question by question.
    study = {r["id"]: r for r in map(json.loads, (ROOT / "examples/full-study/predictions/base.jsonl").open())}
    mine = [json.loads(line) for line in (tmp_path / "a" / "full.jsonl").open()]
    assert a["reference"]["n"] == 3 and a["reference"]["correct_there"] == sum(study[r["id"]]["correct"] for r in mine)
    assert a["reference"]["same_answers"] == sum(r["extracted"] == study[r["id"]]["extracted"] for r in mine)

    # A finished run at the same settings: its base evaluation is taken, not rerun.
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    cfg = load_config(
        ROOT / "configs" / "full-cpu.yaml", [f"eval.batch_size={a['settings']['batch_size']}", "eval.max_new_tokens=8"]
    )
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    base = json.loads((tmp_path / "a" / "full.summary.json").read_text())
    (run / "eval.json").write_text(json.dumps({"base": base}))
    (run / "predictions" / "base.jsonl").write_text((tmp_path / "a" / "full.jsonl").read_text())
    # The benchmark takes its base evaluation (in this process: what `--from-run RUN` does first), not reruns it.
    sys_path = str(ROOT / "bench")
    import sys

    sys.path.insert(0, sys_path)
    try:
        from eval_full_test_split import MODEL, from_run

        wanted = ["eval.max_new_tokens=8", "eval.dtype=float32", f"eval.batch_size={a['settings']['batch_size']}"]
        cfg = load_config(ROOT / "configs" / "full-cpu.yaml", [f"model.name={MODEL}", *wanted, "eval.limit=null"])
        (tmp_path / "b").mkdir()
        b = from_run(run, cfg, tmp_path / "b")
        assert b["command"].startswith("mathtune run") and b["peak_rss_gb"] is None
        assert (b["n"], b["correct"], b["generated_tokens"]) == (3, a["correct"], a["generated_tokens"])
        assert (tmp_path / "b" / "full.jsonl").read_text() == (tmp_path / "a" / "full.jsonl").read_text()

        # Another token limit is another benchmark: the run is refused, with the key that differs.
        overrides = ["eval.max_new_tokens=16", "eval.batch_size=2", "eval.limit=null"]
        cfg = load_config(ROOT / "configs" / "full-cpu.yaml", ["model.name=smollm2-135m-instruct", *overrides])
        assert from_run(run, cfg, tmp_path) is None
    finally:
        sys.path.remove(sys_path)


@pytest.mark.slow
def test_cache_pairs_benchmark_alternates_its_order(tmp_path, gsm8k):
    """Two pairs on a padded tiny config: the chosen cache (oneDNN's default, as the rows are padded) against the
    cap, first A B then B A; each pair's ratio and loss check are its own two runs'."""
    out = tmp_path / "pairs.json"
    config = tiny_bf16_config(tmp_path, batching="packed", pad_to_multiple_of=16)
    args = ["--config", config, "--rows", "16", "--steps", "2", "--pairs", "2", "--gsm8k", gsm8k, "--out", out]
    res = bench_script("train_onednn_cache_pairs.py", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["chosen_cache"] == 1024 and [p["order"] for p in r["runs"]] == ["1024 then 64", "64 then 1024"]
    for p in r["runs"]:
        assert (p["chosen"]["onednn_cache"], p["capped_64"]["onednn_cache"]) == (1024, ONEDNN_CACHE_SIZE)
        assert p["speed_ratio_chosen_over_64"] == round(p["chosen"]["tokens_per_s"] / p["capped_64"]["tokens_per_s"], 3)
        assert p["same_final_loss"] == (p["chosen"]["final_loss"] == p["capped_64"]["final_loss"])
    assert r["faster_than_capped"].endswith("of 2") and r["machine"]["cores"] > 0
