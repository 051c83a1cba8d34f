"""mathtune's command line: `run` does every stage; `train`, `eval`, `report` redo one stage of a run directory.

Bad input is one line on stderr and exit code 2; Ctrl-C is exit 130 with the command that resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mathtune.errors import MathtuneError


def _threads(cfg) -> None:
    import torch

    if cfg.runtime.threads:
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


def _one_stage(stage: str, run_dir: str, resume: bool = False) -> None:
    """Redo one stage from the files of the previous ones; with resume, continue it where it stopped."""
    from mathtune.run import clear_stage, require, run_stage

    path = Path(run_dir)
    cfg = require(path, stage)
    _threads(cfg)
    if not resume:
        clear_stage(path, stage)
    if stage == "train" and not (path / "data" / "test.jsonl").is_file():
        run_stage(cfg, path, "data")
    run_stage(cfg, path, stage)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint instead of starting over.")
def train(run_dir, resume) -> None:
    """(Re)train the adapter of RUN_DIR from its config (prepares the data if missing)."""
    _one_stage("train", run_dir, resume)


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
@click.option("--backend", help="transformers (default) or vllm (optional; a GPU machine with vllm installed).")
@click.option("--resume", is_flag=True, help="With RUN_DIR: answer only the questions not answered yet.")
@click.argument("overrides", nargs=-1)
def eval_(run_dir, model, adapter, protocol, limit, split, data, config_path, out, backend, resume, overrides) -> None:
    """Re-evaluate RUN_DIR, or evaluate any --model on its own (like lm-eval) into --out."""
    if run_dir and "=" in run_dir:  # `eval --model M ... key=value`: the first override lands in RUN_DIR
        run_dir, overrides = None, (run_dir, *overrides)
    if model is None:
        if run_dir is None:
            raise MathtuneError("give a RUN_DIR, or --model and --out to evaluate a model on its own")
        _one_stage("eval", run_dir, resume)
        return
    from mathtune.config import load_config
    from mathtune.evaluate.stage import eval_standalone

    if out is None:
        raise MathtuneError("--out is required with --model")
    extra = [f"model.name={model}"]
    extra += [f"eval.protocol={protocol}"] if protocol else []
    extra += [f"eval.limit={limit}"] if limit is not None else []
    extra += [f"eval.backend={backend}"] if backend else []
    if data:
        is_local = Path(data).exists()
        extra += ["data.source=jsonl", f"data.path={data}"] if is_local else ["data.source=hub", f"data.hub_id={data}"]
    cfg = load_config(config_path, [*extra, *overrides])
    _threads(cfg)
    s = eval_standalone(cfg, Path(adapter) if adapter else None, split, Path(out))
    click.echo(f"{cfg.model.name}: {s['correct']}/{s['n']} correct ({100 * s['accuracy']:.1f}%), "
               f"strict {s['strict_correct']}/{s['n']}, protocol {s['protocol']}; wrote {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir) -> None:
    """(Re)write analysis.json, report.md and report.html of RUN_DIR from its files."""
    _one_stage("report", run_dir)
    click.echo(f"mathtune: report written to {Path(run_dir) / 'report.html'} and report.md")


def _out_dir(out: str) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MathtuneError(f"{path}: exists and is not a directory")
    return path


def _headline(analysis: dict, out: Path) -> None:
    for m in analysis["models"]:
        click.echo(f"{m['name']}: {m['correct']}/{m['n']} = {100 * m['accuracy']:.1f}% "
                   f"(95% CI {100 * m['ci95'][0]:.1f}-{100 * m['ci95'][1]:.1f})")
    c = analysis.get("comparison")
    if c:
        click.echo(f"{c['b']} - {c['a']}: {100 * c['diff']:+.1f} points on {c['n']} paired questions, "
                   f"McNemar p = {c['mcnemar_p']:.3g}")
    click.echo(f"mathtune: wrote {out / 'report.html'}, report.md and analysis.json")


@cli.command()
@click.argument("predictions", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--names", help="Comma-separated model names, one per file (default: the file names).")
@click.option("--metrics", type=click.Path(dir_okay=False), help="Training metrics.jsonl (reads train.json beside it).")
@click.option("--run-info", type=click.Path(dir_okay=False),
              help="run.json of the run (reads config.yaml and data/info.json beside it).")
@click.option("--out", required=True, type=click.Path(), help="Folder for analysis.json, report.md, report.html.")
def analyze(predictions, names, metrics, run_info, out) -> None:
    """Analyse predictions files (any tool's: id, question, reference, completion per row), the last against the first."""
    from mathtune.analysis.summary import analyze as analyze_, read_inputs
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
@click.argument("overrides", nargs=-1)
def estimate(config_path, gpu, json_out, overrides) -> None:
    """Predicted hours and dollars of a run, from its data's tokens and the benchmarks' throughput."""
    from mathtune.config import load_config
    from mathtune.data.stage import prepare_rows
    from mathtune.estimate import estimate_run, format_estimate
    from mathtune.io import atomic_write_json

    cfg = load_config(config_path, overrides)
    rows, _ = prepare_rows(cfg)
    try:
        e = estimate_run(cfg, rows, _estimate_device(gpu))
    except ValueError as err:
        raise MathtuneError(f"--gpu: {err}") from None
    click.echo(format_estimate(e))
    if json_out:
        atomic_write_json(Path(json_out), e)


def _estimate_device(gpu: str | None) -> str:
    if gpu:
        return "cpu" if gpu.lower() == "cpu" else gpu.upper()
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


@cli.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("--out", "dst", required=True, type=click.Path(dir_okay=False), help="Graded JSONL to write.")
def grade(src, dst) -> None:
    """Grade SRC (JSONL rows with `completion` and `reference`): adds extracted, correct, strict_correct."""
    from mathtune.evaluate.score import grade_file

    s = grade_file(Path(src), Path(dst))
    n = max(s["n"], 1)
    click.echo(f"{s['n']} rows: accuracy {s['correct']}/{s['n']} = {100 * s['correct'] / n:.1f}%; "
               f"strict (lm-eval strict-match) {s['strict_correct']}/{s['n']} = {100 * s['strict_correct'] / n:.1f}%")


def _quiet_libraries() -> None:
    """No hub retry chatter: an unknown model name is one error line, not twenty warnings."""
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()


def _close_bars() -> None:
    """Close open progress bars before the error line, so that the error is the last thing on stderr."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if argv is None and args[:1] in (["run"], ["train"], ["eval"]):  # the commands that train or generate
        from mathtune.allocator import restart_under_tcmalloc

        restart_under_tcmalloc(args)
    _quiet_libraries()
    try:
        cli.main(args=args, prog_name="mathtune", standalone_mode=False)
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
    out = args[args.index("--out") + 1] if "--out" in args[:-1] else "RUN_DIR"
    click.echo(f"mathtune: interrupted; resume with: mathtune run --resume --out {out}", err=True)
    return 130


if __name__ == "__main__":
    sys.exit(main())
