"""mathtune's command line: `run` does every stage; `train`, `eval`, `report` redo one stage of a run directory;
`export` makes a model to ship from a run.

Bad input is one line on stderr and exit code 2; Ctrl-C is exit 130 with the command that resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mathtune.errors import MathtuneError


def _threads(cfg) -> None:
    if cfg.runtime.threads:
        import torch

        torch.set_num_threads(cfg.runtime.threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mathtune")
def cli() -> None:
    """Fine-tune an LLM with LoRA on GSM8K and report, with evidence, what it changed."""


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (configs/*.yaml).")
@click.option("--out", "out", required=True, type=click.Path(), help="Run directory, e.g. runs/demo.")
@click.option("--resume", is_flag=True, help="Continue the run in --out (finished stages are skipped).")
@click.option("--force", is_flag=True, help="Delete the outputs in --out and start over.")
@click.argument("overrides", nargs=-1)
def run(config_path, out, resume, force, overrides) -> None:
    """Every stage: data, train, eval (base and fine-tuned), report. OVERRIDES are key.sub=value."""
    from mathtune.config import load_config
    from mathtune.run import open_run, run_all

    run_dir = Path(out)
    if config_path is None:
        if not (resume and (run_dir / "config.yaml").is_file()):
            raise MathtuneError("--config is required (except with --resume on an existing run directory)")
        config_path = run_dir / "config.yaml"
    cfg = load_config(config_path, overrides)
    _threads(cfg)
    open_run(cfg, run_dir, resume=resume, force=force)
    run_all(cfg, run_dir)


def _redo(stage: str, run_dir: str, overrides=(), resume: bool = False) -> None:
    """Redo one stage of RUN_DIR (continue it with resume); overrides apply to the run or are refused."""
    from mathtune.run import redo, saved_config

    path = Path(run_dir)
    if stage != "report":  # the report works on files alone: no torch
        _threads(saved_config(path))
    redo(path, stage, list(overrides), resume)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint instead of starting over.")
@click.argument("overrides", nargs=-1)
def train(run_dir, resume, overrides) -> None:
    """(Re)train the adapter of RUN_DIR from its config (prepares the data if missing). OVERRIDES (key.sub=value) of
    training keys are written into the run's config; evaluation and report are redone after it."""
    _redo("train", run_dir, overrides, resume)


# `mathtune eval RUN_DIR` evaluates the run's own model, adapter and test rows: these options are for --model.
MODEL_ONLY = ("adapter", "split", "data", "config_path", "out")


@cli.command(name="eval")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--model", help="Evaluate this model alone (hub id, folder or embedded name) instead of a run.")
@click.option("--adapter", type=click.Path(file_okay=False), help="A PEFT adapter folder to apply to --model.")
@click.option("--protocol", help="chat, plain, few-shot (lm-eval gsm8k) or few-shot-cot (lm-eval gsm8k_cot).")
@click.option("--limit", help="Only the first N questions.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--data", help="A folder with train.jsonl/test.jsonl, or a hub dataset id (default openai/gsm8k).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config for the other settings.")
@click.option("--out", type=click.Path(dir_okay=False), help="Predictions JSONL to write (with --model).")
@click.option("--decoder", help="compact (default), static, dynamic (transformers) or vllm (a GPU machine with vllm).")
@click.option("--calculator", is_flag=True, help="With --model: the GSM8K paper's calculator in the decoding loop.")
@click.option("--resume", is_flag=True, help="With RUN_DIR: answer only the questions not answered yet.")
@click.argument("overrides", nargs=-1)
def eval_(
    run_dir, model, adapter, protocol, limit, split, data, config_path, out, decoder, calculator, resume, overrides
) -> None:
    """Re-evaluate RUN_DIR, or evaluate any --model on its own (like lm-eval) into --out."""
    if run_dir and "=" in run_dir:  # `eval --model M ... key=value`: the first override lands in RUN_DIR
        run_dir, overrides = None, (run_dir, *overrides)
    extra = [f"eval.protocol={protocol}"] if protocol else []
    extra += [f"eval.limit={limit}"] if limit is not None else []
    extra += [f"eval.decoder={decoder}"] if decoder else []
    extra += ["eval.calculator=true"] if calculator else []
    if model is None:
        if run_dir is None:
            raise MathtuneError("give a RUN_DIR, or --model and --out to evaluate a model on its own")
        given = dict(adapter=adapter, split=split != "test", data=data, config_path=config_path, out=out)
        for name in MODEL_ONLY:
            if given[name]:
                flag = "--config" if name == "config_path" else f"--{name}"
                raise MathtuneError(
                    f"{flag}: only with --model; `mathtune eval RUN_DIR` evaluates the run's own "
                    f"model, adapter and test rows"
                )
        _redo("eval", run_dir, [*extra, *overrides], resume)
        return
    if run_dir is not None:
        raise MathtuneError(f"{run_dir}: give either a RUN_DIR or --model, not both")
    from mathtune.config import load_config
    from mathtune.evaluate.stage import eval_standalone

    if out is None:
        raise MathtuneError("--out is required with --model")
    extra = [f"model.name={model}", *extra]
    if data:
        is_local = Path(data).exists()
        extra += ["data.source=jsonl", f"data.path={data}"] if is_local else ["data.source=hub", f"data.hub_id={data}"]
    cfg = load_config(config_path, [*extra, *overrides])
    _threads(cfg)
    s = eval_standalone(cfg, Path(adapter) if adapter else None, split, Path(out))
    calls = f", {s['calculator_calls']} calculator calls" if "calculator_calls" in s else ""
    click.echo(
        f"{cfg.model.name}: {s['correct']}/{s['n']} correct ({100 * s['accuracy']:.1f}%), "
        f"strict {s['strict_correct']}/{s['n']}, protocol {s['protocol']}{calls}; wrote {out}"
    )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("overrides", nargs=-1)
def report(run_dir, overrides) -> None:
    """(Re)write analysis.json, report.md and report.html of RUN_DIR from its files (OVERRIDES: cost.* keys)."""
    _redo("report", run_dir, overrides)
    click.echo(f"mathtune: report written to {Path(run_dir) / 'report.html'} and report.md")


def _out_dir(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MathtuneError(f"{path}: exists and is not a directory")
    return path


def _headline(analysis: dict, out: Path) -> None:
    for m in analysis["models"]:
        click.echo(
            f"{m['name']}: {m['correct']}/{m['n']} = {100 * m['accuracy']:.1f}% "
            f"(95% CI {100 * m['ci95'][0]:.1f}-{100 * m['ci95'][1]:.1f})"
        )
    c = analysis.get("comparison")
    if c:
        click.echo(
            f"{c['b']} - {c['a']}: {100 * c['diff']:+.1f} points on {c['n']} paired questions, "
            f"McNemar p = {c['mcnemar_p']:.3g}"
        )
    click.echo(f"mathtune: wrote {out / 'report.html'}, report.md and analysis.json")


@cli.command()
@click.argument("predictions", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--names", help="Comma-separated model names, one per file (default: the file names).")
@click.option("--metrics", type=click.Path(dir_okay=False), help="Training metrics.jsonl (reads train.json beside it).")
@click.option(
    "--run-info",
    type=click.Path(dir_okay=False),
    help="run.json of the run (reads config.yaml and data/info.json beside it).",
)
@click.option("--out", required=True, type=click.Path(), help="Folder for analysis.json, report.md, report.html.")
def analyze(predictions, names, metrics, run_info, out) -> None:
    """Analyse predictions files (any tool's: id, question, reference, completion per row), the last against the first."""
    from mathtune.analysis.inputs import read_inputs
    from mathtune.analysis.summary import analyze as analyze_
    from mathtune.report.build import write_report

    out_dir = _out_dir(out)
    analysis = analyze_(**read_inputs([Path(p) for p in predictions], names, metrics, run_info))
    write_report(analysis, out_dir)
    _headline(analysis, out_dir)


@cli.command()
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Folder for analysis.json, report.md, report.html.")
def compare(run_a, run_b, out) -> None:
    """Two runs side by side: their fine-tuned models paired on common questions, their configs and training."""
    from mathtune.analysis.summary import compare_runs
    from mathtune.report.build import write_report

    out_dir = _out_dir(out)
    analysis = compare_runs(Path(run_a), Path(run_b))
    write_report(analysis, out_dir)
    _headline(analysis, out_dir)


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--gpu", help="Cost it on this GPU (h100, h200, a100) or cpu; default: this machine's device.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the estimate as JSON here.")
@click.option(
    "--mfu",
    type=click.FloatRange(0, 1, min_open=True),
    help="A measured model-FLOPs utilisation for training on the GPU (bench/train_throughput_gpu.py's).",
)
@click.argument("overrides", nargs=-1)
def estimate(config_path, gpu, json_out, mfu, overrides) -> None:
    """Predicted hours and dollars of a run, from its data's tokens and the benchmarks' throughput."""
    from mathtune.config import load_config
    from mathtune.data.stage import prepare_rows
    from mathtune.estimate import estimate_run, format_estimate, gpu_key
    from mathtune.io import atomic_write_json

    cfg = load_config(config_path, overrides)
    device = _estimate_device(gpu)
    if device != "cpu":
        try:
            gpu_key(device)  # a bad --gpu is refused before the data and the tokenizer are read
        except ValueError as err:
            raise MathtuneError(f"--gpu: {err}") from None
    rows, _ = prepare_rows(cfg)
    e = estimate_run(cfg, rows, device, mfu)
    click.echo(format_estimate(e))
    if json_out:
        atomic_write_json(Path(json_out), e)


def _estimate_device(gpu: str | None) -> str:
    if gpu:
        return "cpu" if gpu.lower() == "cpu" else gpu.upper()
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Folder to write (new, or empty).")
@click.option("--adapter-only", is_flag=True, help="Copy the LoRA adapter instead of merging it into the base model.")
def export(run_dir, out, adapter_only) -> None:
    """A model to ship from RUN_DIR: base + adapter merged (safetensors, tokenizer, generation config) and a README.md
    model card from its analysis.json; transformers' from_pretrained and vLLM load the folder."""
    from mathtune.export import export_run

    path = export_run(Path(run_dir), Path(out), adapter_only)
    click.echo(f"mathtune: wrote {'the adapter' if adapter_only else 'the merged model'} and its model card to {path}")


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--out", "dst", required=True, type=click.Path(dir_okay=False), help="Graded JSONL to write.")
def grade(src, dst) -> None:
    """Grade SRC (JSONL rows with `completion` and `reference`): adds extracted, correct, strict_correct."""
    from mathtune.evaluate.score import grade_file

    s = grade_file(Path(src), Path(dst))
    n = max(s["n"], 1)
    click.echo(
        f"{s['n']} rows: accuracy {s['correct']}/{s['n']} = {100 * s['correct'] / n:.1f}%; "
        f"strict (lm-eval strict-match) {s['strict_correct']}/{s['n']} = {100 * s['strict_correct'] / n:.1f}%"
    )


def _close_bars() -> None:
    """Close open progress bars before the error line, so that the error is the last thing on stderr."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if argv is None and args[:1] in (["run"], ["train"], ["eval"]):  # the commands that train or generate
        from mathtune.allocator import bound_onednn_cache, restart_under_tcmalloc

        bound_onednn_cache()  # before the restart, so the restarted process inherits it
        restart_under_tcmalloc(args)
    from mathtune import interrupts
    from mathtune.progress import quiet_libraries

    interrupts.install()
    quiet_libraries()
    try:
        cli.main(args=args, prog_name="mathtune", standalone_mode=False)
        interrupts.raise_if_interrupted()  # a Ctrl-C that a callback swallowed still ends the command as one
    except MathtuneError as e:
        _close_bars()
        click.echo(f"mathtune: error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        return _interrupted(args)
    except click.ClickException as e:
        click.echo(f"mathtune: error: {e.format_message()}", err=True)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args)
    return 0


def _interrupted(args: list[str]) -> int:
    click.echo(f"mathtune: interrupted; {_how_to_resume(args)}", err=True)
    return 130


def _how_to_resume(args: list[str]) -> str:
    """What continues the interrupted command: each command keeps what it wrote, in its own way."""
    command = args[0] if args else ""
    if command == "run":
        out = args[args.index("--out") + 1] if "--out" in args[:-1] else "RUN_DIR"
        return f"resume with: mathtune run --resume --out {out}"
    if command in ("train", "eval") and "--model" not in args:
        run_dir = next((a for a in args[1:] if not a.startswith("-") and "=" not in a), "RUN_DIR")
        return f"resume with: mathtune {command} {run_dir} --resume"
    if command == "eval":
        return "run the same command again: the questions already answered are kept"
    return "run the same command again"


if __name__ == "__main__":
    sys.exit(main())
