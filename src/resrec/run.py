"""Run directories: write a finished training atomically, and load it back.

A run directory holds::

    config.json          resolved config, data source with checksum, model shape, mu
    history.csv          one row per epoch (deterministic for a seed: no timings)
    timings.csv          seconds per epoch (training, and training + evaluation)
    metrics.json         final test (and validation) MSE / RMSE / MAE, split sizes
    loss.png, mse.png    train vs test curves per epoch
    weights.safetensors  the model's tensors (loads without executing code)
    id_maps.npz          raw user_id / movie_id of every index
    train_pairs.npz      user and movie indices of the training ratings
    checksums.json       sha256 of every file above

Files are written into a staging directory beside the target, which is
renamed into place only once everything is written; an error, Ctrl-C or a
crash never leaves a directory at the target name that looks complete.

``resrec train`` stages its run in ``NAME.partial/`` (:class:`StagedRun`) from
the start: ``config.json`` first, then ``checkpoint.pt`` after every epoch, so
an interrupted training can be resumed (``resrec train --resume NAME``); the
checkpoint is deleted once the run is complete. :func:`save_run`, for a
training done in Python, stages in a hidden ``.NAME.partial-*`` directory.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from resrec import __version__
from resrec.config import TrainConfig
from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, ModelFileError
from resrec.files import input_problem, make_staging_folder, output_problem
from resrec.ids import IdMap
from resrec.models.base import RatingModel, build_model
from resrec.plots import plot_history
from resrec.run_checks import (
    DAMAGED_HINT,
    RunInfo,
    check_info,
    check_state,
    check_train_pairs,
    read_id_maps,
    read_object,
)
from resrec.train.checkpoint import (
    CHECKPOINT_NAME,
    fsync_directory,
    storage_error,
    write_atomic,
)
from resrec.workflow import TrainResult

log = logging.getLogger(__name__)

HISTORY_TIMING_COLUMNS = ("train_seconds", "elapsed_seconds")
REQUIRED_FILES = ("config.json", "metrics.json", "weights.safetensors", "id_maps.npz")
PARTIAL_SUFFIX = ".partial"
STAGING_ONLY = (CHECKPOINT_NAME,)  # files of a training in progress, not of the run


def save_run(result: TrainResult, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``result`` as a run directory at ``path``, atomically."""
    target = Path(path)
    check_run_target(target, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, target) from None
    staging = make_staging_folder(target)
    try:
        _write_files(result, staging)
        if target.exists() or target.is_symlink():
            check_run_target(target, overwrite=overwrite)
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote run %s", target)
    return target


def run_info(config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The part of ``config.json`` known before training: versions, config, data."""
    return {
        "resrec_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "config": config.to_dict(),
        "data": data,
    }


def _write_files(result: TrainResult, out: Path) -> None:
    config = {
        **run_info(result.config, result.data),
        "model": {
            "kind": result.config.model,
            "n_users": len(result.user_map),
            "n_movies": len(result.movie_map),
        },
        "mu": result.mu,
        "scale": result.scale.to_dict(),
    }
    _write_json(out / "config.json", config)
    _write_json(out / "metrics.json", result.metrics)
    write_history(result.history, out)
    plot_history(result.history, out)

    save_file(
        {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()},
        str(out / "weights.safetensors"),
        metadata={"format": "pt"},  # one key: safetensors orders several at random
    )
    np.savez(
        out / "id_maps.npz", user_id=result.user_map.raw_ids, movie_id=result.movie_map.raw_ids
    )
    np.savez(
        out / "train_pairs.npz",
        users=result.train_users.astype(np.int32),
        movies=result.train_movies.astype(np.int32),
    )
    files = [p for p in sorted(out.iterdir()) if _is_run_file(p)]
    _write_json(out / "checksums.json", {p.name: sha256_of(p) for p in files})


def _is_run_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name not in STAGING_ONLY


def write_history(history: Sequence[dict[str, float]], out: Path) -> None:
    """Write ``history.csv`` (no timings) and ``timings.csv`` (timings only)."""
    if not history:
        return
    columns = [c for c in history[0] if c not in HISTORY_TIMING_COLUMNS]
    with open(out / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in history:
            writer.writerow([_fmt(row[c]) for c in columns])
    with open(out / "timings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *HISTORY_TIMING_COLUMNS])
        for row in history:
            writer.writerow([int(row["epoch"])] + [f"{row[c]:.3f}" for c in HISTORY_TIMING_COLUMNS])


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode()))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Run:
    """A loaded run: the model in eval mode, its maps and its recorded figures."""

    path: Path
    model: RatingModel
    config: TrainConfig
    user_map: IdMap
    movie_map: IdMap
    mu: float
    scale: RatingScale
    info: dict[str, Any]
    metrics: dict[str, Any]

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """User and movie indices of every training rating."""
        return check_train_pairs(
            self.path / "train_pairs.npz", len(self.user_map), len(self.movie_map)
        )


def load_run(path: str | Path, *, verify: bool = True) -> Run:
    """Load a run directory written by :func:`save_run`.

    With ``verify`` (the default) every file is checked against
    ``checksums.json`` first, so a truncated or altered file is refused.
    """
    run_dir = check_run_dir(path)
    _check_run_files(run_dir)
    if verify:
        verify_run(run_dir)

    config_path = run_dir / "config.json"
    info = read_object(config_path)
    checked = check_info(info, config_path)
    users, movies = read_id_maps(run_dir / "id_maps.npz", checked, config_path)
    model = _load_model(run_dir, checked)
    return Run(
        path=run_dir,
        model=model,
        config=checked.config,
        user_map=IdMap(users, "user"),
        movie_map=IdMap(movies, "movie"),
        mu=checked.mu,
        scale=checked.scale,
        info=info,
        metrics=read_object(run_dir / "metrics.json"),
    )


def check_run_dir(path: str | Path) -> Path:
    """``path`` as a run directory: a readable folder that is not a comparison folder.

    A path that is missing, not a readable folder, or a comparison folder is
    a :class:`ModelFileError` that says which, with a hint. :func:`load_run`
    then checks the run's files.
    """
    run_dir = Path(path)
    problem = input_problem(run_dir, "a run directory", folder=True)
    if problem is not None:
        if problem.missing:
            raise ModelFileError(
                f"run directory {run_dir} does not exist", hint=_missing_hint(run_dir)
            )
        raise ModelFileError(f"{run_dir} {problem.message}", hint=problem.hint or _GIVE_A_RUN)
    if all((run_dir / name).is_file() for name in COMPARISON_OUTPUT.markers):
        raise ModelFileError(
            f"{run_dir} is a comparison folder written by 'resrec compare', not a run directory",
            hint=_comparison_hint(run_dir),
        )
    return run_dir


def _check_run_files(run_dir: Path) -> None:
    """Refuse an unfinished training, or a folder without every file a run needs."""
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if not missing:
        return
    if run_dir.name.endswith(PARTIAL_SUFFIX) and "config.json" not in missing:
        target = run_dir.with_name(run_dir.name[: -len(PARTIAL_SUFFIX)])
        raise ModelFileError(
            f"{run_dir} is an unfinished training, not a run directory",
            hint=f"continue it with 'resrec train --resume {target}'",
        )
    if len(missing) == len(REQUIRED_FILES):
        raise ModelFileError(
            f"{run_dir} is not a run directory: it holds none of {', '.join(REQUIRED_FILES)}",
            hint=_GIVE_A_RUN,
        )
    raise ModelFileError(
        f"{run_dir} is not a complete run: missing {', '.join(missing)}",
        hint=DAMAGED_HINT,
    )


_GIVE_A_RUN = "give the folder that 'resrec train' wrote (it holds config.json)"


def _missing_hint(run_dir: Path) -> str:
    staging = staging_path(run_dir)
    if staging.is_dir():
        return (
            f"its training did not finish and is kept in {staging}: continue it with "
            f"'resrec train --resume {run_dir}'"
        )
    return f"check the name; {_GIVE_A_RUN}"


def _comparison_hint(folder: Path) -> str:
    runs = folder / "runs"
    saved = sorted(p for p in runs.glob("*") if (p / "config.json").is_file())
    if saved:
        return f"give one of the runs it saved, for example {saved[0]}"
    return (
        "it holds tables, not a model: give a run written by 'resrec train', or run "
        "'resrec compare' with --save-runs to keep every run under OUT/runs"
    )


def _load_model(run_dir: Path, info: RunInfo) -> RatingModel:
    """The model ``config.json`` describes, with the weights checked against it and loaded."""
    weights = run_dir / "weights.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{weights} cannot be loaded: {exc}", hint=DAMAGED_HINT) from None
    model = build_model(info.config, info.n_users, info.n_movies, seed=0)
    check_state(model.state_dict(), state, weights, run_dir / "config.json")
    model.load_state_dict(state)
    if info.config.implicit_feedback:
        model.set_rated(*_rated_pairs(run_dir, info))
    model.eval()
    return model


def _rated_pairs(run_dir: Path, info: RunInfo) -> tuple[np.ndarray, np.ndarray]:
    """The training ratings' user and movie indices, which implicit feedback needs."""
    path = run_dir / "train_pairs.npz"
    if not path.is_file():
        raise ModelFileError(
            f"{path} is missing: the model uses implicit feedback, which needs the "
            "movies each user rated in training",
            hint="restore the file from a copy, or retrain",
        )
    return check_train_pairs(path, info.n_users, info.n_movies)


def verify_run(run_dir: Path) -> None:
    """Raise :class:`ModelFileError` if a file differs from ``checksums.json``."""
    listing = run_dir / "checksums.json"
    if not listing.is_file():
        raise ModelFileError(
            f"{run_dir} has no checksums.json; cannot verify its files", hint=DAMAGED_HINT
        )
    try:
        expected = json.loads(listing.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(
            f"{listing} is damaged: it is not valid JSON",
            hint="retrain, or restore the run from a copy",
        ) from None
    if not isinstance(expected, dict):
        raise ModelFileError(
            f"{listing} is damaged: it does not list files and checksums", hint=DAMAGED_HINT
        )
    for name, digest in expected.items():
        file = run_dir / name
        if not file.is_file():
            raise ModelFileError(f"{file} is missing", hint=DAMAGED_HINT)
        if sha256_of(file) != digest:
            raise ModelFileError(
                f"{file} does not match its recorded sha256: it was truncated or altered",
                hint="retrain, or restore the file from a copy",
            )


# -- a run staged from the start of its training ---------------------------------


def staging_path(target: Path) -> Path:
    """Where the run for ``target`` is written while it trains: ``target.partial``."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class OutputKind:
    """A folder a command writes as a whole: what it is called, and the files that mark it."""

    noun: str  # "run"
    label: str  # "run directory"
    markers: tuple[str, ...]  # files every such folder holds


RUN_OUTPUT = OutputKind("run", "run directory", ("config.json", "checksums.json"))
COMPARISON_OUTPUT = OutputKind("comparison", "comparison folder", ("compare.json", "compare.csv"))
OUTPUT_KINDS = (RUN_OUTPUT, COMPARISON_OUTPUT)


def check_run_target(target: Path, *, overwrite: bool) -> None:
    """Refuse an output path that cannot hold a run, or that must not be replaced.

    ``overwrite`` replaces only a directory that is itself a resrec run (it
    holds ``config.json`` and ``checksums.json``) and never the working
    directory or a folder above it, so a mistyped ``--out`` cannot delete
    other files.
    """
    check_output_folder(target, overwrite=overwrite, kind=RUN_OUTPUT)


def check_output_folder(target: Path, *, overwrite: bool, kind: OutputKind) -> None:
    """Refuse a ``--out`` folder that cannot hold ``kind``, or that must not be replaced.

    The folder must not exist, unless ``overwrite`` is given and it is itself
    a folder of that kind (it holds every one of ``kind.markers``); the
    working directory and the folders above it are never replaced. A
    symbolic link or special file at ``target`` is refused, and so is a
    ``target`` inside an existing run directory or comparison folder.
    """
    if target.name in ("", ".", "..") or target.resolve() == Path(target.anchor or "/").resolve():
        raise ConfigError(
            f"--out must name a new folder for the {kind.noun}; got {str(target)!r}",
            hint=f"for example --out runs/my-{kind.noun}",
        )
    check_not_inside_output(target, f"{kind.noun}, for example --out runs/my-{kind.noun}")
    problem = output_problem(target, folder=True)
    if problem is not None:
        raise ConfigError(f"{target} {problem.message}", hint=problem.hint)
    if not target.exists():
        return
    if not overwrite:
        raise ConfigError(
            f"{kind.label} {target} already exists",
            hint="choose another --out or pass --overwrite",
        )
    here = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == here or resolved in here.parents:
        raise ConfigError(
            f"refusing to replace {target}: it is the working directory or a folder above it",
            hint="choose another --out",
        )
    if not all((target / name).is_file() for name in kind.markers):
        raise ConfigError(
            f"refusing to replace {target}: it is not a resrec {kind.noun} "
            f"(no {' and '.join(kind.markers)}), and --overwrite replaces only {kind.noun}s",
            hint="choose another --out, or move the folder away yourself",
        )


def check_not_inside_output(target: Path, what: str) -> None:
    """Refuse an output ``target`` (file or folder) inside an existing run directory or
    comparison folder, whose files resrec checks by their sha256 or replaces as a whole.

    ``what`` completes the hint "write the ... outside it".
    """
    written = Path(os.path.abspath(target)).parents
    real = target.parent.resolve()
    for folder in dict.fromkeys([*written, real, *real.parents]):
        for other in OUTPUT_KINDS:
            if all((folder / name).is_file() for name in other.markers):
                raise ConfigError(
                    f"--out {target} is inside the {other.label} {folder}",
                    hint=f"write the {what} outside it",
                )


@dataclass
class StagedRun:
    """A run in progress in ``<out>.partial/``, renamed to ``<out>`` when complete.

    The staging directory holds ``config.json`` (written before training, with
    what resuming needs: the config, the data source and its sha256) and
    ``checkpoint.pt`` (after each epoch). :meth:`finish` writes the run's
    files beside them and renames the directory into place.
    """

    target: Path
    staging: Path
    created: tuple[Path, ...] = ()  # parent folders made for it, removed by discard()

    @classmethod
    def create(cls, out: str | Path, *, overwrite: bool = False) -> StagedRun:
        """Check that ``out`` can be written and create its staging directory.

        Raises
        ------
        ConfigError
            When ``out`` exists, or an unfinished run of it exists, and
            ``overwrite`` is false.
        ModelFileError
            When the directory cannot be created (no permission, not a folder).
        """
        target = Path(out)
        check_run_target(target, overwrite=overwrite)
        staging = staging_path(target)
        problem = output_problem(staging, folder=True)
        if problem is not None:
            raise ConfigError(f"{staging} {problem.message}", hint=problem.hint)
        if staging.exists():
            if not overwrite:
                raise ConfigError(
                    f"{staging} holds an unfinished training of {target}",
                    hint=f"continue it with 'resrec train --resume {target}', "
                    "or pass --overwrite to start again",
                )
            shutil.rmtree(staging)
        missing = [p for p in staging.parents if not p.exists()]
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise storage_error(exc, staging) from None
        return cls(target, staging, tuple(missing))

    @classmethod
    def reopen(cls, path: str | Path) -> StagedRun:
        """The unfinished run named by ``path`` (``NAME`` or ``NAME.partial``)."""
        given = Path(path)
        if given.name.endswith(PARTIAL_SUFFIX):
            staging, target = given, given.with_name(given.name[: -len(PARTIAL_SUFFIX)])
        else:
            staging, target = staging_path(given), given
        if not staging.is_dir():
            if target.is_dir():
                raise ConfigError(f"{target} is a complete run: there is nothing to resume")
            raise ConfigError(f"there is no unfinished run at {staging}")
        if not (staging / "config.json").is_file():
            raise ModelFileError(
                f"{staging} has no config.json, so it cannot be resumed",
                hint=f"start the training again with --out {target} --overwrite",
            )
        return cls(target, staging)

    @property
    def checkpoint(self) -> Path:
        return self.staging / CHECKPOINT_NAME

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def write_info(self, info: dict[str, Any]) -> None:
        """Write ``config.json`` (atomically)."""
        _write_json(self.staging / "config.json", info)

    def read_info(self) -> dict[str, Any]:
        path = self.staging / "config.json"
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path} cannot be read: {exc}", hint=self._restart) from None
        if not isinstance(info, dict) or "config" not in info or "data" not in info:
            raise ModelFileError(f"{path} is not the config of a resrec run", hint=self._restart)
        return info

    @property
    def _restart(self) -> str:
        return f"start the training again with --out {self.target} --overwrite"

    def finish(self, result: TrainResult, *, overwrite: bool = False) -> Path:
        """Write the run's files and rename the staging directory to the target.

        When writing fails (for example on a full disk), the files written so
        far are removed and ``config.json`` and ``checkpoint.pt`` are kept, so
        ``resrec train --resume`` can write the run without training again.
        """
        if self.target.exists() and not overwrite:
            raise ConfigError(
                f"run directory {self.target} appeared while training",
                hint=f"move it away and run 'resrec train --resume {self.target}'",
            )
        try:
            _write_files(result, self.staging)
        except (OSError, ModelFileError) as exc:
            self._remove_run_files()
            error = storage_error(exc, self.staging) if isinstance(exc, OSError) else exc
            raise ModelFileError(
                f"{error.message}; the run was not written",
                hint=f"{error.hint or 'fix the cause'}, then run 'resrec train --resume "
                f"{self.target}' to write it without training again",
            ) from None
        except BaseException:
            self._remove_run_files()
            raise

        if self.target.exists() or self.target.is_symlink():
            check_run_target(self.target, overwrite=True)
            shutil.rmtree(self.target)
        os.replace(self.staging, self.target)
        fsync_directory(self.target.parent)
        (self.target / CHECKPOINT_NAME).unlink(missing_ok=True)
        log.info("wrote run %s", self.target)
        return self.target

    def discard(self) -> None:
        """Delete the staging directory (when it holds nothing worth resuming)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self.created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty

    def _remove_run_files(self) -> None:
        for path in self.staging.iterdir():
            if path.name not in (*STAGING_ONLY, "config.json"):
                path.unlink(missing_ok=True)
