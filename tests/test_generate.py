"""The compact greedy loop (eval.decoder: compact) answers exactly as model.generate's greedy search does."""

from types import SimpleNamespace

import pytest
from transformers import Gemma2Config, LlamaConfig

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.evaluate import compact
from mathtune.evaluate.decoder import Decoding, decode
from mathtune.evaluate.protocols import encode_prompt, get_protocol, pick_shots
from mathtune.models import load_model, load_tokenizer

from conftest import ROOT


def _answers(model, tok, prompts, decoder, stop=(), max_new=96):
    got = [None] * len(prompts)
    ids = [f"q-{i}" for i in range(len(prompts))]
    for i, [r] in decode(decoder, model, tok, prompts, ids, Decoding(max_new, tuple(stop)), len(prompts), decoder):
        got[i] = (r.text, r.tokens, r.truncated)  # calculator_calls are tested in test_calculator.py
    return got


@pytest.fixture(scope="module")
def smollm2():
    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml")
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "left"
    return cfg, tok, load_model(cfg.model, "cpu").eval()


@pytest.mark.slow
def test_compact_is_generate_greedy(smollm2, gsm8k, monkeypatch):
    """Real questions of different lengths (chunked prefill), answers that end at different steps (rows dropped at
    the first end: the threshold is raised so that every drop is exercised), and some cut by the token limit."""
    cfg, tok, model = smollm2
    monkeypatch.setattr(compact, "PREFILL_CHUNK", 3)
    monkeypatch.setattr(compact, "DROP_WHEN_ALIVE", 1.0)
    rows = from_jsonl(gsm8k, "test")[:7]
    prompts = [encode_prompt(tok, get_protocol("chat"), r["question"], [], cfg.model) for r in rows]
    static = _answers(model, tok, prompts, "static", max_new=192)
    assert len({len(p) for p in prompts}) > 3 and len({n for _, n, _ in static}) > 1
    assert _answers(model, tok, prompts, "compact", max_new=192) == static  # text, generated tokens, truncated


@pytest.mark.slow
def test_compact_stops_on_stop_strings(smollm2, gsm8k):
    """lm-eval's few-shot protocol ends answers at "Question:" or a blank line: the same texts as generate's
    StopStringCriteria. The token counts may differ by the token that completes the stop string."""
    cfg, tok, model = smollm2
    protocol = get_protocol("few-shot")
    shots = pick_shots(protocol, from_jsonl(gsm8k, "train"))
    prompts = [encode_prompt(tok, protocol, r["question"], shots, cfg.model) for r in from_jsonl(gsm8k, "test")[:3]]
    static = _answers(model, tok, prompts, "static", protocol.stop, 64)
    got = _answers(model, tok, prompts, "compact", protocol.stop, 64)
    assert [(t, cut) for t, _, cut in got] == [(t, cut) for t, _, cut in static]
    assert not all(cut for _, _, cut in got)  # some answers did stop on a stop string


def test_sliding_window_models_use_the_static_cache():
    assert compact.supports(SimpleNamespace(config=LlamaConfig(num_hidden_layers=2)))
    assert not compact.supports(SimpleNamespace(config=Gemma2Config(num_hidden_layers=2)))


def test_transformers_internals_the_compact_loop_uses():
    """compact.py builds on transformers' StaticLayer and Cache(layers=...). If an upgrade renames or reshapes them,
    this fails here, by name, instead of the evaluation producing wrong answers."""
    import torch
    from transformers.cache_utils import Cache, StaticLayer

    layer = compact.PrefixLayer(max_cache_len=8)
    assert isinstance(layer, StaticLayer) and not layer.is_initialized
    k = torch.zeros(2, 1, 3, 4)
    layer.lazy_initialization(k, k)
    assert layer.keys.shape == (2, 1, 8, 4) and layer.values.shape == (2, 1, 8, 4)
    assert int(layer.cumulative_length) == 0
    keys, values = layer.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4), {"cache_position": torch.arange(3)})
    assert int(layer.cumulative_length) == 3 and keys.shape[2] == 3  # attention reads the filled prefix only
    assert layer.get_mask_sizes(1) == (4, 0)
    layer.keep_rows(torch.tensor([1]))
    assert layer.keys.shape[0] == 1
    cache = Cache(layers=[compact.PrefixLayer(max_cache_len=4) for _ in range(2)])
    assert len(cache.layers) == 2 and cache.get_seq_length() == 0


def test_the_cache_goes_by_the_name_the_models_forward_takes():
    """transformers renamed the forward's past_key_values to cache; 5.17 (the GPU image's) ignores `cache` in its
    kwargs and fills nothing, so the compact loop failed there (bench/gpu_check.sh found it). PEFT's wrapper is looked
    through."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mathtune.models import TINY, ensure_local

    class Old(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None, **kwargs):
            return None

    import inspect

    import transformers
    from packaging.version import Version

    cache = compact._cache(SimpleNamespace(config=LlamaConfig(num_hidden_layers=2)), 8)
    assert compact._with_cache(Old(), cache) == {"past_key_values": cache}
    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY))
    [name] = compact._with_cache(model, cache)
    assert name in inspect.signature(type(model).forward).parameters
    assert name == "cache" or Version(transformers.__version__) < Version("5.24")  # the pinned versions: `cache`
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert list(compact._with_cache(wrapped, cache)) == [name]
    # The cache the forward was given is the one it filled: the prefix's keys, one row, every position.
    [(keys, values), *_] = compact._prefix_cache(model.eval(), list(range(3, 70)))
    assert keys.shape[0] == 1 and keys.shape[2] == 67 and keys.abs().sum() > 0


def test_shared_prefix_is_computed_once_and_answers_the_same(monkeypatch):
    """Prompts that share a long prefix (a few-shot protocol's examples): the compact loop computes the prefix once
    and places it in every row; the answers are model.generate's, token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathtune.models import TINY, ensure_local

    model = AutoModelForCausalLM.from_pretrained(ensure_local(TINY)).eval()
    tok = AutoTokenizer.from_pretrained(ensure_local(TINY))
    tok.padding_side = "left"
    torch.manual_seed(0)
    prefix = torch.randint(10, 5000, (120,)).tolist()
    prompts = [prefix + torch.randint(10, 5000, (n,)).tolist() for n in (5, 17, 9, 30, 1)]
    assert compact.shared_prefix(prompts) == 120
    calls = []
    real = compact._prefix_cache
    monkeypatch.setattr(compact, "_prefix_cache", lambda m, p: calls.append(len(p)) or real(m, p))
    monkeypatch.setattr(compact, "PREFILL_CHUNK", 2)
    got = _answers(model, tok, prompts, "compact", max_new=12)
    assert calls == [120]  # once, for every batch
    assert got == _answers(model, tok, prompts, "static", max_new=12)
    assert compact.shared_prefix([p[:40] for p in prompts]) == 0  # below SHARED_PREFIX_MIN
