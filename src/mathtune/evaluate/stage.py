"""Evaluation: base model and base+adapter, same protocol, same decoding -> predictions/*.jsonl.

Each finished question is appended to NAME.partial.jsonl at once, so a crashed evaluation resumes with
the questions not yet answered; the complete file is written in test-split order at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

from mathtune.data.format import prompt_format
from mathtune.distributed import barrier, gather, is_main, rank_and_world
from mathtune.errors import MathtuneError
from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.evaluate.generate import generate
from mathtune.evaluate.protocols import Protocol, encode_prompt, get_protocol, pick_shots, strict_pattern
from mathtune.evaluate.score import grade_row
from mathtune.evaluate.stats import majority
from mathtune.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, repair_jsonl
from mathtune.models import ensure_local, first_line, load_model, load_tokenizer, pick_device, torch_dtype


def is_done(run_dir: Path, cfg) -> bool:
    names = ["finetuned"] + (["base"] if cfg.eval.base else [])
    return (run_dir / "eval.json").is_file() and all((run_dir / "predictions" / f"{n}.jsonl").is_file() for n in names)


def load_for_eval(cfg, adapter: Path | None, device: str):
    model = load_model(cfg.model, device)
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise MathtuneError(f"{adapter}: no adapter_config.json (not a PEFT adapter folder)")
        try:
            # Merged for speed: generation then runs the plain model's kernels.
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:
            raise MathtuneError(f"{adapter}: does not match model {cfg.model.name} ({first_line(e)})") from None
    if cfg.eval.dtype != "model":
        model = model.to(torch_dtype(cfg.eval.dtype))  # after merging, so the adapter is merged in full precision
    return model.eval()


def resolve_protocol(cfg, tokenizer) -> Protocol:
    name = cfg.eval.protocol
    return get_protocol(prompt_format(cfg.model, tokenizer) if name == "auto" else name)


def shots_for(protocol: Protocol, cfg) -> list[tuple[str, str]]:
    if protocol.shots != "train":
        return pick_shots(protocol, None)
    from mathtune.data.stage import load_train_rows

    return pick_shots(protocol, load_train_rows(cfg.data))


def _resumable(out: Path, test: list[dict], answer) -> int:
    """Write one row per test question into `out`, in test order, resuming from `out`'s .partial files.

    answer(todo) yields finished rows (any order) for the questions not answered yet; each is appended and flushed
    at once. Under `accelerate launch` each process answers its share of them into its own .partial.rankN file and
    the main process merges the files. Returns the number of questions answered in this call, by all processes.
    """
    rank, world = rank_and_world()
    partial = out.with_name(out.stem + ".partial.jsonl")
    mine = partial if world == 1 else out.with_name(f"{out.stem}.partial.rank{rank}.jsonl")
    done = {r["id"] for f in _partials(out) for r in (repair_jsonl(f) if f == mine else read_jsonl(f, True))}
    if done - {r["id"] for r in test}:  # checked by every process alike, so that none is left at a barrier
        raise MathtuneError(f"{partial}: its questions do not match the test rows; delete it or rerun with --force")
    todo = [r for r in test if r["id"] not in done]
    barrier()  # every process has read what was done before any of them appends
    share = todo[rank::world]
    for row in answer(share) if share else ():
        append_jsonl(mine, row)
    barrier()
    if is_main():
        by_id = {r["id"]: r for f in _partials(out) for r in read_jsonl(f, True)}
        atomic_write_jsonl(out, [by_id[r["id"]] for r in test])
        for f in _partials(out):
            f.unlink()
    barrier()
    return len(todo)


def _partials(out: Path) -> list[Path]:
    """The .partial file of a single process and the .partial.rankN files of several (a resume may mix them)."""
    return sorted(out.parent.glob(f"{out.stem}.partial*.jsonl"))


def oom_explained(rows, e, longest_prompt: int):
    """Pass generated rows through; a CUDA out-of-memory error becomes a one-line error that says what to lower."""
    import torch

    try:
        yield from rows
    except torch.cuda.OutOfMemoryError:
        raise MathtuneError(
            f"CUDA out of memory generating with eval.batch_size={e.batch_size}, prompts up to {longest_prompt} tokens "
            f"and eval.max_new_tokens={e.max_new_tokens}: lower eval.batch_size (or eval.max_new_tokens); answered "
            f"questions are kept, rerun with --resume") from None


def predict(cfg, tokenizer, protocol: Protocol, shots, test: list[dict], adapter: Path | None, out: Path) -> dict:
    """Greedy answers to every test row into `out` (and k samples into NAME.samples.jsonl when eval.samples > 1)."""
    e = cfg.eval
    model = None
    pattern = strict_pattern(protocol)
    generated = 0

    def stream(todo, k=1, sampling=None):
        nonlocal model
        prompts = [encode_prompt(tokenizer, protocol, r["question"], shots, cfg.model) for r in todo]
        if e.backend == "vllm":
            from mathtune.evaluate.vllm_backend import generate_vllm, make_llm

            model = model or make_llm(ensure_local(cfg.model.name), adapter, e.dtype, e.seed)
            return generate_vllm(model, prompts, e.max_new_tokens, protocol.stop, k, sampling, adapter)
        model = model or load_for_eval(cfg, adapter, pick_device(cfg.runtime.device))
        desc = out.stem + (f" x{k} samples" if sampling else "")
        return oom_explained(generate(model, tokenizer, prompts, e.batch_size, e.max_new_tokens, protocol.stop, desc,
                                      k, sampling, e.kv_cache), e, max(len(p) for p in prompts))

    def greedy(todo):
        nonlocal generated
        for i, [(completion, n_tokens, truncated)] in stream(todo):
            row = todo[i]
            generated += n_tokens
            yield grade_row({
                "id": row["id"],
                "question": row["question"],
                "reference": row["answer"],
                "completion": completion,
                "generated_tokens": n_tokens,
                "truncated": truncated,
                "protocol": protocol.name,
            }, pattern)

    def sampled(todo):
        sampling = {"temperature": e.temperature, "top_p": e.top_p, "seed": e.seed}
        for i, samples in stream(todo, e.samples, sampling):
            row = todo[i]
            answers = [extract_answer(text) for text, _, _ in samples]
            maj = majority(answers)
            yield {
                "id": row["id"],
                "reference": row["answer"],
                "completions": [text for text, _, _ in samples],
                "answers": answers,
                "maj_answer": maj,
                "maj_correct": is_correct(maj, row["answer"]),
                "pass_at_k": any(is_correct(a, row["answer"]) for a in answers),
                "protocol": protocol.name,
            }

    start = time.time()
    _resumable(out, test, greedy)
    seconds = time.time() - start
    generated = sum(gather(generated))  # every process's share
    rows = read_jsonl(out)
    n_correct = sum(r["correct"] for r in rows)
    summary = {
        "n": len(rows),
        "correct": n_correct,
        "accuracy": n_correct / len(rows) if rows else 0.0,
        "strict_correct": sum(r["strict_correct"] for r in rows),
        "protocol": protocol.name,
        "seconds": round(seconds, 2),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / seconds, 2) if generated and seconds else None,
    }
    if e.samples > 1:
        samples_out = out.with_name(out.stem + ".samples.jsonl")
        _resumable(samples_out, test, sampled)
        srows = read_jsonl(samples_out)
        summary.update(k=e.samples, maj_at_k=sum(r["maj_correct"] for r in srows) / len(srows),
                       pass_at_k=sum(r["pass_at_k"] for r in srows) / len(srows))
    return summary


def _tokenizer(cfg):
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    return tokenizer


def run_eval(cfg, run_dir: Path) -> dict:
    tokenizer = _tokenizer(cfg)
    protocol = resolve_protocol(cfg, tokenizer)
    shots = shots_for(protocol, cfg)
    test = read_jsonl(run_dir / "data" / "test.jsonl")
    adapters = ({"base": None} if cfg.eval.base else {}) | {"finetuned": run_dir / "adapter"}
    previous = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else {}
    summary = {}
    for name, adapter in adapters.items():
        out = run_dir / "predictions" / f"{name}.jsonl"
        if out.is_file() and name in previous:
            summary[name] = previous[name]  # finished before a resume
            continue
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise MathtuneError(f"{adapter}: no adapter; run `mathtune train {run_dir}` first")
        summary[name] = predict(cfg, tokenizer, protocol, shots, test, adapter, out)
        s = summary[name]
        if is_main():
            print(f"mathtune: {name}: {s['correct']}/{s['n']} correct ({100 * s['accuracy']:.1f}%), "
                  f"protocol {protocol.name}")
            atomic_write_json(run_dir / "eval.json", {**previous, **summary})
    return summary


def eval_standalone(cfg, adapter: Path | None, split: str, out: Path) -> dict:
    """`mathtune eval --model M ...`: any model, any protocol, on a split of the configured data source."""
    from mathtune.data.stage import load_test_rows, load_train_rows

    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise MathtuneError(f"{adapter}: no adapter_config.json (not a PEFT adapter folder)")
    rows = load_test_rows(cfg.data) if split == "test" else load_train_rows(cfg.data)
    rows = rows[: cfg.eval.limit]
    tokenizer = _tokenizer(cfg)
    protocol = resolve_protocol(cfg, tokenizer)
    summary = predict(cfg, tokenizer, protocol, shots_for(protocol, cfg), rows, adapter, out)
    if is_main():
        atomic_write_json(out.with_suffix(".summary.json"), {"model": cfg.model.name, "adapter": str(adapter or ""),
                                                              "split": split, **summary})
    return summary
