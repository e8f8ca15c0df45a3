"""`nstlab` command line: one subcommand per pipeline stage, plus stylize, info, ablate, bench.

Thin edge: each command parses its arguments, loads the config and calls one function.
Any `NstlabError` (bad file, bad key, missing weights) is printed as one line, exit code 2.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from nstlab.errors import NstlabError
from nstlab.registry import OPTIMISED, TRAINED, method_names

app = typer.Typer(
    help=__doc__.splitlines()[0], no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False
)

ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
TRAINED_METHODS = ", ".join(method_names(TRAINED))
OPTIMISED_METHODS = ", ".join(method_names(OPTIMISED))
ALL_METHODS = ", ".join(method_names())
SetOption = Annotated[
    list[str] | None, typer.Option("-S", "--set", help="override a param: -S lora.r=32 (repeatable)")
]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]


def _config(params: Path, overrides: list[str] | None):
    from nstlab.config import load_config

    return load_config(params, overrides or [])


@app.command()
def download(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    out: Path = Path("data/raw"),
    progress: ProgressOption = True,
) -> None:
    """Fetch the content and style images of the active profile (demo: copy the embedded ones)."""
    from nstlab.data.stages import download_stage

    download_stage(_config(params, set_), out, progress=progress)


@app.command()
def pair(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    raw: Path = Path("data/raw"),
    out: Path = Path("data/pairs"),
    progress: ProgressOption = True,
) -> None:
    """Split images into disjoint train/val/test sets, draw seeded (content, style) pairs, pre-resize."""
    from nstlab.data.stages import pair_stage

    pair_stage(_config(params, set_), raw, out, progress=progress)


@app.command("demo-backbones")
def demo_backbones(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    pairs: Path = Path("data/pairs"),
    out: Path = Path("models/demo_backbones"),
) -> None:
    """Fit the demo's reduced VGG-19s and ViT to the train split's images (no download, seconds)."""
    from nstlab.training.demo_backbones import build_demo_backbones

    started = time.perf_counter()
    summary = build_demo_backbones(_config(params, set_), pairs, out)
    typer.echo(json.dumps({**summary, "seconds": round(time.perf_counter() - started, 1)}, indent=2))


@app.command()
def train(
    method: Annotated[str, typer.Argument(help=TRAINED_METHODS)],
    stage: Annotated[int, typer.Option(help="ViT-LoRA stage: 1 (frozen encoders) or 2 (LoRA)")] = 0,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    resume: Annotated[
        str, typer.Option(help="auto: continue a matching checkpoint; never; require")
    ] = "auto",
    pairs: Path = Path("data/pairs"),
    models: Path = Path("models"),
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="do not log to MLflow")] = False,
    progress: ProgressOption = True,
) -> None:
    """Train one model (one ViT-LoRA stage); logs to MLflow, checkpoints, resumes."""
    from nstlab.training.trainer import train as run_training

    if resume not in ("auto", "never", "require"):
        raise NstlabError(f"--resume {resume!r}: choose auto, never or require")
    summary = run_training(
        _config(params, set_),
        method,
        stage,
        pairs_dir=pairs,
        models_dir=models,
        resume=resume,
        progress=progress,
        tracking=not no_tracking,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the same summary
        typer.echo(json.dumps(summary, indent=2))


@app.command()
def evaluate(
    method: Annotated[str, typer.Argument(help=f"{TRAINED_METHODS} or {OPTIMISED_METHODS}")],
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    pairs: Path = Path("data/pairs"),
    models: Path = Path("models"),
    out: Path = Path("reports"),
    progress: ProgressOption = True,
) -> None:
    """Stylise every test pair and write reports/metrics/<model>.json and the outputs."""
    from nstlab.evaluation.evaluate import evaluate_model

    evaluate_model(
        _config(params, set_), method, pairs_dir=pairs, models_dir=models, reports_dir=out, progress=progress
    )


@app.command()
def report(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    out: Path = Path("reports"),
    pairs: Path = Path("data/pairs"),
) -> None:
    """Write Table 1, Table 2, figures and the HTML gallery from the metrics and MLflow."""
    from nstlab.report.build import build_report

    build_report(_config(params, set_), reports_dir=out, pairs_dir=pairs)


@app.command()
def stylize(
    content: Annotated[Path, typer.Argument(help="content image")],
    styles: Annotated[list[Path], typer.Argument(help="one or more style images")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the result")],
    model: Annotated[str, typer.Option("--model", help=ALL_METHODS)] = "vit_lora",
    checkpoint: Annotated[
        Path | None, typer.Option(help="weights (default: models/<model>/model.pt)")
    ] = None,
    size: Annotated[int | None, typer.Option(help="cap the longer side at N px")] = None,
    alpha: Annotated[
        float,
        typer.Option(
            help="content-style trade-off in [0, 1], 0 = the content "
            "(adain, sanet, mcc, iest, artflow, stytr2)"
        ),
    ] = 1.0,
    preserve_color: Annotated[
        bool, typer.Option("--preserve-color", help="keep the content's colours (recolour the style first)")
    ] = False,
    weights: Annotated[
        str | None, typer.Option(help="AdaIN style interpolation weights, e.g. 0.7,0.3")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter",
            help="ViT-LoRA stage-2 adapter: its adapter/ folder, an MLflow run id or runs:/<id>/adapter "
            "(repeatable; one base model, writes OUT_<name> per adapter)",
        ),
    ] = None,
    models: Path = Path("models"),
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
) -> None:
    """Stylise one image with a trained model (any size), or with each of several LoRA adapters."""
    from nstlab.evaluation.evaluate import stylize_file

    style_weights = _parse_weights(weights, len(styles))
    written = stylize_file(
        _config(params, set_),
        model,
        content,
        styles,
        output,
        checkpoint=checkpoint,
        max_size=size,
        alpha=alpha,
        style_weights=style_weights,
        adapters=adapter,
        preserve_color=preserve_color,
        models_dir=models,
    )
    typer.echo("\n".join(str(path) for path in written))


@app.command()
def adapters(
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the ViT-LoRA adapters in MLflow: LoRA config and test losses, ready for stylize --adapter."""
    from nstlab.report.results import adapters_table

    table = adapters_table(_config(params, set_))
    if as_json:
        typer.echo(table.to_json(orient="records", indent=2))
    else:
        _print_table(table.drop(columns="adapter"), "ViT-LoRA adapters in MLflow (stylize --adapter RUN_ID)")


@app.command()
def sync() -> None:
    """Send the MLflow calls buffered while the tracking server was down (mlruns-buffer/); idempotent."""
    from nstlab.tracking.buffer import sync_buffers

    lines, left = sync_buffers()
    typer.echo("\n".join(lines) or "nothing to sync")
    if left:
        raise NstlabError(
            f"{left} buffer(s) not delivered: check that MLflow is up, then run nstlab sync again"
        )


def _print_table(frame, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")  # a narrow terminal wraps values, never cuts a run id
    for row in frame.itertuples(index=False):
        table.add_row(
            *(
                ""
                if value is None or value != value
                else f"{value:.4g}"
                if isinstance(value, float)
                else str(value)
                for value in row
            )
        )
    Console().print(table)


def _parse_weights(text: str | None, count: int) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise NstlabError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.7,0.3") from None
    if len(weights) != count or any(w < 0 for w in weights) or not sum(weights):
        raise NstlabError(f"--weights {text!r}: need {count} non-negative weights, one per style image")
    return [w / sum(weights) for w in weights]


@app.command()
def info(
    model: Annotated[str, typer.Option("--model", help=ALL_METHODS)] = "vit_lora",
    stage: Annotated[int, typer.Option(help="ViT-LoRA stage to count (2 adds LoRA)")] = 2,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Parameter counts per part (trainable and frozen) of a model under the current config."""
    from nstlab.evaluation.evaluate import describe_model

    counts = describe_model(_config(params, set_), model, stage)
    if as_json:
        typer.echo(json.dumps(counts, indent=2))
    else:
        for name, number in counts.items():
            typer.echo(f"{name:40s} {number:>14,}" if isinstance(number, int) else f"{name:40s} {number}")


@app.command()
def ablate(
    grid: Annotated[Path, typer.Argument(help="experiments/*.yaml")],
    jobs: Annotated[int, typer.Option(help="parallel DVC queue workers")] = 1,
    force: Annotated[bool, typer.Option(help="rerun configurations already done")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="print which configurations are done / would run; run nothing")
    ] = False,
    seeds: Annotated[
        int | None,
        typer.Option(
            min=1, help="run each configuration under K training seeds (params.yaml's seed, the K-1 after)"
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Queue every configuration of a grid as a DVC experiment, run the queue, rebuild the report."""
    from nstlab.tracking.ablate import run_grid

    run_grid(grid, jobs=jobs, force=force, dry_run=dry_run, params_path=params, seeds=seeds)


@app.command()
def bench(
    what: Annotated[str, typer.Argument(help="train or stylize")],
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    steps: int = 10,
    warmup: int = 3,
    height: int = 1064,
    width: int = 1600,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = True,
    out: Annotated[Path | None, typer.Option(help="also write the JSON here")] = None,
) -> None:
    """Time the training step (pairs/s) or stylisation (ms/image) on this machine."""
    from nstlab.training.bench import run_benchmark

    result = run_benchmark(_config(params, set_), what, steps=steps, warmup=warmup, size=(height, width))
    text = json.dumps(result, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text if as_json else result)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2.

    So does an OSError about a named file (an output folder that is a file, no permission, a
    full disk): the path and the reason are what the user needs; an OSError with no file is a
    bug and keeps its traceback.
    """
    try:
        app(args=argv, prog_name="nstlab")
    except NstlabError as error:
        _fail(str(error))
    except OSError as error:
        if error.filename is None:
            raise
        _fail(
            f"{error.filename}: {error.strerror or error}; check the path, its permissions and free disk space"
        )


def _fail(message: str) -> None:
    typer.echo(f"nstlab: error: {' '.join(message.split())}", err=True)
    sys.exit(2)
