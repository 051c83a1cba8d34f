"""Float32 linear layers of CPU generation through oneDNN (evaluate/cpu_linear.py, eval.cpu_linear)."""

import pytest
import torch
from torch import nn

from mathtune.config import load_config
from mathtune.data.sources import from_jsonl
from mathtune.errors import MathtuneError
from mathtune.evaluate import cpu_linear
from mathtune.evaluate.decoder import Decoding, decode
from mathtune.evaluate.protocols import encode_prompt, get_protocol
from mathtune.evaluate.stage import load_for_eval
from mathtune.models import load_tokenizer

from conftest import ROOT

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 576), (2, 7, 576), (1, 1, 576)])
def test_the_same_float32_product(bias, shape):
    torch.manual_seed(0)
    layer = nn.Linear(576, 192, bias=bias)
    x = torch.randn(shape)
    want = layer(x)
    assert cpu_linear.use_onednn(layer) == 1 and type(layer) is cpu_linear.OneDNNLinear
    with torch.inference_mode():
        got = layer(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # Another summation order, never bfloat16's rounding (~1e-2 here).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_plain_float32_layers_on_the_cpu_are_swapped():
    class Adapter(nn.Linear):  # a subclass (PEFT's, a quantized layer) keeps its own forward
        pass

    model = nn.Sequential(nn.Linear(8, 8), Adapter(8, 8), nn.Linear(8, 8).to(torch.bfloat16), nn.Embedding(4, 8))
    assert cpu_linear.use_onednn(model) == 1
    assert [type(m).__name__ for m in model] == ["OneDNNLinear", "Adapter", "Linear", "Embedding"]
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight"}


def _answers(model, tok, prompts):
    got = [None] * len(prompts)
    for i, [c] in decode("compact", model, tok, prompts, [str(i) for i in range(len(prompts))], Decoding(48), 4):
        got[i] = c
    return got


@pytest.mark.slow
def test_smollm2_answers_the_same_through_onednn(gsm8k):
    """SmolLM2's greedy answers to real questions, token for token, with torch's linear layers and with oneDNN's."""
    cfg = load_config(ROOT / "configs" / "demo-cpu.yaml", ["model.dtype=float32", "eval.cpu_linear=aten"])
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "left"
    prompts = [
        encode_prompt(tok, get_protocol("chat"), r["question"], [], cfg.model) for r in from_jsonl(gsm8k, "test")[:4]
    ]
    model = load_for_eval(cfg, None, "cpu")
    assert not any(isinstance(m, cpu_linear.OneDNNLinear) for m in model.modules())
    aten = _answers(model, tok, prompts)
    onednn = load_for_eval(
        cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"cpu_linear": "auto"})}), None, "cpu"
    )
    # Every linear layer, the 30 layers' 7 and the head tied to the embedding.
    assert sum(isinstance(m, cpu_linear.OneDNNLinear) for m in onednn.modules()) == 30 * 7 + 1
    assert onednn.lm_head.weight is onednn.model.embed_tokens.weight
    assert _answers(onednn, tok, prompts) == aten


def test_onednn_is_refused_where_it_does_not_apply(tiny_overrides):
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml", [*tiny_overrides, "eval.dtype=bfloat16", "eval.cpu_linear=onednn"]
    )
    with pytest.raises(MathtuneError, match="eval.cpu_linear=onednn"):
        load_for_eval(cfg, None, "cpu")
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [*tiny_overrides, "eval.dtype=bfloat16"])  # auto: left as it is
    assert not any(isinstance(m, cpu_linear.OneDNNLinear) for m in load_for_eval(cfg, None, "cpu").modules())
    with pytest.raises(MathtuneError, match="eval.cpu_linear"):
        load_config(ROOT / "configs" / "tiny.yaml", ["eval.cpu_linear=onednn", "eval.decoder=vllm"])
