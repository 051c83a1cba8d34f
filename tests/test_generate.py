"""The compact greedy loop (eval.kv_cache: compact) answers exactly as model.generate's greedy search does."""

from types import SimpleNamespace

import pytest
from transformers import Gemma2Config, LlamaConfig

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.evaluate import compact
from mathtune.evaluate.generate import generate
from mathtune.evaluate.protocols import encode_prompt, get_protocol, pick_shots
from mathtune.models import load_model, load_tokenizer

from conftest import ROOT


def _answers(model, tok, prompts, kv_cache, stop=(), max_new=96):
    got = [None] * len(prompts)
    for i, [r] in generate(model, tok, prompts, len(prompts), max_new, stop, kv_cache, kv_cache=kv_cache):
        got[i] = r
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
