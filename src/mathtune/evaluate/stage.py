"""Evaluation: base model and base+adapter, same protocol, same decoding -> predictions/*.jsonl.

The stage reads the run directory only: the test rows (data/test.jsonl), the prompt format the model was trained
in (train.json), the few-shot examples (data/train.jsonl) and the adapter. It builds the prompts and grades the
completions; how they are decoded is behind evaluate/decoder.py. Each row records its prompt's sha256 (and the
few-shot examples' ids), as lm-eval's --log_samples does, so a score can be audited line by line.

Each finished question is appended to NAME.partial.jsonl at once, so a crashed evaluation resumes with
the questions not yet answered; the complete file is written in test-split order at the end.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from mathtune.allocator import release_free_memory
from mathtune.config import generation_dtype
from mathtune.data.format import prompt_format
from mathtune.distributed import barrier, gather, is_main, rank_and_world
from mathtune.errors import MathtuneError
from mathtune.evaluate.arms import arms
from mathtune.evaluate.decoder import Decoding, decode
from mathtune.evaluate.extract import extract_answer, is_correct
from mathtune.evaluate.protocols import Protocol, encode_prompt, get_protocol, pick_shots, strict_pattern
from mathtune.evaluate.score import grade_row
from mathtune.evaluate.stats import majority
from mathtune.io import append_jsonl, atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, repair_jsonl
from mathtune.models import ensure_local, first_line, load_model, load_tokenizer, pick_device, torch_dtype


def load_for_eval(cfg, adapter: Path | None, device: str):
    """The model the decoder runs: base (+ the adapter, merged); for vllm, the engine serving it."""
    if cfg.eval.decoder == "vllm":
        from mathtune.evaluate.vllm_backend import make_llm

        return make_llm(ensure_local(cfg.model.name), adapter, generation_dtype(cfg), cfg.eval.seed)
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
    from mathtune.evaluate.cpu_linear import use_onednn

    swapped = use_onednn(model) if cfg.eval.cpu_linear != "aten" else 0
    if cfg.eval.cpu_linear == "onednn" and not swapped:
        raise MathtuneError(
            "eval.cpu_linear=onednn: no float32 linear layer on a CPU with oneDNN to run "
            f"(device {device}, dtype {generation_dtype(cfg)}); use auto or aten"
        )
    return model.eval()


def protocol_for(cfg, trained_format: str) -> Protocol:
    """eval.protocol; auto: the format the model was fine-tuned in (train.json's, or the model's own for --model)."""
    return get_protocol(trained_format if cfg.eval.protocol == "auto" else cfg.eval.protocol)


def prompt_sha256(prompt: list[int]) -> str:
    """The prompt's identity, as lm-eval's --log_samples keeps prompt hashes: of its token ids."""
    return hashlib.sha256(",".join(map(str, prompt)).encode()).hexdigest()


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
            f"questions are kept, rerun with --resume"
        ) from None


def predict(
    cfg,
    tokenizer,
    protocol: Protocol,
    shots,
    test: list[dict],
    adapter: Path | None,
    out: Path,
    calculator: bool = False,
) -> dict:
    """Greedy answers to every test row into `out` (and k samples into NAME.samples.jsonl when eval.samples > 1,
    never with the calculator: it decodes greedily)."""
    e = cfg.eval
    model = None
    pattern = strict_pattern(protocol)
    shot_ids = [i for i, _, _ in shots]
    generated = 0

    def stream(todo, prompts, k=1, sampling=None):
        nonlocal model
        if model is None:
            model = load_for_eval(cfg, adapter, pick_device(cfg.runtime.device))
        decoding = Decoding(e.max_new_tokens, protocol.stop, k, sampling, calculator and sampling is None)
        desc = out.stem + (f" x{k} samples" if sampling else "")
        rows = decode(e.decoder, model, tokenizer, prompts, [r["id"] for r in todo], decoding, e.batch_size, desc)
        return oom_explained(rows, e, max(len(p) for p in prompts))

    def greedy(todo):
        nonlocal generated
        prompts = [encode_prompt(tokenizer, protocol, r["question"], shots, cfg.model) for r in todo]
        for i, [c] in stream(todo, prompts):
            row = todo[i]
            generated += c.tokens
            yield grade_row(
                {
                    "id": row["id"],
                    "question": row["question"],
                    "reference": row["answer"],
                    "completion": c.text,
                    "generated_tokens": c.tokens,
                    "truncated": c.truncated,
                    "protocol": protocol.name,
                    "prompt_sha256": prompt_sha256(prompts[i]),
                    **({"fewshot_ids": shot_ids} if shot_ids else {}),
                    **({"calculator_calls": list(c.calculator_calls)} if calculator else {}),
                },
                pattern,
            )

    def sampled(todo):
        sampling = {"temperature": e.temperature, "top_p": e.top_p, "seed": e.seed}
        prompts = [encode_prompt(tokenizer, protocol, r["question"], shots, cfg.model) for r in todo]
        for i, samples in stream(todo, prompts, e.samples, sampling):
            row = todo[i]
            answers = [extract_answer(c.text) for c in samples]
            maj = majority(answers)
            yield {
                "id": row["id"],
                "reference": row["answer"],
                "completions": [c.text for c in samples],
                "answers": answers,
                "maj_answer": maj,
                "maj_correct": is_correct(maj, row["answer"]),
                "pass_at_k": any(is_correct(a, row["answer"]) for a in answers),
                "protocol": protocol.name,
                "prompt_sha256": prompt_sha256(prompts[i]),
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
    if calculator:
        summary["calculator_calls"] = sum(len(r.get("calculator_calls", ())) for r in rows)
    if e.samples > 1 and not calculator:
        samples_out = out.with_name(out.stem + ".samples.jsonl")
        _resumable(samples_out, test, sampled)
        srows = read_jsonl(samples_out)
        summary.update(
            k=e.samples,
            maj_at_k=sum(r["maj_correct"] for r in srows) / len(srows),
            pass_at_k=sum(r["pass_at_k"] for r in srows) / len(srows),
        )
    return summary


def _tokenizer(cfg):
    tokenizer = load_tokenizer(cfg.model)
    tokenizer.padding_side = "left"
    return tokenizer


def run_eval(cfg, run_dir: Path) -> dict:
    tokenizer = _tokenizer(cfg)
    protocol = protocol_for(cfg, read_json(run_dir / "train.json")["format"])
    shots = pick_shots(protocol, read_jsonl(run_dir / "data" / "train.jsonl") if protocol.shots == "train" else None)
    test = read_jsonl(run_dir / "data" / "test.jsonl")
    previous = read_json(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else {}
    summary = {}
    for name, arm in arms(cfg).items():
        adapter = run_dir / "adapter" if arm["adapter"] else None
        out = run_dir / "predictions" / f"{name}.jsonl"
        if out.is_file() and name in previous:
            summary[name] = previous[name]  # finished before a resume
            continue
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise MathtuneError(f"{adapter}: no adapter; run `mathtune train {run_dir}` first")
        summary[name] = predict(cfg, tokenizer, protocol, shots, test, adapter, out, arm["calculator"])
        release_free_memory()  # this arm's model, before the next one loads its own
        s = summary[name]
        if is_main():
            print(
                f"mathtune: {name}: {s['correct']}/{s['n']} correct ({100 * s['accuracy']:.1f}%), "
                f"protocol {protocol.name}"
            )
            atomic_write_json(run_dir / "eval.json", {**previous, **summary})
    if is_main():
        from mathtune.train.trackers import log_accuracies

        log_accuracies(cfg, run_dir, summary)
    return summary


def eval_standalone(cfg, adapter: Path | None, split: str, out: Path) -> dict:
    """`mathtune eval --model M ...`: any model, any protocol, on a split of the configured data source (there is no
    run directory here: the examples of few-shot protocols come from the source's train split, as lm-eval's do)."""
    from mathtune.data.stage import load_test_rows, load_train_rows

    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise MathtuneError(f"{adapter}: no adapter_config.json (not a PEFT adapter folder)")
    rows = load_test_rows(cfg.data) if split == "test" else load_train_rows(cfg.data)
    rows = rows[: cfg.eval.limit]
    tokenizer = _tokenizer(cfg)
    protocol = protocol_for(cfg, prompt_format(cfg.model, tokenizer))
    shots = pick_shots(protocol, load_train_rows(cfg.data) if protocol.shots == "train" else None)
    summary = predict(cfg, tokenizer, protocol, shots, rows, adapter, out, cfg.eval.calculator)
    if is_main():
        atomic_write_json(
            out.with_suffix(".summary.json"),
            {"model": cfg.model.name, "adapter": str(adapter or ""), "split": split, **summary},
        )
    return summary
