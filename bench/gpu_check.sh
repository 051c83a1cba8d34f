#!/usr/bin/env bash
# The GPU path, checked in one prepared run (make gpu-check) on a machine with one NVIDIA GPU (H100 or H200) whose
# image has Python, torch, transformers, peft, accelerate, safetensors, scipy, matplotlib, tqdm and click, and no
# network. What mathtune needs beyond that comes from $WHEELS (`make gpu-wheels` fills it on a CPU machine: the
# wheels, SmolLM2's tokenizer files, 64 GSM8K rows per split), installed with --no-index --no-deps so the image's
# torch stays. Everything is written under $OUT; about 8 minutes on an H100.
#   (a) LoRA training throughput on the Gemma-2-9B shape (random weights, bf16, r=8 all-linear, sequence ~GSM8K):
#       plain TRL against mathtune's path, MFU on the documented 4N + attention count -> train_throughput_gpu.json
#   (b) a 2-layer random Gemma-2 (soft-capping, sliding window, eager) through every stage of `mathtune run`, bf16
#   (c) generation on a ~2B-shape random model: the compact decoder against model.generate, same batch and answers
#   (d) `mathtune estimate` for configs/gemma2-9b-gsm8k.yaml at the MFU measured in (a)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
WHEELS="${WHEELS:-.gpu-wheels}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 MATHTUNE_CACHE="$PWD/$WHEELS/cache"
GSM8K="$PWD/$WHEELS/gsm8k"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$OUT/log.txt"; }

log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels (no index, no deps: the image's torch stays)"
python -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl 2>&1 | tee -a "$OUT/log.txt"
python -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'gpu', torch.cuda.get_device_name(0))" | tee -a "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/log.txt" || true

log "(a) training throughput, Gemma-2-9B shape"
timeout 300 python bench/train_throughput_gpu.py --gsm8k "$GSM8K" --steps 12 --warmup 3 \
    --out "$OUT/train_throughput_gpu.json" 2>&1 | tail -n 20 | tee -a "$OUT/log.txt" || log "(a) failed"

log "(b) tiny Gemma-2 through every stage on CUDA, bf16"
timeout 180 python -m mathtune.cli run --config configs/tiny-gemma2.yaml --out "$OUT/tiny-gemma2" \
    data.path="$GSM8K" runtime.device=cuda model.dtype=bfloat16 train.bf16=true 2>&1 | tail -n 20 \
    | tee -a "$OUT/log.txt" || log "(b) failed"

log "(c) generation, ~2B shape: compact against model.generate"
timeout 180 python bench/eval_throughput_gpu.py --gsm8k "$GSM8K" --out "$OUT/eval_throughput_gpu.json" 2>&1 \
    | tail -n 20 | tee -a "$OUT/log.txt" || log "(c) failed"

log "(d) estimate of the reference study at the measured MFU"
MFU=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['mfu'])" "$OUT/train_throughput_gpu.json" 2>/dev/null || echo "")
timeout 120 python -m mathtune.cli estimate --config configs/gemma2-9b-gsm8k.yaml --gpu "$(python -c 'import torch; print(torch.cuda.get_device_name(0))')" \
    ${MFU:+--mfu "$MFU"} --json "$OUT/estimate.json" data.source=jsonl data.path="$GSM8K" 2>&1 | tee -a "$OUT/log.txt" \
    || log "(d) failed"

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
read = lambda name: json.loads((out / name).read_text()) if (out / name).is_file() else None
summary = {"train_throughput_gpu": read("train_throughput_gpu.json"), "eval_throughput_gpu": read("eval_throughput_gpu.json"),
           "tiny_gemma2_run": read("tiny-gemma2/eval.json"), "estimate": read("estimate.json")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print("wrote", out / "gpu_check.json")
PY
log "done"
