"""``resrec compare`` (models side by side on the same splits) and ``resrec tune``."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from resrec.cli.app import app
from resrec.cli.common import (
    DUPLICATES_HELP,
    RatingsOptions,
    check_output_file,
    describe_counts,
    load_ratings_from_options,
)
from resrec.cli.train import resolve_config
from resrec.compare import COMPARISON_OUTPUT, MODEL_KINDS, compare
from resrec.config import PRESETS, load_config_file
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError, counted
from resrec.ranking import check_threshold
from resrec.run import check_not_inside_output, check_output_folder

log = logging.getLogger("resrec.cli")

Opt = typer.Option

RatingsPath = Annotated[Path | None, Opt("--ratings", help="Ratings file to use.")]
Dataset = Annotated[
    str | None, Opt("--dataset", help="A MovieLens release to download and use, e.g. ml-100k.")
]
Layout = Annotated[str, Opt(help="File layout, or 'auto' to detect it.")]
Sep = Annotated[str | None, Opt(help="Field separator of a 'delimited' file.")]
Header = Annotated[
    bool | None, Opt("--header/--no-header", help="Whether the file starts with a header.")
]
Columns = Annotated[str | None, Opt(help="Roles of a delimited file's fields.")]
Scale = Annotated[str | None, Opt(help="Rating scale LOW:HIGH:STEP (default: detected).")]
Duplicates = Annotated[str, Opt(help=DUPLICATES_HELP)]
PresetName = Annotated[str, Opt("--preset", help=f"Named hyperparameters: {', '.join(PRESETS)}.")]
ConfigFile = Annotated[
    Path | None, Opt("--config", help="JSON file of config fields (e.g. from 'resrec tune').")
]
Epochs = Annotated[int | None, Opt(help="Override the preset's epochs.")]
Threads = Annotated[int | None, Opt(help="CPU threads (0: automatic).")]


@app.command("compare")
def compare_command(
    ratings: RatingsPath = None,
    dataset: Dataset = None,
    layout: Layout = "auto",
    sep: Sep = None,
    header: Header = None,
    columns: Columns = None,
    scale: Scale = None,
    duplicates: Duplicates = "error",
    models: Annotated[
        str, Opt(help=f"Comma-separated models from: {', '.join(MODEL_KINDS)}.")
    ] = ",".join(MODEL_KINDS),
    repeats: Annotated[int, Opt(help="Seeded splits to average over (seed, seed+1, ...).")] = 1,
    seed: Annotated[int, Opt(help="Seed of the first split.")] = 0,
    preset_name: PresetName = "accurate",
    config_file: ConfigFile = None,
    model_config: Annotated[
        list[str] | None,
        Opt(help="MODEL=FILE: config fields for one model only (repeatable), e.g. deep=deep.json."),
    ] = None,
    epochs: Epochs = None,
    threads: Threads = None,
    k: Annotated[
        int, Opt("--k", min=1, help="Length of the top list of the ranking metrics.")
    ] = 10,
    threshold: Annotated[float, Opt(help="A test rating at or above it counts as relevant.")] = 4.0,
    coverage_users: Annotated[
        int | None, Opt(min=1, help="Users sampled for catalogue coverage (default: all).")
    ] = None,
    out: Annotated[
        Path | None,
        Opt(help="New folder for the tables and the plot (default runs/compare-TIME)."),
    ] = None,
    overwrite: Annotated[bool, Opt(help="Replace an earlier comparison at OUT.")] = False,
    save_runs: Annotated[bool, Opt(help="Also write every run directory under OUT/runs.")] = False,
) -> None:
    """Train several models on the same seeded splits; write a table and an RMSE plot."""
    config = resolve_config(preset_name, config_file, {"epochs": epochs, "threads": threads})
    check_threshold(threshold)
    out = out or Path("runs") / f"compare-{_stamp()}"
    check_output_folder(out, overwrite=overwrite, kind=COMPARISON_OUTPUT)
    table = _read(ratings, dataset, layout, sep, header, columns, scale, duplicates)
    chosen = [m.strip() for m in models.split(",") if m.strip()]

    result = compare(
        table,
        chosen,
        repeats=repeats,
        seed=seed,
        config=config,
        model_overrides=_model_overrides(model_config or []),
        k=k,
        threshold=threshold,
        coverage_users=coverage_users,
        out_dir=out,
        save_runs=save_runs,
        overwrite=overwrite,
        on_run=_echo_run,
    )
    typer.echo(result.files["table_md"].read_text())
    typer.echo(f"tables, curves and plot written to {out}")


@app.command("tune")
def tune_command(
    ratings: RatingsPath = None,
    dataset: Dataset = None,
    layout: Layout = "auto",
    sep: Sep = None,
    header: Header = None,
    columns: Columns = None,
    scale: Scale = None,
    duplicates: Duplicates = "error",
    model: Annotated[str, Opt(help="Model to tune: residual, mf or deep.")] = "residual",
    preset_name: PresetName = "accurate",
    config_file: ConfigFile = None,
    trials: Annotated[int, Opt(min=1, help="Number of trials.")] = 20,
    timeout: Annotated[
        float | None, Opt(min=0.001, help="Stop starting trials after this many s.")
    ] = None,
    seed: Annotated[int, Opt(help="Seed of the sampler.")] = 0,
    epochs: Epochs = None,
    threads: Threads = None,
    valid_fraction: Annotated[
        float | None,
        Opt(
            help="Share of ratings carved from train for validation, which trials are "
            "scored on (default: the preset's, or 0.05 where it has none)."
        ),
    ] = None,
    out: Annotated[Path, Opt(help="JSON file for the best config.")] = Path("best-config.json"),
    overwrite: Annotated[bool, Opt(help="Replace an existing file at --out.")] = False,
) -> None:
    """Search hyperparameters on validation RMSE (needs Optuna) and write the best config."""
    from resrec.tune import TUNE_VALID_FRACTION, check_sampler_options, tune

    check_sampler_options(seed, timeout)
    overrides: dict[str, Any] = {
        "model": model,
        "epochs": epochs,
        "threads": threads,
        "valid_fraction": valid_fraction,
    }
    config = resolve_config(preset_name, config_file, overrides)
    if valid_fraction is None and config.valid_fraction == 0:
        config = config.replace(valid_fraction=TUNE_VALID_FRACTION)
    check_not_inside_output(out, "best config")
    check_output_file(out, overwrite=overwrite, what="best config")
    table = _read(ratings, dataset, layout, sep, header, columns, scale, duplicates)

    result = tune(table, config=config, trials=trials, timeout=timeout, seed=seed, out=out)
    trials_run = counted(len(result.trials), "trial")
    typer.echo(
        f"best validation RMSE {result.best_valid_rmse:.4f} after {trials_run} "
        f"({result.seconds:.0f}s); the test split was not scored"
    )
    typer.echo(f"config written to {out}; use it with: resrec train --config {out}")


def _read(
    ratings: Path | None,
    dataset: str | None,
    layout: str,
    sep: str | None,
    header: bool | None,
    columns: str | None,
    scale: str | None,
    duplicates: str,
) -> Ratings:
    options = RatingsOptions(ratings, dataset, layout, sep, header, columns, scale, duplicates)
    table = load_ratings_from_options(options)
    typer.echo(
        f"read {describe_counts(table)} from {table.source}",
        err=True,
    )
    return table


def _model_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise ConfigError(f"--model-config must be MODEL=FILE; got {item!r}")
        overrides[model.strip()] = load_config_file(Path(path))
    return overrides


def _echo_run(row: dict[str, Any]) -> None:
    typer.echo(
        f"{row['model']:>12} seed {row['seed']}: test RMSE {row['test_rmse']:.4f}  "
        f"MAE {row['test_mae']:.4f}  NDCG {row['ndcg']:.4f}  best epoch {row['best_epoch']}  "
        f"{row['train_seconds']:.1f}s",
        err=True,
    )


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")
