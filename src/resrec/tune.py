"""Hyperparameter search with Optuna over validation RMSE (the ``resrec[tune]`` extra).

Each trial trains on the training split and is scored on the validation split
carved from it; the test rows are dropped from the split handed to the
trainer, so no trial, pruning decision or final choice can see them. The best
trial's config is written as a JSON file that ``resrec train --config``
(:func:`resrec.config.load_config_file`) accepts.

Optuna is imported only when a search runs; without it :func:`tune` raises
:class:`~resrec.errors.ConfigError` saying how to install it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resrec.config import TrainConfig, preset
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError, DivergenceError, echoed
from resrec.files import write_file_atomic
from resrec.split import Split, split_ratings
from resrec.workflow import Encoded, encode_ratings, fit

log = logging.getLogger(__name__)

# Name -> ("int" | "float" | "log" | "choice", arguments). "log" is a log-uniform float.
DEFAULT_SPACE: dict[str, tuple[str, tuple[Any, ...]]] = {
    "embedding_dim": ("choice", (16, 32, 64, 128)),
    "hidden": ("choice", ((64,), (128,), (256,), (400,))),
    "dropout": ("float", (0.0, 0.6)),
    "lr": ("log", (3e-4, 1e-2)),
    "l2": ("log", (1e-3, 1.0)),
    "batch_size": ("choice", (256, 512, 1024, 2048)),
    "schedule": ("choice", ("constant", "cosine")),
}

# Written to the output file: the fields a run needs, not the machine's settings.
_MACHINE_FIELDS = ("threads", "device")

TUNE_VALID_FRACTION = 0.05
"""``resrec tune``'s validation fraction where the preset and ``--config`` set none."""
_LARGEST_SEED = 2**32 - 1


@dataclass
class TuneResult:
    """The best config found, its validation RMSE and every trial's outcome."""

    best_config: TrainConfig
    best_valid_rmse: float
    trials: list[dict[str, Any]]
    path: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def tune(
    ratings: Ratings | Encoded,
    *,
    config: TrainConfig | None = None,
    trials: int = 20,
    timeout: float | None = None,
    seed: int = 0,
    space: dict[str, tuple[str, tuple[Any, ...]]] | None = None,
    out: str | Path | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Search ``space`` around ``config`` for the lowest validation RMSE.

    Parameters
    ----------
    ratings
        The ratings table (or an already encoded one).
    config
        Fixed settings of every trial (default: the ``accurate`` preset). It
        must carve a validation split (``valid_fraction > 0``); its seed fixes
        the split, which is the same for every trial.
    trials, timeout
        Stop after this many trials, or once ``timeout`` seconds have passed.
    seed
        Seed of Optuna's sampler, in [0, 2**32 - 1].
    space
        Config field -> search range (see :data:`DEFAULT_SPACE`).
    out
        JSON file to write the best config to (``{"config": {...}, ...}``).
    on_trial
        Called with each finished trial's summary.
    """
    check_sampler_options(seed, timeout)
    optuna = _import_optuna()
    base = config or preset("accurate")
    if base.valid_fraction <= 0:
        raise ConfigError(
            "tune needs a validation split: trials are scored on validation, never on test; "
            f"got valid_fraction {base.valid_fraction}",
            hint=f"give resrec tune --valid-fraction above 0 (e.g. {TUNE_VALID_FRACTION}), "
            "or valid_fraction in the config",
        )
    space = space or DEFAULT_SPACE
    _check_space(space)
    encoded = ratings if isinstance(ratings, Encoded) else encode_ratings(ratings)
    split = validation_only_split(len(encoded.ratings), base)

    summaries: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        changes = {name: _suggest(trial, name, kind, args) for name, (kind, args) in space.items()}
        trial_config = base.replace(**changes)

        def report(record: dict[str, float]) -> None:
            trial.report(record["valid_rmse"], int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = fit(encoded, trial_config, split=split, on_epoch=report)
        value = float(result.metrics["valid"]["rmse"])
        trial.set_user_attr("best_epoch", int(result.metrics["best_epoch"]))
        return value

    def callback(study: Any, trial: Any) -> None:
        summary = {
            "number": trial.number,
            "state": trial.state.name.lower(),
            "valid_rmse": trial.value,
            "best_epoch": trial.user_attrs.get("best_epoch"),
            "params": _jsonable(trial.params),
        }
        summaries.append(summary)
        log.info("trial %d %s: valid RMSE %s", trial.number, summary["state"], trial.value)
        if on_trial is not None:
            on_trial(summary)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
    )
    started = time.perf_counter()
    # A diverging trial (too high a learning rate) fails alone; the search goes on.
    study.optimize(
        objective,
        n_trials=trials,
        timeout=timeout,
        callbacks=[callback],
        catch=(DivergenceError,),
    )
    seconds = time.perf_counter() - started

    completed = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
    if not completed:
        raise ConfigError("no trial finished; give more trials or a longer timeout")
    best = study.best_trial
    best_config = base.replace(
        **{name: _decode(name, value) for name, value in best.params.items()}
    )
    result = TuneResult(best_config, float(best.value), summaries, seconds=seconds)
    if out is not None:
        result.path = write_best(result, Path(out), encoded)
    return result


def check_sampler_options(seed: int, timeout: float | None) -> None:
    """Refuse a sampler seed outside [0, 2**32 - 1] or a timeout that is not a finite time."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= _LARGEST_SEED:
        raise ConfigError(f"--seed must be in [0, {_LARGEST_SEED}]; got {echoed(seed)}")
    if timeout is not None and not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
    ):
        raise ConfigError(
            f"--timeout must be a finite number of seconds above 0; got {echoed(timeout)}"
        )


def validation_only_split(n_rows: int, config: TrainConfig) -> Split:
    """The config's split with its test rows removed: trials cannot score the test split."""
    full = split_ratings(
        n_rows,
        test_fraction=config.test_fraction,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
    )
    return Split(train=full.train, valid=full.valid, test=np.empty(0, dtype=np.int64))


def write_best(result: TuneResult, path: Path, encoded: Encoded) -> Path:
    """Write the best config as JSON that ``resrec train --config`` accepts."""
    config = {k: v for k, v in result.best_config.to_dict().items() if k not in _MACHINE_FIELDS}
    document = {
        "config": config,
        "valid_rmse": result.best_valid_rmse,
        "chosen_on": "validation RMSE only; the test split was not scored by any trial",
        "data": {"source": encoded.ratings.source, "sha256": encoded.ratings.sha256},
        "trials": result.trials,
        "seconds": round(result.seconds, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, (json.dumps(document, indent=2) + "\n").encode())
    log.info("wrote the best config to %s", path)
    return path


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "resrec tune needs Optuna, which is not installed",
            hint="pip install 'resrec[tune]' (or: pip install optuna)",
        ) from None
    return optuna


def _check_space(space: dict[str, tuple[str, tuple[Any, ...]]]) -> None:
    fields = set(TrainConfig().to_dict())
    for name, (kind, args) in space.items():
        if name not in fields:
            raise ConfigError(f"search space names unknown config field {name!r}")
        if kind not in ("int", "float", "log", "choice"):
            raise ConfigError(
                f"search range of {name!r} must be int, float, log or choice; got {kind!r}"
            )
        if kind != "choice" and len(args) != 2:
            raise ConfigError(f"search range of {name!r} needs (low, high); got {args!r}")


def _suggest(trial: Any, name: str, kind: str, args: tuple[Any, ...]) -> Any:
    if kind == "int":
        return trial.suggest_int(name, args[0], args[1])
    if kind == "float":
        return trial.suggest_float(name, args[0], args[1])
    if kind == "log":
        return trial.suggest_float(name, args[0], args[1], log=True)
    # Optuna's categorical values must be scalars: encode tuples as "a,b" strings.
    choices = [_encode(c) for c in args]
    return _decode(name, trial.suggest_categorical(name, choices))


def _encode(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return value


def _decode(name: str, value: Any) -> Any:
    if name in ("hidden", "betas") and isinstance(value, str):
        kind = float if name == "betas" else int
        return tuple(kind(part) for part in value.split(","))
    return value


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
