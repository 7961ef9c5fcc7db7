"""``resrec train``: read ratings, train a preset, write a run directory.

The run is written into ``OUT.partial/`` while it trains, with a checkpoint
after every epoch, and renamed to ``OUT`` when complete; ``--resume OUT``
continues an interrupted training. ``--nproc N`` (or a ``torchrun`` launch)
trains data-parallel over N processes; only rank 0 reads the run's files,
writes them and prints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from tqdm import tqdm

from resrec.cli.app import app
from resrec.cli.common import (
    DUPLICATES_HELP,
    RatingsOptions,
    describe_counts,
    load_ratings_from_options,
)
from resrec.config import PRESETS, TrainConfig, load_config_file, preset
from resrec.data.ratings import Ratings, RatingScale
from resrec.errors import ConfigError, DivergenceError, ResrecError, counted
from resrec.run import StagedRun, run_info
from resrec.train import distributed
from resrec.train.checkpoint import Checkpointer, load_checkpoint
from resrec.train.distributed import Process
from resrec.train.trainer import ProgressCallback
from resrec.workflow import check_resume, data_info, fit

log = logging.getLogger("resrec.cli")

Opt = typer.Option


@app.command()
def train(
    ctx: typer.Context,
    ratings: Annotated[Path | None, Opt("--ratings", help="Ratings file to train on.")] = None,
    dataset: Annotated[
        str | None, Opt("--dataset", help="A MovieLens release to download and use, e.g. ml-20m.")
    ] = None,
    layout: Annotated[str, Opt(help="File layout, or 'auto' to detect it.")] = "auto",
    sep: Annotated[
        str | None, Opt(help="Field separator of a 'delimited' file; '\\t' or 'tab' for a tab.")
    ] = None,
    header: Annotated[
        bool | None, Opt("--header/--no-header", help="Whether the file starts with a header.")
    ] = None,
    columns: Annotated[
        str | None,
        Opt(help="Roles of a delimited file's fields, e.g. 'user_id,movie_id,rating,-'."),
    ] = None,
    scale: Annotated[
        str | None, Opt(help="Rating scale LOW:HIGH:STEP, e.g. 0.5:5:0.5 (default: detected).")
    ] = None,
    duplicates: Annotated[str, Opt(help=DUPLICATES_HELP)] = "error",
    preset_name: Annotated[
        str, Opt("--preset", help=f"Named hyperparameters: {', '.join(PRESETS)}.")
    ] = "tutorial",
    config_file: Annotated[
        Path | None, Opt("--config", help="JSON file of config fields (e.g. from 'resrec tune').")
    ] = None,
    out: Annotated[Path | None, Opt(help="Run directory to write (default runs/NAME).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing run directory.")] = False,
    progress: Annotated[
        bool | None, Opt("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
    model: Annotated[str | None, Opt(help="residual, mf, deep, biases or global-mean.")] = None,
    embedding_dim: Annotated[int | None, Opt(help="K, the latent size.")] = None,
    hidden: Annotated[str | None, Opt(help="Side-branch widths, e.g. '400' or '256,64'.")] = None,
    activation: Annotated[str | None, Opt(help="elu, relu, tanh, gelu or identity.")] = None,
    dropout: Annotated[float | None, Opt(help="Dropout in the side branch.")] = None,
    batch_norm: Annotated[bool | None, Opt("--batch-norm/--no-batch-norm")] = None,
    optimizer: Annotated[str | None, Opt(help="sgd, adam or adagrad.")] = None,
    lr: Annotated[float | None, Opt(help="Learning rate.")] = None,
    momentum: Annotated[float | None, Opt(help="SGD momentum.")] = None,
    l2: Annotated[float | None, Opt(help="L2 penalty on each batch's embedding rows.")] = None,
    l2_dense: Annotated[float | None, Opt(help="Weight decay on the side branch.")] = None,
    schedule: Annotated[
        str | None, Opt(help="Learning-rate schedule: constant, step, cosine.")
    ] = None,
    batch_size: Annotated[int | None, Opt(help="Ratings per step.")] = None,
    epochs: Annotated[int | None, Opt(help="Passes over the training split.")] = None,
    early_stopping: Annotated[
        int | None, Opt(help="Stop after this many epochs without validation gain.")
    ] = None,
    test_fraction: Annotated[float | None, Opt(help="Share of ratings held out for test.")] = None,
    valid_fraction: Annotated[
        float | None, Opt(help="Share of ratings carved from train for validation.")
    ] = None,
    seed: Annotated[
        int | None, Opt(help="Seed of the split, the initial weights and batches.")
    ] = None,
    threads: Annotated[int | None, Opt(help="CPU threads (0: automatic).")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu or cuda.")] = None,
    resume: Annotated[
        Path | None,
        Opt(
            help="Continue the interrupted training of run NAME (or NAME.partial) from its "
            "last checkpoint with its saved preset and config; options and --config given "
            "with it override single fields."
        ),
    ] = None,
    nproc: Annotated[
        int, Opt(min=1, help="Train data-parallel with N processes on this machine.")
    ] = 1,
) -> None:
    """Train a model and write a run directory (config, history, metrics, plots, weights)."""
    if nproc > 1 and not distributed.launched():
        command = distributed.rank_command(_command_line(ctx))
        raise typer.Exit(distributed.launch_local(command, nproc))

    overrides: dict[str, Any] = {
        "model": model,
        "embedding_dim": embedding_dim,
        "hidden": _widths(hidden),
        "activation": activation,
        "dropout": dropout,
        "batch_norm": batch_norm,
        "optimizer": optimizer,
        "lr": lr,
        "momentum": momentum,
        "l2": l2,
        "l2_dense": l2_dense,
        "schedule": schedule,
        "batch_size": batch_size,
        "epochs": epochs,
        "early_stopping": early_stopping,
        "test_fraction": test_fraction,
        "valid_fraction": valid_fraction,
        "seed": seed,
        "threads": threads,
        "device": device,
    }
    options = RatingsOptions(
        ratings=ratings,
        dataset=dataset,
        layout=layout,
        sep=sep,
        header=header,
        columns=columns,
        scale=scale,
        duplicates=duplicates,
    )
    process = None
    if distributed.launched():
        if os.environ.get("RANK") != "0":
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs for everyone
        process = distributed.init_process_group()
    try:
        if resume is not None:
            if out is not None:
                raise ConfigError("give either --resume NAME or --out NAME, not both")
            if overwrite:
                raise ConfigError(
                    "--resume continues an unfinished run and --overwrite discards it: "
                    "give one of them, not both",
                    hint=f"leave out --overwrite to continue {resume}, or leave out --resume "
                    "and give --out NAME --overwrite to start again",
                )
            given = _Given(
                preset=preset_name if _given(ctx, "preset_name") else None,
                config_file=config_file,
                reading={name for name in _READING_OPTIONS if _given(ctx, name)},
            )
            job = _resume_job(resume, overrides, options, given)
        else:
            job = _new_job(preset_name, config_file, overrides, options, out, overwrite)
        show_bar = sys.stderr.isatty() if progress is None else progress
        _run(job, process, overwrite=overwrite, show_bar=show_bar)
    except distributed.PeerFailed:
        raise typer.Exit(1) from None  # rank 0 reports the error
    except RuntimeError as exc:
        if process is None or not distributed.lost_peer(exc):
            raise
        typer.echo(
            f"error: rank {process.rank} lost contact with another rank, which probably "
            "failed: see that rank's error",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        distributed.shutdown()


@dataclasses.dataclass
class _Job:
    """What every rank needs to know to train: the config, the data and where to write."""

    config: TrainConfig
    options: RatingsOptions
    preset: str
    target: Path
    staging: Path
    created: tuple[Path, ...] = ()  # folders made for the staging directory
    sha256: str | None = None  # of the ratings file, when resuming
    checkpoint: dict[str, Any] | None = None
    fresh: bool = True


def _new_job(
    preset_name: str,
    config_file: Path | None,
    overrides: dict[str, Any],
    options: RatingsOptions,
    out: Path | None,
    overwrite: bool,
) -> Callable[[], _Job]:
    def open_run() -> _Job:
        config = resolve_config(preset_name, config_file, overrides)
        target = out or Path("runs") / _default_name(options, preset_name)
        staged = StagedRun.create(target, overwrite=overwrite)  # fails early when unwritable
        return _Job(
            config, _absolute(options), preset_name, staged.target, staged.staging, staged.created
        )

    return open_run


_READING_OPTIONS = ("layout", "sep", "header", "columns", "scale", "duplicates")


@dataclasses.dataclass(frozen=True)
class _Given:
    """What was given on the command line with ``--resume``, beyond single-field options."""

    preset: str | None  # --preset, when given
    config_file: Path | None
    reading: set[str]  # names of the reading options given (--layout, --sep, ...)


def _resume_job(
    path: Path, overrides: dict[str, Any], options: RatingsOptions, given: _Given
) -> Callable[[], _Job]:
    def reopen_run() -> _Job:
        staged = StagedRun.reopen(path)
        info = staged.read_info()
        data = info["data"]
        saved_preset = str(data.get("preset", ""))
        _check_same_preset(given.preset, saved_preset, staged.target)
        config = TrainConfig.from_dict(info["config"])
        if given.config_file is not None:
            config = config.replace(**load_config_file(given.config_file))
        config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
        if not staged.has_checkpoint():
            raise ConfigError(
                f"{staged.staging} has no checkpoint ({staged.checkpoint.name}): no epoch "
                "was saved, so there is nothing to resume",
                hint=f"start the training again with its options and --out {staged.target} "
                "--overwrite",
            )
        checkpoint = load_checkpoint(staged.checkpoint)
        check_resume(checkpoint, config)  # before reading the ratings
        saved_options = _options_from(data["read_options"])
        return _Job(
            config=config,
            options=_resumed_options(saved_options, options, given.reading, data),
            preset=saved_preset,
            target=staged.target,
            staging=staged.staging,
            sha256=data.get("sha256"),
            checkpoint=checkpoint,
            fresh=False,
        )

    return reopen_run


def _given(ctx: Any, name: str) -> bool:
    """Whether the option with parameter ``name`` was given, not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _check_same_preset(given: str | None, saved: str, target: Path) -> None:
    """A --preset given with --resume must be the one the run was started with."""
    if given is None or given == saved:
        return
    preset(given)  # an unknown name gets the usual message
    raise ConfigError(
        f"--preset {given} differs from the run's preset {saved!r}: --resume continues "
        "with the saved preset and config",
        hint=f"leave out --preset to continue the run, or start a new one with "
        f"--preset {given} --out NAME; options such as --lr still change single fields",
    )


def _resumed_options(
    saved: RatingsOptions, options: RatingsOptions, given: set[str], data: dict[str, Any]
) -> RatingsOptions:
    """The saved reading options, with the file moved if --ratings or --dataset is given.

    Reading options decide the ratings, and so the split: one given with
    ``--resume`` must have the saved one's effect. ``--layout`` and ``--scale``
    are compared after resolution (``data`` records the layout that ``auto``
    chose and the scale used); ``--sep``, ``--header`` and ``--columns``, when
    the run left them to be guessed, are accepted if reading the file with
    them gives the same ratings.
    """
    moved = saved
    if options.ratings is not None or options.dataset is not None:
        moved = _absolute(
            dataclasses.replace(saved, ratings=options.ratings, dataset=options.dataset)
        )
    guessed: dict[str, Any] = {}
    for name in _READING_OPTIONS:
        value, before = getattr(options, name), getattr(saved, name)
        if name not in given or _same_reading(name, value, before, data):
            continue
        if name in _GUESSED and before is None:
            guessed[name] = value
            continue
        raise _differs(name, value, before, data)
    if guessed:
        _check_same_ratings(moved, guessed, data)
    return moved


_GUESSED = ("sep", "header", "columns")  # reading options left to guessing when not given


def _same_reading(name: str, value: Any, before: Any, data: dict[str, Any]) -> bool:
    """Whether reading option ``name`` given as ``value`` has the saved ``before``'s effect."""
    if value == before:
        return True
    if name == "layout":
        return before == "auto" and value == data.get("layout")
    if name == "scale" and value is not None and isinstance(data.get("scale"), dict):
        try:
            return RatingScale.parse(value) == RatingScale(**data["scale"])
        except (ResrecError, TypeError):
            return False
    return False


def _check_same_ratings(
    saved: RatingsOptions, guessed: dict[str, Any], data: dict[str, Any]
) -> None:
    """Refuse guessed reading options whose values read the file differently than the run did."""
    first = load_ratings_from_options(saved)
    try:
        again = load_ratings_from_options(dataclasses.replace(saved, **guessed))
    except ResrecError:
        again = None
    if again is None or not _same_table(first, again):
        name = next(iter(guessed))
        raise _differs(name, guessed[name], None, data)


def _same_table(a: Ratings, b: Ratings) -> bool:
    if (a.scale, len(a)) != (b.scale, len(b)):
        return False
    columns = [(a.user_id, b.user_id), (a.movie_id, b.movie_id), (a.rating, b.rating)]
    if (a.timestamp is None) != (b.timestamp is None):
        return False
    if a.timestamp is not None and b.timestamp is not None:
        columns.append((a.timestamp, b.timestamp))
    return all(np.array_equal(x, y) for x, y in columns)


def _differs(name: str, value: Any, before: Any, data: dict[str, Any]) -> ConfigError:
    resolved = ""
    if name == "layout" and before == "auto" and data.get("layout"):
        resolved = f" (which read it as {data['layout']})"
    return ConfigError(
        f"{_option_text(name, value)} differs from the run's "
        f"{_option_text(name, before)}{resolved}: --resume reads the ratings as the run did",
        hint="leave it out to continue the run, or start a new one",
    )


def _option_text(name: str, value: object) -> str:
    if value is None:
        return f"--{name} (not given)"
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def _run(
    open_job: Callable[[], _Job], process: Process | None, *, overwrite: bool, show_bar: bool
) -> None:
    main = process is None or process.is_main
    job = distributed.on_main(open_job, process)
    staged = StagedRun(job.target, job.staging, job.created)
    try:
        distributed.check_device(job.config.device, process)
        table = _read_ratings(job.options, process)
        data = _data_info(table, job)
        if main:
            typer.echo(f"read {_describe(table)}", err=True)
            if job.fresh:
                staged.write_info(run_info(job.config, data))
        checkpointer = Checkpointer(
            staged.staging,
            info={"data": data},
            rank=0 if process is None else process.rank,
            gather_rng=None if process is None else lambda s: distributed.gather(s, process),
        )
        result = fit(
            table,
            job.config,
            on_epoch=_log_epoch if main else None,
            progress=_progress_bar if show_bar and main else None,
            checkpointer=checkpointer,
            resume=job.checkpoint,
            process=process,
        )
    except BaseException as exc:
        if main:
            _after_failure(exc, staged, job)
        elif isinstance(exc, ResrecError) and process is not None:
            exc.message = f"rank {process.rank}: {exc.message}"
        if isinstance(exc, KeyboardInterrupt):
            raise typer.Exit(130) from None
        raise
    if main:
        result.data = data
        path = staged.finish(result, overwrite=overwrite)
        _echo_summary(result.metrics, path)


def _read_ratings(options: RatingsOptions, process: Process | None) -> Ratings:
    """Rank 0 reads first (downloading and caching the file once); then the others."""
    first: list[Ratings] = []
    distributed.on_main(lambda: first.append(load_ratings_from_options(options)), process)
    return first[0] if first else load_ratings_from_options(options)


def _data_info(table: Ratings, job: _Job) -> dict[str, Any]:
    """The data part of config.json, with what resuming needs to read the file again."""
    if job.sha256 and table.sha256 and job.sha256 != table.sha256:
        raise ConfigError(
            f"the ratings file {table.source} changed since the run started "
            f"(sha256 {table.sha256[:12]}..., recorded {job.sha256[:12]}...)",
            hint="resume with the file the run was trained on (--ratings PATH)",
        )
    data = data_info(table)
    data["preset"] = job.preset
    data["read_options"] = {
        k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(job.options).items()
    }
    return data


def _after_failure(exc: BaseException, staged: StagedRun, job: _Job) -> None:
    """Keep the last checkpoint and say how to continue; discard a run with none."""
    if not staged.has_checkpoint():
        if job.fresh:
            staged.discard()
        if isinstance(exc, KeyboardInterrupt):
            typer.echo("interrupted before the first epoch ended; nothing was kept", err=True)
        return
    how = f"resrec train --resume {job.target}"
    if isinstance(exc, DivergenceError):
        exc.hint = (
            f"{exc.hint}; the last good checkpoint is kept in {staged.staging}: continue with "
            f"'{how} --lr SMALLER'"
        )
    elif isinstance(exc, ResrecError) and "--resume" not in (exc.hint or ""):
        exc.hint = f"{exc.hint + '; ' if exc.hint else ''}the last checkpoint is kept in " + (
            f"{staged.staging}: continue with '{how}'"
        )
    elif isinstance(exc, KeyboardInterrupt):
        typer.echo(f"interrupted; the last checkpoint is kept: continue with '{how}'", err=True)
    else:
        typer.echo(f"the last checkpoint is kept in {staged.staging}: '{how}' continues", err=True)


def _options_from(saved: dict[str, Any]) -> RatingsOptions:
    ratings = saved.get("ratings")
    return RatingsOptions(**{**saved, "ratings": None if ratings is None else Path(ratings)})


def _absolute(options: RatingsOptions) -> RatingsOptions:
    """``options`` with the ratings path made absolute, so a resume works from anywhere."""
    if options.ratings is None:
        return options
    return dataclasses.replace(options, ratings=options.ratings.absolute())


def _describe(table: Ratings) -> str:
    scale = table.scale.describe()
    return f"{describe_counts(table)} from {table.source} ({table.layout}, ratings {scale})"


def _command_line(ctx: Any) -> list[str]:
    """The arguments that repeat this ``train`` invocation, without ``--nproc``.

    Rebuilt from the parsed options (not from ``sys.argv``), so it also works
    when the command runs inside another program.
    """
    args: list[str] = []
    if ctx.parent is not None:
        args += _options_given(ctx.parent)
    return [*args, ctx.info_name or "train", *_options_given(ctx, skip=("nproc",))]


def _options_given(ctx: Any, skip: tuple[str, ...] = ()) -> list[str]:
    args: list[str] = []
    for param in ctx.command.params:
        if param.param_type_name != "option" or param.name in skip:
            continue
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default:
            continue
        if param.is_flag:
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def resolve_config(
    preset_name: str, config_file: Path | None, overrides: dict[str, Any]
) -> TrainConfig:
    """Preset, then the config file, then the options given on the command line."""
    config = preset(preset_name)
    if config_file is not None:
        config = config.replace(**load_config_file(config_file))
    return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def _widths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        from resrec.errors import ConfigError

        raise ConfigError(f"--hidden must be comma-separated integers; got {text!r}") from None


def _default_name(options: RatingsOptions, preset_name: str) -> str:
    source = options.dataset or (options.ratings.parent.name if options.ratings else "data")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{source}-{preset_name}-{stamp}"


def _log_epoch(record: dict[str, float]) -> None:
    parts = [f"epoch {int(record['epoch'])}"]
    for key in ("train_loss", "valid_rmse", "test_loss", "test_rmse"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['elapsed_seconds']:.1f}s")
    log.info("  ".join(parts))


def _progress_bar(epoch: int) -> ProgressCallback:
    bar = tqdm(desc=f"epoch {epoch}", unit="batch", leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _echo_summary(metrics: dict[str, Any], path: Path) -> None:
    test = metrics.get("test")
    if test:
        typer.echo(
            f"test RMSE {test['rmse']:.4f}  MAE {test['mae']:.4f}  MSE {test['mse']:.4f}  "
            f"({counted(test['n'], 'rating')}, predictions clipped to the rating scale)"
        )
    cold = metrics.get("split", {}).get("cold_test")
    if cold:
        typer.echo(
            f"test ratings whose user or movie has no training rating: {cold['either']:,} "
            f"(new user {cold['new_user']:,}, new movie {cold['new_movie']:,}); kept in the metric"
        )
    typer.echo(f"train time {metrics['train_seconds']:.1f}s; run written to {path}")


ProgressFactory = Callable[[int], ProgressCallback | None]
