"""The arms of a run's evaluation: which models answer the test questions, each into predictions/NAME.jsonl.

No torch here: the stage table's done-test and the report read it.
"""

from __future__ import annotations


def arms(cfg) -> dict[str, dict]:
    """{name: {"adapter": whether the fine-tuned adapter is applied, "calculator": whether eval.calculator is on}},
    in the order they are evaluated. With eval.calculator, each model also answers with the calculator."""
    models = (["base"] if cfg.eval.base else []) + ["finetuned"]
    out = {}
    for name in models:
        out[name] = {"adapter": name == "finetuned", "calculator": False}
        if cfg.eval.calculator:
            out[f"{name}-calculator"] = {"adapter": name == "finetuned", "calculator": True}
    return out


def report_order(names: list[str]) -> list[str]:
    """The order the analysis compares arms in: base first and the fine-tuned model last (its headline comparison,
    last against first), the calculator arms between them."""
    rank = {"base": 0, "base-calculator": 1, "finetuned-calculator": 2, "finetuned": 3}
    return sorted(names, key=lambda n: rank.get(n, 1.5))
