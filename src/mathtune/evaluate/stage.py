"""Evaluation stage: base model and base+adapter, same prompts, same decoding -> predictions/*.jsonl.

Each finished question is appended to predictions/NAME.partial.jsonl at once, so a crashed evaluation
resumes with the questions not yet answered; the complete file is renamed to NAME.jsonl at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

from mathtune.data.format import encode_prompt, prompt_format
from mathtune.errors import MathtuneError
from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.evaluate.generate import generate
from mathtune.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, repair_jsonl
from mathtune.models import first_line, load_model, load_tokenizer, pick_device

STOP_STRINGS = {"plain": ["\nQuestion:"], "chat": []}


def is_done(run_dir: Path, cfg) -> bool:
    names = ["finetuned"] + (["base"] if cfg.eval.base else [])
    return (run_dir / "eval.json").is_file() and all((run_dir / "predictions" / f"{n}.jsonl").is_file() for n in names)


def load_for_eval(cfg, run_dir: Path, name: str, device: str):
    model = load_model(cfg.model, device)
    if name == "finetuned":
        from peft import PeftModel

        adapter = run_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise MathtuneError(f"{adapter}: no adapter; run `mathtune train {run_dir}` first")
        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:
            raise MathtuneError(f"{adapter}: does not match model {cfg.model.name} ({first_line(e)})") from None
    return model.eval()


def evaluate_model(cfg, run_dir: Path, name: str, tokenizer, fmt: str, device: str) -> dict:
    test = read_jsonl(run_dir / "data" / "test.jsonl")
    out_dir = run_dir / "predictions"
    partial = out_dir / f"{name}.partial.jsonl"
    done = {r["id"] for r in repair_jsonl(partial)}
    todo = [r for r in test if r["id"] not in done]
    start = time.time()
    generated = 0
    if todo:
        model = load_for_eval(cfg, run_dir, name, device)
        prompts = [encode_prompt(tokenizer, r["question"], fmt, cfg.model) for r in todo]
        e = cfg.eval
        stream = generate(model, tokenizer, prompts, e.batch_size, e.max_new_tokens, STOP_STRINGS[fmt], desc=name)
        for i, completion, n_tokens, truncated in stream:
            row = todo[i]
            extracted = extract_answer(completion)
            generated += n_tokens
            append_jsonl(partial, {
                "id": row["id"],
                "question": row["question"],
                "reference": row["answer"],
                "completion": completion,
                "extracted": extracted,
                "correct": is_correct(extracted, row["answer"]),
                "generated_tokens": n_tokens,
                "truncated": truncated,
                "protocol": fmt,
            })
        del model
    # Order rows as in the test split, whatever order the batches finished in.
    by_id = {r["id"]: r for r in read_jsonl(partial)}
    rows = [by_id[r["id"]] for r in test]
    if len(rows) != len(by_id):
        raise MathtuneError(f"{partial}: rows do not match {run_dir / 'data' / 'test.jsonl'}; rerun with --force")
    atomic_write_jsonl(out_dir / f"{name}.jsonl", rows)
    partial.unlink()
    seconds = time.time() - start
    n_correct = sum(r["correct"] for r in rows)
    return {
        "n": len(rows),
        "correct": n_correct,
        "accuracy": n_correct / len(rows) if rows else 0.0,
        "protocol": fmt,
        "seconds": round(seconds, 2),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / seconds, 2) if generated and seconds else None,
    }


def run_eval(cfg, run_dir: Path) -> dict:
    device = pick_device(cfg.runtime.device)
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    fmt = prompt_format(cfg.model, tokenizer)
    names = (["base"] if cfg.eval.base else []) + ["finetuned"]
    previous = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else {}
    summary = {}
    for name in names:
        final = run_dir / "predictions" / f"{name}.jsonl"
        if final.is_file() and name in previous:
            summary[name] = previous[name]  # finished before a resume
            continue
        summary[name] = evaluate_model(cfg, run_dir, name, tokenizer, fmt, device)
        print(f"mathtune: {name}: {summary[name]['correct']}/{summary[name]['n']} correct "
              f"({100 * summary[name]['accuracy']:.1f}%)")
        atomic_write_json(run_dir / "eval.json", {**previous, **summary})
    return summary

