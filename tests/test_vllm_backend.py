"""eval.decoder=vllm without a GPU: a stand-in `vllm` module records what mathtune asks of it, and answers.

What is checked is mathtune's side of the contract: the same token-id prompts as the transformers path,
greedy = temperature 0, the protocol's stop strings, k samples as n, the adapter as a LoRARequest, and the
answers going through the same grader into the same predictions file.
"""

import json
import sys
import types

import pytest

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.evaluate.protocols import PROTOCOLS, encode_prompt, pick_shots
from mathtune.evaluate.stage import eval_standalone
from mathtune.io import read_jsonl
from mathtune.models import load_tokenizer

from conftest import ROOT


@pytest.fixture
def fake_vllm(monkeypatch):
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.path = path

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, params, lora_request=None):
            calls.update(prompts=prompts, params=[p.kw for p in params], lora=lora_request)
            done = types.SimpleNamespace
            return [
                done(
                    outputs=[
                        done(
                            text=f"So 2 + 2 = 4.\n#### {i}",
                            token_ids=[1] * (5 + i),
                            finish_reason="length" if i == 0 else "stop",
                        )
                        for _ in range(p.kw["n"])
                    ]
                )
                for i, p in enumerate(params)
            ]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)
    return calls


def test_vllm_backend_same_prompts_same_grader(fake_vllm, tmp_path, gsm8k):
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"data.path={gsm8k}", "eval.decoder=vllm", "eval.limit=3", "eval.protocol=few-shot", "eval.max_new_tokens=32"],
    )
    out = tmp_path / "p.jsonl"
    eval_standalone(cfg, None, "test", out)
    rows = read_jsonl(out)
    assert [r["completion"] for r in rows] == [f"So 2 + 2 = 4.\n#### {i}" for i in range(3)]
    assert [r["truncated"] for r in rows] == [True, False, False]
    assert [r["extracted"] for r in rows] == ["0", "1", "2"] and all(r["protocol"] == "few-shot" for r in rows)
    p = fake_vllm["params"][0]
    assert p["temperature"] == 0.0 and p["n"] == 1 and p["max_tokens"] == 32
    assert p["stop"] == list(PROTOCOLS["few-shot"].stop)
    assert fake_vllm["llm"]["trust_remote_code"] is False and "enable_lora" not in fake_vllm["llm"]
    assert fake_vllm["llm"]["dtype"] == cfg.model.dtype  # model.dtype, not vLLM's "auto"
    # The very token ids the transformers path would feed the model.
    tok = load_tokenizer(cfg.model)
    protocol = PROTOCOLS["few-shot"]
    shots = pick_shots(protocol, from_jsonl(gsm8k, "train"))  # standalone: the source's train split, as lm-eval
    test = [json.loads(line) for line in (gsm8k / "test.jsonl").open()][:3]
    assert fake_vllm["prompts"] == [
        {"prompt_token_ids": encode_prompt(tok, protocol, r["question"], shots, cfg.model)} for r in test
    ]
    assert all(len(r["prompt_sha256"]) == 64 and len(r["fewshot_ids"]) == 5 for r in rows)


def test_vllm_backend_passes_the_adapter_and_samples(fake_vllm, tmp_path):
    from mathtune.evaluate.decoder import Decoding, decode, sample_seed
    from mathtune.evaluate.vllm_backend import make_llm

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 12}')
    served = make_llm("/models/m", adapter, "bfloat16", 7)
    # vLLM accepts only some ranks: 12 is served at 16
    assert fake_vllm["llm"]["enable_lora"] is True and fake_vllm["llm"]["max_lora_rank"] == 16
    d = Decoding(64, ("Question:",), k=4, sampling={"temperature": 0.7, "top_p": 0.95, "seed": 3})
    got = list(decode("vllm", served, None, [[1, 2, 3], [4, 5]], ["q-1", "q-2"], d, 8))
    assert fake_vllm["prompts"] == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    # one set of parameters per question, seeded from its id: a resumed evaluation draws the same samples
    assert fake_vllm["params"] == [
        {"n": 4, "max_tokens": 64, "stop": ["Question:"], "temperature": 0.7, "top_p": 0.95, "seed": sample_seed(3, q)}
        for q in ("q-1", "q-2")
    ]
    assert fake_vllm["lora"].path == str(adapter)
    assert [len(samples) for _, samples in got] == [4, 4]


def test_without_vllm_the_error_is_one_line(monkeypatch):
    from mathtune.errors import MathtuneError
    from mathtune.evaluate.vllm_backend import make_llm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    with pytest.raises(MathtuneError, match="needs vLLM"):
        make_llm("m", None, "model", 0)
