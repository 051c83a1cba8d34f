#!/usr/bin/env bash
# The GPU path, checked in one prepared run (make gpu-check) on a machine with one NVIDIA GPU (H100 or H200) whose
# image has Python, torch, transformers, peft, accelerate, safetensors, scipy, matplotlib, tqdm, click, pyarrow and
# pyyaml, and no network. What mathtune needs beyond that comes from $WHEELS (`make gpu-wheels` fills it on a CPU
# machine: the wheels, SmolLM2's tokenizer files, GSM8K's JSONL files), installed with --no-index --no-deps into a
# folder of its own, so the image's torch and transformers stay. Each part runs even if one before it failed. The
# summary and at most 8 files are written under $OUT (run folders, with their many files, go to $RUNS); 5 min 34 s
# on an H200 (bench/results/gpu_check.log).
#   (a) LoRA training throughput on the Gemma-2-9B shape (random weights, bf16, r=8 all-linear, GSM8K's lengths):
#       plain TRL against mathtune's path and its levers, MFU on the documented 4N + attention count
#   (b) a 2-layer random Gemma-2 (soft-capping, sliding window, eager) through every stage of `mathtune run`, bf16
#   (c) generation on a ~2B-shape random model: the compact decoder against model.generate, same batch and answers
#   (d) `mathtune estimate` for configs/gemma2-9b-gsm8k.yaml at the MFU measured in (a)
# TINY=1 runs the same parts on 2-layer models on a CPU (a rehearsal of the script where no GPU is at hand).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
WHEELS="${WHEELS:-.gpu-wheels}"
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/mathtune-gpu-site}"
RUNS="${RUNS:-/tmp/mathtune-gpu-check}"
TINY="${TINY:-}"
mkdir -p "$OUT" "$RUNS"
GSM8K="$PWD/$WHEELS/gsm8k"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE (no index, no deps: the image's torch stays)"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl 2>&1 | tail -n 5 | tee -a "$OUT/log.txt"
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MATHTUNE_CACHE="$PWD/$WHEELS/cache"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" - "$OUT/environment.json" <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import importlib.metadata as md, json, sys, torch
names = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "liger-kernel", "triton")
versions = {}
for n in names:
    try:
        versions[n] = md.version(n)
    except md.PackageNotFoundError:
        versions[n] = None
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
memory = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if gpu else None
env = {"gpu": gpu, "gpu_memory_gib": memory, "cuda": torch.version.cuda, "python": sys.version.split()[0], **versions}
open(sys.argv[1], "w").write(json.dumps(env, indent=2) + "\n")
print(json.dumps(env))
PY
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
if [ -n "$TINY" ]; then SHAPE=(--tiny); DEVICE=cpu; DTYPE=float32; BF16=false; else SHAPE=(); DEVICE=cuda; DTYPE=bfloat16; BF16=true; fi

log "(a) training throughput, Gemma-2-9B shape"
timeout 480 "$PY" bench/train_throughput_gpu.py "${SHAPE[@]}" --gsm8k "$GSM8K" --steps 24 --warmup 4 --timeout 120 \
    --out "$OUT/train_throughput_gpu.json" 2>&1 | tail -n 12 | tee -a "$OUT/log.txt" || log "(a) failed"

log "(b) tiny Gemma-2 through every stage on $DEVICE"
rm -rf "$RUNS/tiny-gemma2"
timeout 180 "$PY" -m mathtune.cli run --config configs/tiny-gemma2.yaml --out "$RUNS/tiny-gemma2" \
    data.path="$GSM8K" runtime.device="$DEVICE" model.dtype="$DTYPE" train.bf16="$BF16" 2>&1 | tail -n 15 \
    | tee -a "$OUT/log.txt" || log "(b) failed"

log "(c) generation, ~2B shape: compact against model.generate"
timeout 180 "$PY" bench/eval_throughput_gpu.py "${SHAPE[@]}" --gsm8k "$GSM8K" --out "$OUT/eval_throughput_gpu.json" \
    2>&1 | tail -n 8 | tee -a "$OUT/log.txt" || log "(c) failed"

log "(d) estimate of the reference study at the measured MFU"
MFU=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['mfu'] or '')" "$OUT/train_throughput_gpu.json" \
    2>/dev/null || echo "")
timeout 120 "$PY" -m mathtune.cli estimate --config configs/gemma2-9b-gsm8k.yaml --gpu "$GPU" ${MFU:+--mfu "$MFU"} \
    --json "$OUT/estimate.json" data.source=jsonl data.path="$GSM8K" 2>&1 | tee -a "$OUT/log.txt" \
    || log "(d) failed"

"$PY" - "$OUT" "$RUNS/tiny-gemma2" <<'PY'
import json, pathlib, sys
out, run = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
tiny = {name: read(run / f"{name}.json") for name in ("run", "train", "eval")}
if tiny["run"]:
    tiny["run"].pop("config", None)
summary = {
    "environment": read(out / "environment.json"),
    "train_throughput_gpu": read(out / "train_throughput_gpu.json"),
    "eval_throughput_gpu": read(out / "eval_throughput_gpu.json"),
    "tiny_gemma2_run": tiny,
    "estimate": read(out / "estimate.json"),
}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print("wrote", out / "gpu_check.json", {k: v is not None for k, v in summary.items()})
PY
log "done"
