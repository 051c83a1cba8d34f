"""`mathtune export RUN_DIR --out DIR`: a model to ship. The base model with the run's LoRA adapter merged into it
(PEFT's merge_and_unload), as safetensors in the model's dtype with its tokenizer and generation config, in the
layout transformers and vLLM load; or, with --adapter-only, the adapter itself. Both get a README.md model card made
from the run's analysis.json: what was trained on what, the accuracies with their intervals, the paired test, the
curve verdict, and the evaluation protocol needed to reproduce the numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mathtune.errors import MathtuneError
from mathtune.io import atomic_write_text, read_json


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def model_card(cfg, analysis: dict, train_info: dict, merged: bool) -> str:
    """README.md for the exported folder (YAML front matter as the hub reads it, then the evidence)."""
    m, lora, e = cfg.model, cfg.lora, cfg.eval
    rows = "\n".join(
        f"| {x['name']} | {x['correct']}/{x['n']} | {_pct(x['accuracy'])} | "
        f"{_pct(x['ci95'][0])} to {_pct(x['ci95'][1])} |"
        for x in analysis.get("models", [])
    )
    c = analysis.get("comparison")
    paired = (
        (
            f"Paired on {c['n']} questions: {c['b']} minus {c['a']} = {100 * c['diff']:+.1f} points (95% CI "
            f"{100 * c['diff_ci95'][0]:+.1f} to {100 * c['diff_ci95'][1]:+.1f}); {c['only_b']} questions fixed, "
            f"{c['only_a']} broken; exact McNemar p = {c['mcnemar_p']:.3g}"
            f"{' (significant at 5%)' if c['mcnemar_p'] < 0.05 else ' (not significant at 5%)'}."
        )
        if c
        else ""
    )
    t = analysis.get("training") or {}
    verdict = f"Learning curve: {t['curve_verdict'].replace('_', ' ')}. {t.get('recommendation', '')}" if t else ""
    data = analysis.get("reproducibility", {}).get("data", {})
    protocol = (analysis.get("models") or [{}])[-1].get("protocol")
    what = "the base model with the LoRA adapter merged into its weights" if merged else "a PEFT LoRA adapter"
    return f"""---
base_model: {m.name}
library_name: {"transformers" if merged else "peft"}
tags: [mathtune, lora, gsm8k, math]
datasets: [openai/gsm8k]
---

# {m.name} fine-tuned on GSM8K with LoRA (mathtune)

This folder holds {what}, exported by `mathtune export` from a mathtune run. Every figure below comes from that run's
`analysis.json`; the run directory (predictions files included) lets anyone recheck them.

## Training
- Base model: `{m.name}` ({m.dtype}); prompt format: {train_info.get("format", m.prompt_format)}.
- Data: GSM8K ({data.get("source", cfg.data.source)}), {data.get("train", "?")} training rows,
  {data.get("val", "?")} validation rows (90/10 split, seed {cfg.data.seed}); loss on the answer tokens only.
- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, target modules {lora.target_modules}.
- {cfg.train.epochs} epoch(s), learning rate {cfg.train.learning_rate}, batch {cfg.train.batch_size}
  x {cfg.train.grad_accum} accumulation; {train_info.get("steps", "?")} steps, best step {train_info.get("best_step")}.
{verdict}

## Answer accuracy on GSM8K test questions
| model | correct | accuracy | 95% CI (Wilson) |
|---|---|---|---|
{rows}

{paired}

## Reproducing the numbers
Protocol `{protocol}` (mathtune's `eval.protocol`), greedy decoding, at most {e.max_new_tokens} new tokens, the final
number extracted and compared exactly with the reference (mathtune's grader):

```bash
mathtune eval --model {"THIS_FOLDER" if merged else m.name}{"" if merged else " --adapter THIS_FOLDER"} \\
  --protocol {protocol} eval.max_new_tokens={e.max_new_tokens}
```
"""


def export_run(run_dir: Path, out: Path, adapter_only: bool = False) -> Path:
    from mathtune.models import _write_folder_atomically
    from mathtune.run import saved_config

    run_dir, out = Path(run_dir), Path(out)
    cfg = saved_config(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise MathtuneError(f"{run_dir}: no adapter; run `mathtune train {run_dir}` first")
    if not (run_dir / "analysis.json").is_file():
        raise MathtuneError(
            f"{run_dir}: no analysis.json (the model card is made from it); run `mathtune report {run_dir}` first"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MathtuneError(f"{out}: exists and is not an empty folder")
    card = model_card(cfg, read_json(run_dir / "analysis.json"), read_json(run_dir / "train.json"), not adapter_only)

    def fill(tmp: Path) -> None:
        if adapter_only:
            shutil.copytree(adapter, tmp, dirs_exist_ok=True)
        else:
            from transformers.utils import logging as tf_logging

            tf_logging.disable_progress_bar()  # a per-shard bar says nothing; the command prints one line at the end
            merged(cfg, adapter).save_pretrained(tmp, safe_serialization=True)
            from mathtune.models import load_tokenizer

            load_tokenizer(cfg.model).save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", card)

    if out.is_dir():
        out.rmdir()
    return _write_folder_atomically(out, fill)


def merged(cfg, adapter: Path):
    """Base + adapter, merged, in model.dtype (merge_and_unload adds B @ A * scaling into each base weight)."""
    from peft import PeftModel

    from mathtune.models import load_model

    base = load_model(cfg.model, "cpu")
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
