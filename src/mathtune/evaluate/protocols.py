"""Evaluation protocols, declared rather than coded (as lm-evaluation-harness declares its tasks).

chat:         the model's chat template, the question (+ model.chat_instruction) as the user turn, zero-shot.
              An instruct model is fine-tuned in this format.
plain:        `model.plain_template` ("Question: {question}\\nAnswer:"), zero-shot: a base model's training format.
few-shot:     lm-eval's `gsm8k` task (version 3.0): "Question: ...\\nAnswer:" after 5 solved train-split
              examples, joined by a blank line. One difference, on purpose: lm-eval draws new examples for
              every question; here the 5 are drawn once (seed 1234) and shared, so every question sees the
              same context and the prompt prefix is the same for all.
few-shot-cot: lm-eval's `gsm8k_cot`: 8 fixed chain-of-thought exemplars (Wei et al., 2022), "Q: ...\\nA:",
              answers ending "The answer is N."; its strict match is that sentence.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from mathtune.data.format import user_turn
from mathtune.errors import MathtuneError
from mathtune.evaluate.score import LM_EVAL_STRICT


@dataclass(frozen=True)
class Protocol:
    name: str
    kind: str  # "chat" (chat template) or "plain" (text)
    template: str = ""  # for one question, with {question}; empty: from the model config
    num_fewshot: int = 0
    shots: str = "none"  # "train": drawn from the train split; "cot": the fixed exemplars below
    stop: tuple[str, ...] = ()
    strict_pattern: str = LM_EVAL_STRICT.pattern  # lm-eval gsm8k's strict-match (evaluate/score.py)
    fewshot_seed: int = 1234


# lm-eval stops gsm8k at "Question:", "</s>", "<|im_end|>"; a blank line pair ends an answer too
# (GSM8K solutions have no blank lines, and the few-shot examples are separated by one).
_FEWSHOT_STOP = ("Question:", "</s>", "<|im_end|>", "\n\n")

PROTOCOLS = {
    "chat": Protocol("chat", "chat"),
    "plain": Protocol("plain", "plain", stop=("\nQuestion:",)),
    "few-shot": Protocol("few-shot", "plain", "Question: {question}\nAnswer:", 5, "train", _FEWSHOT_STOP),
    "few-shot-cot": Protocol(
        "few-shot-cot",
        "plain",
        "Q: {question}\nA:",
        8,
        "cot",
        ("Q:", "</s>", "<|im_end|>", "\n\n"),
        strict_pattern=r"The answer is (\-?[0-9\.\,]+).",
    ),
}

# lm-eval gsm8k_cot's exemplars (from the chain-of-thought paper), verbatim.
COT_EXEMPLARS = [
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
        "Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
        "The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
        "were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
        "balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
        "had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
        "left. 23 - 15 is 8. The answer is 8.",
    ),
]


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise MathtuneError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def strict_pattern(protocol: Protocol) -> re.Pattern:
    return re.compile(protocol.strict_pattern)


def pick_shots(protocol: Protocol, train_rows: list[dict] | None) -> list[tuple[str, str, str]]:
    """The (id, question, target) examples shown before every question: drawn once from the train rows (seeded), or
    the fixed chain-of-thought exemplars (ids cot-1 ... cot-8)."""
    if protocol.shots == "cot":
        return [(f"cot-{i}", q, t) for i, (q, t) in enumerate(COT_EXEMPLARS[: protocol.num_fewshot], start=1)]
    if protocol.shots == "train":
        if not train_rows or len(train_rows) < protocol.num_fewshot:
            raise MathtuneError(f"protocol {protocol.name} needs {protocol.num_fewshot} train rows for its examples")
        picked = random.Random(protocol.fewshot_seed).sample(train_rows, protocol.num_fewshot)
        return [(r.get("id", ""), r["question"], r["answer"]) for r in picked]
    return []


def render_plain(protocol: Protocol, question: str, shots: list[tuple[str, str, str]], plain_template: str) -> str:
    template = protocol.template or plain_template
    # lm-eval: examples as "<text> <target>", separated by a blank line, then the question's text.
    context = "".join(f"{template.format(question=q)} {t}\n\n" for _, q, t in shots)
    return context + template.format(question=question)


def encode_prompt(
    tokenizer,
    protocol: Protocol,
    question: str,
    shots: list[tuple[str, str, str]],
    model_cfg,
) -> list[int]:
    """Token ids of a prompt; for chat and plain exactly as TRL tokenizes them in training (tests/test_format.py).

    plain: tokenizer(text) adds BOS where the model's tokenizer is set to (Gemma's is).
    chat:  apply_chat_template renders the special tokens itself, so nothing is added twice.
    """
    if protocol.kind == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise MathtuneError(f"protocol chat: {model_cfg.name} has no chat template; use plain or few-shot")
        out = tokenizer.apply_chat_template(
            user_turn(question, model_cfg), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(out["input_ids"])
    text = render_plain(protocol, question, shots, model_cfg.plain_template)
    return list(tokenizer(text)["input_ids"])
