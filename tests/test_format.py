"""The prompt the model is evaluated on is exactly the prompt TRL trained it on, and answers end in EOS."""

import datasets
import pytest

from mathtune.config import load_config
from mathtune.data.format import prompt_format, sft_example
from mathtune.evaluate.protocols import PROTOCOLS, encode_prompt
from mathtune.models import load_model, load_tokenizer
from mathtune.train.lora import lora_config
from mathtune.train.stage import sft_args

from conftest import ROOT

ROW = {"id": "train-0", "question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"}


@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_training_tokens_are_prompt_then_answer_then_eos(tmp_path, fmt, gsm8k):
    from trl import SFTTrainer

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={gsm8k}", f"model.prompt_format={fmt}"])
    tok = load_tokenizer(cfg.model)
    assert prompt_format(cfg.model, tok) == fmt
    ds = datasets.Dataset.from_list([sft_example(ROW, fmt, cfg.model)])
    trainer = SFTTrainer(
        model=load_model(cfg.model, "cpu"),
        args=sft_args(cfg, tmp_path, "cpu"),
        train_dataset=ds,
        eval_dataset=ds,
        processing_class=tok,
        peft_config=lora_config(cfg.lora),
    )
    item = trainer.train_dataset[0]
    ids, labels = item["input_ids"], item["labels"]
    prompt = encode_prompt(tok, PROTOCOLS[fmt], ROW["question"], [], cfg.model)
    assert ids[: len(prompt)] == prompt  # evaluation sees what training saw
    assert all(x == -100 for x in labels[: len(prompt)])  # no loss on the prompt
    answer = [x for x in labels if x != -100]
    assert tok.decode(answer).strip().startswith("3+4=7")
    assert tok.eos_token_id in answer  # the model learns to stop
    if fmt == "chat":
        assert "<|im_start|>user" in tok.decode(prompt) and tok.decode(prompt).endswith("assistant\n")
    else:
        assert tok.decode(prompt).endswith("Answer:")
