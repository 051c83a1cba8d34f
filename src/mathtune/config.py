"""One typed config: YAML file + `key.sub=value` overrides, validated so that a wrong key fails with its name.

The defaults are the reference study (LoRA on google/gemma-2-9b, GSM8K); configs/ holds smaller ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mathtune.errors import MathtuneError


class _Strict(BaseModel):
    # extra="forbid": an unknown key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    # A hub id, a local folder, or an embedded name: smollm2-135m-instruct, gemma3-270m, tiny-random-llama.
    name: str = "google/gemma-2-9b"
    # Weights dtype for loading. float32 on CPU; bfloat16 on GPUs.
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # Gemma-2 needs eager attention for its attention-logit soft-capping.
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = "eager"
    trust_remote_code: bool = False
    # Prompt format: "auto" uses the tokenizer's chat template when it has one, else the plain template.
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    plain_template: str = "Question: {question}\nAnswer:"
    # Appended to the question in the chat format so the model knows how to end its answer.
    chat_instruction: str = "Solve the problem step by step. End with a final line of the form '#### <number>'."

    @field_validator("plain_template")
    @classmethod
    def _has_question(cls, v: str) -> str:
        if "{question}" not in v:
            raise ValueError("must contain {question}")
        return v


class DataConfig(_Strict):
    # Where training rows come from: the hub, local JSONL files in GSM8K's format, or generated offline.
    source: Literal["hub", "jsonl", "gsm_symbolic"] = "hub"
    hub_id: str = "openai/gsm8k"
    hub_config: Optional[str] = "main"  # null for a local folder passed as hub_id
    # jsonl: a folder holding train.jsonl and test.jsonl (GSM8K's original file names).
    path: Optional[str] = None
    # Where the test split comes from; "same" means data.source (gsm_symbolic has no test split).
    test_source: Literal["same", "hub", "jsonl"] = "same"
    test_path: Optional[str] = None
    symbolic_size: int = Field(1000, gt=0)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42
    # Cap on rows after the split (None = all): lets a CPU demo use a slice of the same split.
    max_train_rows: Optional[int] = Field(None, gt=0)
    max_val_rows: Optional[int] = Field(None, gt=0)
    # Drop GSM8K's calculator annotations <<a*b=c>> from the training answers.
    strip_calculator: bool = False

    @field_validator("path", "test_path")
    @classmethod
    def _absolute(cls, v: Optional[str]) -> Optional[str]:
        # Resolved against the working directory once, so the run's saved config works from anywhere.
        return str(Path(v).expanduser().resolve()) if v else v


class LoraSettings(_Strict):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: str = "all-linear"


class TrainConfig(_Strict):
    epochs: float = Field(3, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=8)
    lr_scheduler: str = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = Field(-1, ge=-1)  # -1: run the epochs
    logging_steps: int = Field(10, gt=0)
    eval_steps: int = Field(50, gt=0)  # validation loss, early stopping and checkpoints share this interval
    early_stopping_patience: int = Field(5, ge=0)  # 0 turns early stopping off
    save_total_limit: int = Field(2, gt=0)
    bf16: bool = True  # mixed precision (autocast); the weights stay in model.dtype
    gradient_checkpointing: bool = False
    # How a batch of train.batch_size rows reaches the model (the optimizer step and the loss are the same):
    #   padded: one tensor padded to the longest row (TRL's default);
    #   per_sequence: one row at a time, gradients accumulated over the batch; no padding and no mask;
    #   packed: train.rows_per_forward rows at a time, concatenated into one sequence, attention run per row
    #     (train/packing.py): big matrix products, no padding, no mask (the CPU default:
    #     bench/results/train_throughput_cpu.json);
    #   padding_free: TRL's padding_free, the rows concatenated, attention kept per row from position_ids by
    #     the attention implementation itself (flash_attention_2 on a GPU; with SDPA a dense block mask is built);
    #   auto: packed on a CPU with SDPA attention, per_sequence with eager attention (Gemma-2's soft-capping);
    #     padding_free with flash_attention_2, else padded.
    batching: Literal["auto", "padded", "per_sequence", "packed", "padding_free"] = "auto"
    # packed: rows per forward pass (divides batch_size). None = the whole batch: 8 GSM8K rows, ~2,000 tokens, ran
    # fastest on 2 CPU cores once less was kept for the backward (bench/results/train_throughput_cpu.json); memory
    # grows with it.
    rows_per_forward: Optional[int] = Field(None, gt=0)
    # packed on a CPU: each forward's tokens, and each row's attention, padded to a multiple of this many tokens
    # (train/packing.py). Real tokens never attend to the padding, which carries no loss and is not counted, so the
    # loss is the same; the shapes then repeat, and the kernel caches the CPU keeps for the life of the process, an
    # entry per shape (oneDNN's, ideep's, ATen's brgemm), stop growing. None = no padding.
    pad_to_multiple_of: Optional[int] = Field(None, gt=0)
    compile: bool = False  # torch.compile the model (TrainingArguments.torch_compile)
    # Liger's Triton kernels for the model's layers (RMSNorm, GeGLU/SwiGLU, RoPE), through TRL's use_liger_kernel:
    # x1.11 tokens/s and 4 GB less on the Gemma-2-9B shape on an H200 (bench/results/train_throughput_gpu.json).
    # Needs a CUDA GPU and `pip install liger-kernel`; refused otherwise.
    liger_kernel: bool = False
    seed: int = 42
    # Experiment trackers the Trainer reports to (train/trackers.py): tensorboard (RUN_DIR/tensorboard), mlflow
    # (RUN_DIR/mlruns, unless MLFLOW_TRACKING_URI is set), wandb, trackio.
    report_to: list[Literal["none", "tensorboard", "mlflow", "wandb", "trackio"]] = Field(
        default_factory=lambda: ["none"]
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, v):
        return [v] if isinstance(v, str) else v


class EvalConfig(_Strict):
    # auto: the format the model was fine-tuned in (chat or plain); or few-shot / few-shot-cot (lm-eval's).
    protocol: Literal["auto", "chat", "plain", "few-shot", "few-shot-cot"] = "auto"
    limit: Optional[int] = Field(None, gt=0)  # first N test questions; None = the whole test split
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(384, gt=0)
    base: bool = True  # evaluate the base model too, under the same protocol
    # Weights dtype for generation: "model" keeps model.dtype. On SmolLM2/CPU bfloat16 generated 2x faster
    # than float32 but changed 42 of 64 greedy answers (bench/results/eval_throughput.json), and its answers depend
    # on the batch they are decoded in (bench/results/eval_full_test_split_bf16.json): opt-in only.
    dtype: Literal["model", "float32", "bfloat16", "float16"] = "model"
    # Float32 linear layers on CPU (evaluate/cpu_linear.py): torch sends them to MKL, whose kernels on AMD CPUs ran
    # SmolLM2's decode 1.7x slower than oneDNN's, in the same float32. auto: oneDNN where it applies (float32 weights
    # on a CPU, torch built with oneDNN), else torch's own; onednn: the same, refused where it does not apply; aten:
    # torch's own. Not used by vllm.
    cpu_linear: Literal["auto", "onednn", "aten"] = "auto"
    # How answers are decoded (evaluate/decoder.py, the one seam every engine sits behind):
    #   compact: mathtune's greedy loop (evaluate/compact.py): prompts prefilled in chunks of similar length, a
    #     preallocated cache read only up to its filled length, finished answers dropped from the batch;
    #   static / dynamic: transformers' model.generate with a preallocated or a growing KV cache (the dynamic cache
    #     grows by concatenation every step, 80% of a decode step on SmolLM2/CPU at batch 64);
    #   vllm: vLLM's engine (optional; a GPU machine with vllm installed), same prompts and grader.
    # Sampling (eval.samples > 1) and sliding-window models use static under compact.
    decoder: Literal["compact", "static", "dynamic", "vllm"] = "compact"
    # The GSM8K paper's calculator (evaluate/calculator.py): after `<<EXPR=`, the result and `>>` are forced. With
    # it, `mathtune run` also evaluates each model with the calculator: predictions/NAME-calculator.jsonl.
    calculator: bool = False
    # maj@k and pass@k: k sampled answers per question besides the greedy one (1 = greedy only).
    samples: int = Field(1, ge=1)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 1234

    @model_validator(mode="after")
    def _calculator_decodes_greedily(self) -> "EvalConfig":
        if self.calculator and self.decoder in ("vllm", "dynamic"):
            raise ValueError("eval.calculator: needs eval.decoder compact or static (it forces tokens in their loop)")
        if self.cpu_linear == "onednn" and self.decoder == "vllm":
            raise ValueError("eval.cpu_linear: onednn is for transformers models on a CPU, not eval.decoder vllm")
        return self

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict):
            for old in ("kv_cache", "backend"):
                if old in data:
                    raise ValueError(f"eval.{old} was renamed: use eval.decoder (compact, static, dynamic or vllm)")
        return data


# On-demand $/GPU-hour: the midpoints of the "specialty cloud" ranges in Mercatus AI, "Cloud GPU pricing"
# (https://www.mercatus-ai.com/blog/cloud-gpu-pricing, May 2026). Prices move: edit the table, override an
# entry (cost.prices.H100=2.49) or set a flat cost.price_per_hour.
DEFAULT_PRICES = {"A100": 1.30, "H100": 3.00, "H200": 4.00}


class CostConfig(_Strict):
    # $/hour per GPU, the key matched as a substring of the GPU's name; entries given here update the table.
    prices: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    price_source: str = "Mercatus AI cloud GPU pricing, specialty-cloud on-demand midpoints"
    price_date: str = "2026-05"
    # A flat price per GPU-hour that overrides the table (your own cloud's rate); a CPU run costs $0 of GPU.
    price_per_hour: Optional[float] = Field(None, ge=0)

    @field_validator("prices", mode="before")
    @classmethod
    def _merge_prices(cls, v):
        return {**DEFAULT_PRICES, **v} if isinstance(v, dict) else v

    @field_validator("prices")
    @classmethod
    def _non_negative(cls, v):
        bad = [k for k, p in v.items() if p < 0]
        if bad:
            raise ValueError(f"price of {bad[0]} must be >= 0")
        return v


class RuntimeConfig(_Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = Field(None, gt=0)  # torch CPU threads; None = all cores
    # `mathtune run` trains in a spawned process (isolate.py), so that the kernel caches training leaves (~0.4 GB
    # on the demo) are not the evaluation's; false trains in the run's own process and saves that process's start
    # (a fresh interpreter importing torch and transformers: ~6 s). Under `accelerate launch` training is in-process.
    train_in_own_process: bool = True


class Config(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraSettings = LoraSettings()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    cost: CostConfig = CostConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _check_sources(self) -> "Config":
        t = self.train
        if t.rows_per_forward is not None and t.batch_size % t.rows_per_forward:
            raise ValueError(f"train.rows_per_forward: must divide train.batch_size ({t.batch_size})")
        if t.batching == "packed" and self.model.attn_implementation not in (None, "sdpa"):
            raise ValueError("train.batching: packed runs SDPA per row; it needs model.attn_implementation: sdpa")
        if t.pad_to_multiple_of is not None and t.batching not in ("auto", "packed"):
            raise ValueError(f"train.pad_to_multiple_of: pads packed rows; train.batching is {t.batching}")
        d = self.data
        if d.source == "jsonl" and not d.path:
            raise ValueError("data.path: required when data.source is jsonl")
        test_source = d.source if d.test_source == "same" else d.test_source
        if test_source == "gsm_symbolic":
            raise ValueError("data.test_source: gsm_symbolic has no test split; set it to hub or jsonl")
        if test_source == "jsonl" and not (d.test_path or d.path):
            raise ValueError("data.test_path: required when the test split comes from jsonl")
        return self


def _format_error(e: ValidationError, origin: str) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{key}: {msg}{got}" if key else f"{msg}{got}")
    return f"{origin}: " + "; ".join(parts)


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[list[str], object]:
    """`train.epochs=1` -> (["train", "epochs"], 1). The value is read as YAML, so 1e-4, true, null work."""
    if "=" not in text:
        raise MathtuneError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        raise MathtuneError(f"override {text!r}: {key!r} is not a key like train.epochs")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _EXPONENT.match(value):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; people write learning rates so
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise MathtuneError(f"override {text!r}: {p} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def build_config(raw: dict, origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise MathtuneError(_format_error(e, origin)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    origin = "config"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise MathtuneError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise MathtuneError(f"{path}{where}: YAML syntax error ({getattr(e, 'problem', e)})") from None
        except UnicodeDecodeError:
            raise MathtuneError(f"{path}: not UTF-8 text") from None
        if not isinstance(raw, dict):
            raise MathtuneError(f"{path}: expected a mapping of sections (model, data, train, ...)")
    raw = apply_overrides(raw, list(overrides))
    return build_config(raw, origin)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_hash(cfg: Config) -> str:
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 1}} -> {"train.epochs": 1}: a config (or any nested dict) as dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_keys(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs (to refuse resuming with another config)."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    out = []
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section][key]:
                out.append(f"{section}.{key}")
    return out


def generation_dtype(cfg: Config) -> str:
    """The dtype answers are generated in: eval.dtype, or model.dtype where eval.dtype is "model"."""
    return cfg.model.dtype if cfg.eval.dtype == "model" else cfg.eval.dtype
