"""Training prompts: the two formats a model is fine-tuned in (evaluate/protocols.py renders the same ones).

chat:  the tokenizer's chat template, the question (plus an instruction) as the user turn.
plain: a text template for base models, `Question: {question}\nAnswer:` by default.
"""

from __future__ import annotations

from mathtune.errors import MathtuneError


def prompt_format(model_cfg, tokenizer) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if model_cfg.prompt_format == "auto":
        return "chat" if has_template else "plain"
    if model_cfg.prompt_format == "chat" and not has_template:
        raise MathtuneError(f"model.prompt_format: chat, but {model_cfg.name} has no chat template; use plain")
    return model_cfg.prompt_format


def user_turn(question: str, model_cfg) -> list[dict]:
    text = f"{question}\n\n{model_cfg.chat_instruction}" if model_cfg.chat_instruction else question
    return [{"role": "user", "content": text}]


def sft_example(row: dict, fmt: str, model_cfg) -> dict:
    """A prompt-completion example in TRL's format; TRL masks the prompt out of the loss and appends EOS.

    In the chat format the template closes the assistant turn with its end token (SmolLM2: <|im_end|>);
    in the plain format TRL appends tokenizer.eos_token; either way the model learns to stop.
    """
    if fmt == "chat":
        return {
            "prompt": user_turn(row["question"], model_cfg),
            "completion": [{"role": "assistant", "content": row["answer"]}],
        }
    return {"prompt": model_cfg.plain_template.format(question=row["question"]), "completion": " " + row["answer"]}
