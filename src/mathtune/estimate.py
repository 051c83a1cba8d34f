"""Cost before a run: the configured data's tokens x epochs over a measured throughput -> hours and dollars.

Training: tokens of the training rows (prompt and answer, in the format they are trained in) x epochs, plus the
validation passes (a forward pass costs about a third of a training step), over tokens/s. Evaluation: the test
questions' generated tokens over generated tokens/s, the base model too when eval.base. A model's answers are taken
as long as the full study measured them against the reference answers (ANSWER_LENGTH: both capped at
eval.max_new_tokens), so a chatty base model is not costed at the references' length.

Throughput comes from the committed benchmarks where one matches the device (THROUGHPUT, checked against
bench/results by a test); a model of another size is scaled by its parameter count (tokens/s ~ 1/N at a fixed
share of peak). A GPU is costed from FLOPs: LoRA training ~ 4N FLOPs per token (forward 2N, backward through
the activations 2N, no weight gradients) at the share of the GPU's dense bf16 peak measured on an H200
(MEASURED_MFU; the H100 at the same figure), or on another GPU at an assumed share, capped at the H200's
measured tokens/s; decoding reads every weight once per step, so a step takes 2N bytes over the memory bandwidth.
Every assumption is printed with the figure it produced.
"""

from __future__ import annotations

import math

from mathtune.config import generation_dtype
from mathtune.cost import hourly_price

# Measured on this project's benchmarks (tokens/s on the embedded SmolLM2-135M-Instruct, 2 CPU cores).
THROUGHPUT = {
    "cpu": {
        "params": 134_515_008,
        "train_tokens_per_s": 358.78,
        "train_source": "bench/results/train_throughput_cpu.json (mathtune_tokens_per_s)",
        # Generation by the dtype it runs in (eval.dtype, or model.dtype): bfloat16 uses the CPU's AMX units.
        # float32: the whole test split at batch 256, its linear layers through oneDNN (eval.cpu_linear), on an AMD
        # EPYC (the sweep before it: 391 tokens/s at batch 64); the full study's base evaluation, through MKL on an
        # Intel Xeon, ran at 227.
        "eval_tokens_per_s": {"float32": 496.73, "bfloat16": 401.41},
        "eval_source": {
            "float32": "bench/results/eval_full_test_split.json (tokens_per_s, batch 256)",
            "bfloat16": "bench/results/eval_full_test_split_bf16.json (tokens_per_s)",
        },
    },
}
# Generated tokens / reference answer tokens (each capped at 256 new tokens), over the 1,319 test questions of
# examples/full-study/predictions (SmolLM2-135M-Instruct, chat protocol): base models write longer answers than
# GSM8K's (and hit the limit more often); fine-tuning brings them closer. The demo measured 1.62 and 1.33.
ANSWER_LENGTH = {"base": 1.656, "finetuned": 1.251}
ANSWER_LENGTH_SOURCE = "examples/full-study/predictions"
# Dense bf16 peak FLOP/s and memory bandwidth (bytes/s) of the GPUs in the price table (vendor data sheets).
GPUS = {
    "H100": {"peak_flops": 989e12, "bandwidth": 3.35e12},
    "H200": {"peak_flops": 989e12, "bandwidth": 4.8e12},
    "A100": {"peak_flops": 312e12, "bandwidth": 2.0e12},
}
# Share of peak mathtune's LoRA step reached, measured by bench/gpu_check.sh on an H200 (mathtune's path on the
# Gemma-2-9B shape, random weights, batch 4 of GSM8K-length rows). The step is bound by kernel launches, not by the
# chip's arithmetic (bench/results/gpu_probe.json: the GPU busy 31% of the step), so the H100, the same chip at the
# same peak, is costed at the H200's figure. A test checks it against the committed result.
MEASURED_MFU = {"H200": 0.0481, "H100": 0.0481}
MEASURED_MFU_SOURCE = "bench/results/train_throughput_gpu.json: NVIDIA H200, Gemma-2-9B shape, batch 4"
ASSUMED_MFU = 0.35  # share of peak a LoRA step reaches on a GPU with no measurement (an assumption, printed)
ASSUMED_DECODE_EFFICIENCY = 0.5  # share of memory bandwidth a batched decode step reaches (an assumption, printed)
# Parameter counts of hub models the estimate may meet without their config.json at hand.
KNOWN_PARAMS = {"google/gemma-2-9b": 9_241_705_984, "google/gemma-2-2b": 2_614_341_888}


def count_params(model_name: str) -> int:
    """Parameters of a model, from its config on the meta device (no weights read), else KNOWN_PARAMS."""
    if model_name in KNOWN_PARAMS:
        return KNOWN_PARAMS[model_name]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathtune.models import ensure_local

    config = AutoConfig.from_pretrained(ensure_local(model_name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_tokens(cfg, rows: dict[str, list[dict]], tokenizer) -> dict:
    """Training tokens (prompt + answer, as trained) of train and val; test's reference answers in tokens."""
    from mathtune.data.format import prompt_format, sft_example

    fmt = prompt_format(cfg.model, tokenizer)

    def n(text_or_messages) -> int:
        if isinstance(text_or_messages, list):
            return len(tokenizer.apply_chat_template(text_or_messages, tokenize=True, return_dict=True)["input_ids"])
        return len(tokenizer(text_or_messages, add_special_tokens=False)["input_ids"])

    def trained(r):  # the plain format gets an EOS token appended
        ex = sft_example(r, fmt, cfg.model)
        return min(n(ex["prompt"] + ex["completion"]) + (fmt == "plain"), cfg.train.max_length)

    answer_tokens = [min(n(r["answer"]) + 1, cfg.eval.max_new_tokens) for r in rows["test"]]
    return {
        "train_rows": len(rows["train"]),
        "train": sum(map(trained, rows["train"])),
        "val": sum(map(trained, rows["val"])),
        "test_reference": sum(answer_tokens),
        "test_questions": len(rows["test"]),
    }


def _steps_per_epoch(cfg, n_train: int) -> int:
    return max(1, math.ceil(n_train / (cfg.train.batch_size * cfg.train.grad_accum)))


def train_steps(cfg, n_train: int) -> tuple[int, int]:
    """(optimizer steps, validation passes) the config asks for."""
    t = cfg.train
    steps = t.max_steps if t.max_steps > 0 else math.ceil(_steps_per_epoch(cfg, n_train) * t.epochs)
    return steps, steps // t.eval_steps + 1  # +1: the base model's validation loss at step 0


def gpu_key(device: str) -> str:
    """The GPUS entry a device name matches ("NVIDIA H100 80GB HBM3" -> "H100"); ValueError when none does."""
    key = next((k for k in GPUS if k.lower() in device.lower()), None)
    if key is None:
        raise ValueError(f"no figures for GPU {device!r}; known: {', '.join(GPUS)}")
    return key


def throughput(device: str, params: int, mfu: float | None = None, eval_dtype: str = "float32") -> dict:
    """tokens/s for training and generation on `device` ("cpu" or a GPU name) for a model of `params`; on a GPU the
    training rate is the FLOP model at `mfu` (measured by bench/train_throughput_gpu.py), else at MEASURED_MFU where
    the GPU has one, else at ASSUMED_MFU. On a CPU, generation at the rate measured in `eval_dtype` (float16,
    unmeasured there, at float32's)."""
    if device == "cpu":
        t = THROUGHPUT["cpu"]
        scale = t["params"] / params
        measured = eval_dtype if eval_dtype in t["eval_tokens_per_s"] else "float32"
        return {
            "train": t["train_tokens_per_s"] * scale,
            "eval": t["eval_tokens_per_s"][measured] * scale,
            "basis": f"measured on SmolLM2-135M ({t['train_source']}; generation in {measured}: "
            f"{t['eval_source'][measured]}), scaled by {t['params'] / 1e6:.0f}M / {params / 1e6:.0f}M parameters",
        }
    key = gpu_key(device)
    g = GPUS[key]
    if mfu:
        share, how = mfu, "measured: --mfu"
    elif key in MEASURED_MFU:
        share, how = MEASURED_MFU[key], f"measured: {MEASURED_MFU_SOURCE}"
    else:
        # No measurement here: the assumed share, but no faster than the H200 measured, since that step waited on
        # kernel launches, which a GPU of a lower peak does not shorten.
        ceiling = MEASURED_MFU["H200"] * GPUS["H200"]["peak_flops"] / g["peak_flops"]
        share = min(ASSUMED_MFU, ceiling)
        how = f"assumed: no measurement on this GPU; {ASSUMED_MFU:.0%}, at most the H200's measured tokens/s"
    train = g["peak_flops"] * share / (4 * params)
    # One decode step reads 2N bytes (bf16) and yields one token per sequence in the batch.
    return {
        "train": train,
        "eval_step_seconds": 2 * params / (g["bandwidth"] * ASSUMED_DECODE_EFFICIENCY),
        "basis": f"{key}: {g['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16 at {share:.1%} MFU for training ({how}; "
        f"4N FLOPs per token); decoding at an assumed {ASSUMED_DECODE_EFFICIENCY:.0%} of "
        f"{g['bandwidth'] / 1e12:.2f} TB/s (2N bytes per step)",
    }


def estimate(cfg, tokens: dict, params: int, device: str, mfu: float | None = None) -> dict:
    """Predicted seconds and dollars for training and evaluation on `device`."""
    tp = throughput(device, params, mfu, generation_dtype(cfg))
    steps, evals = train_steps(cfg, tokens["train_rows"])
    epochs = steps / _steps_per_epoch(cfg, tokens["train_rows"])
    train_s = (tokens["train"] * epochs + tokens["val"] * evals / 3) / tp["train"]
    models = ("base", "finetuned") if cfg.eval.base else ("finetuned",)
    most = tokens["test_questions"] * cfg.eval.max_new_tokens
    generated = {m: round(min(ANSWER_LENGTH[m] * tokens["test_reference"], most)) for m in models}
    if "eval" in tp:
        eval_s = sum(generated.values()) / tp["eval"]
    else:  # a batch decodes until its longest answer ends: max_new_tokens steps when any is cut
        batches = math.ceil(tokens["test_questions"] / cfg.eval.batch_size)
        eval_s = len(models) * batches * cfg.eval.max_new_tokens * tp["eval_step_seconds"]
    price = hourly_price(cfg.cost.model_dump(), None if device == "cpu" else device)
    hours = (train_s + eval_s) / 3600
    return {
        "device": device,
        "params": params,
        "tokens": tokens,
        "generated_tokens": generated,
        "steps": steps,
        "validation_passes": evals,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "gpu_hours": 0.0 if device == "cpu" else round(hours, 4),
        "price_per_hour": price["price_per_hour"],
        "dollars": round(hours * price["price_per_hour"], 2),
        "basis": f"{tp['basis']}; answers as long as the full study's ({ANSWER_LENGTH_SOURCE}: "
        f"base {ANSWER_LENGTH['base']}x, fine-tuned {ANSWER_LENGTH['finetuned']}x the reference answers)",
    }


def tokenizer_or_proxy(model_cfg):
    """The model's own tokenizer, or (unreachable: a gated or offline hub id) SmolLM2's as a stated proxy."""
    from mathtune.errors import MathtuneError
    from mathtune.models import SMOLLM2, load_tokenizer

    try:
        return load_tokenizer(model_cfg), None
    except MathtuneError as e:
        proxy = model_cfg.model_copy(update={"name": SMOLLM2})
        return load_tokenizer(proxy), f"tokens counted with {SMOLLM2}'s tokenizer as a proxy ({e})"


def estimate_run(cfg, rows: dict[str, list[dict]], device: str, mfu: float | None = None) -> dict:
    """The whole estimate for a config and its rows on `device`."""
    tokenizer, proxy = tokenizer_or_proxy(cfg.model)
    out = estimate(cfg, count_tokens(cfg, rows, tokenizer), count_params(cfg.model.name), device, mfu)
    out["tokenizer"] = proxy or f"{cfg.model.name}'s own"
    return out


def format_estimate(e: dict) -> str:
    t = e["tokens"]
    lines = [
        f"device: {e['device']}; model: {e['params'] / 1e9:.2f}B parameters; tokenizer: {e['tokenizer']}",
        f"data: {t['train_rows']} training rows, {t['train']:,} tokens per epoch; {t['val']:,} validation tokens; "
        f"{t['test_questions']} test questions, reference answers {t['test_reference']:,} tokens; expected "
        + ", ".join(f"{m} ~{n:,}" for m, n in e["generated_tokens"].items())
        + " generated tokens",
        f"training: {e['steps']} steps, {e['validation_passes']} validation passes: {e['train_seconds'] / 3600:.2f} h",
        f"evaluation: {e['eval_seconds'] / 3600:.2f} h",
        f"cost: {e['gpu_hours']:.2f} GPU-hours x ${e['price_per_hour']:.2f}/h = ${e['dollars']:.2f}"
        if e["device"] != "cpu"
        else "cost: $0 of GPU (a CPU run)",
        f"basis: {e['basis']}",
    ]
    return "\n".join(lines)
