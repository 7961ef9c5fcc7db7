"""The Python API of a training run: encode, split, build, fit, score.

>>> ratings = resrec.read_ratings("ml-100k/u.data")
>>> result = resrec.fit(ratings, resrec.preset("tutorial"))
>>> result.metrics["test"]["rmse"]

Each step is also available on its own: :func:`resrec.ids.encode`,
:func:`resrec.split.split_ratings`, :func:`resrec.models.build_model` and
:class:`resrec.train.Trainer`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from resrec.config import TrainConfig, check_model_memory
from resrec.data.ratings import Ratings, RatingScale
from resrec.errors import ConfigError
from resrec.ids import IdMap, encode
from resrec.metrics import rating_metrics
from resrec.models.base import RatingModel, build_model
from resrec.models.baselines import DirectFitModel
from resrec.split import Split, cold_counts, split_ratings
from resrec.train.checkpoint import Checkpointer, restore
from resrec.train.distributed import GradientSync, Process, check_replicas
from resrec.train.fused import predict_offsets
from resrec.train.trainer import (
    EpochCallback,
    Examples,
    ProgressCallback,
    Trainer,
    early_stop,
    set_threads,
)

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    """A ratings table with its id maps and int32 user and movie index columns."""

    ratings: Ratings
    user_map: IdMap
    movie_map: IdMap
    users: np.ndarray
    movies: np.ndarray

    def examples(self, rows: np.ndarray) -> Examples:
        return Examples.from_numpy(self.users[rows], self.movies[rows], self.ratings.rating[rows])


def encode_ratings(ratings: Ratings) -> Encoded:
    """Give every user and movie of ``ratings`` a contiguous index.

    Like the tutorial's preprocessing, indices cover every user and movie in
    the file, including those that end up only in the test split.
    """
    user_map, movie_map, users, movies = encode(ratings.user_id, ratings.movie_id)
    return Encoded(ratings, user_map, movie_map, users, movies)


@dataclass
class TrainResult:
    """Everything a finished training produced; :func:`resrec.run.save_run` writes it."""

    model: RatingModel
    config: TrainConfig
    user_map: IdMap
    movie_map: IdMap
    mu: float
    scale: RatingScale
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    train_users: np.ndarray  # user index of each training rating
    train_movies: np.ndarray  # movie index of each training rating
    data: dict[str, Any] = field(default_factory=dict)
    trainer: Trainer | None = None

    def predict(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """Clipped predictions for raw ids (unknown ids raise)."""
        users = self.user_map.index_of(user_ids)
        movies = self.movie_map.index_of(movie_ids)
        return predict_indices(self.model, self.mu, self.scale, users, movies)


def predict_indices(
    model: RatingModel,
    mu: float,
    scale: RatingScale,
    users: np.ndarray,
    movies: np.ndarray,
) -> np.ndarray:
    """Predictions for user and movie indices, clipped to ``scale``, as float32.

    Models the fused step supports are evaluated by its fused forward pass
    (:func:`resrec.train.fused.predict_offsets`), others by their ``forward``
    in blocks.
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    model.eval()
    u = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)).to(device)
    m = torch.from_numpy(np.ascontiguousarray(movies, dtype=np.int64)).to(device)
    with torch.no_grad():
        offsets = predict_offsets(model, u, m)
    out = offsets.cpu().numpy().astype(np.float32, copy=False)
    out += np.float32(mu)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the model produced a non-finite prediction")
    return np.clip(out, scale.low, scale.high)


def make_split(encoded: Encoded, config: TrainConfig) -> Split:
    return split_ratings(
        len(encoded.ratings),
        test_fraction=config.test_fraction,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
    )


def describe_split(encoded: Encoded, split: Split) -> dict[str, Any]:
    """Sizes and cold-start counts of each held-out partition."""
    info: dict[str, Any] = {"sizes": split.sizes()}
    for name in ("valid", "test"):
        rows = getattr(split, name)
        if rows.size:
            info[f"cold_{name}"] = cold_counts(
                encoded.users[split.train],
                encoded.movies[split.train],
                encoded.users[rows],
                encoded.movies[rows],
                len(encoded.user_map),
                len(encoded.movie_map),
            )
    return info


def fit(
    ratings: Ratings | Encoded,
    config: TrainConfig,
    *,
    split: Split | None = None,
    on_epoch: EpochCallback | None = None,
    progress: Callable[[int], ProgressCallback | None] | None = None,
    checkpointer: Checkpointer | None = None,
    resume: dict[str, Any] | None = None,
    process: Process | None = None,
) -> TrainResult:
    """Encode, split, build and train; return the model with its history and metrics.

    Parameters
    ----------
    checkpointer
        Writes a checkpoint after every epoch (see :mod:`resrec.train.checkpoint`).
    resume
        A checkpoint (from :func:`resrec.train.checkpoint.load_checkpoint`) to
        continue from; ``ratings`` and ``config`` must be those it was trained on.
    process
        This process's place in a distributed training (see
        :mod:`resrec.train.distributed`); every rank calls ``fit`` alike.

    Dropout draws from torch's global generator, which this seeds with
    ``config.seed + rank``. A resumed training's ``train_seconds`` counts the
    time before the interruption too (kept in the checkpoint), as
    ``train_seconds_before_resume`` tells.
    """
    threads = set_threads(config.threads or _auto_threads(config, process))
    encoded = ratings if isinstance(ratings, Encoded) else encode_ratings(ratings)
    split = split or make_split(encoded, config)
    if split.train.size == 0:
        raise ConfigError(
            f"the training split is empty: {len(encoded.ratings)} rating(s) with "
            f"test_fraction {config.test_fraction} and valid_fraction {config.valid_fraction}",
            hint="use more ratings or smaller --test-fraction / --valid-fraction",
        )
    split_info = describe_split(encoded, split)
    log.info("split sizes %s", split_info["sizes"])

    train = encoded.examples(split.train)
    mu = float(train.ratings.to(dtype=torch.float64).mean())
    rank = 0 if process is None else process.rank
    torch.manual_seed(config.seed + rank)  # dropout draws from torch's global generator
    check_model_memory(config, len(encoded.user_map), len(encoded.movie_map))
    model = build_model(config, len(encoded.user_map), len(encoded.movie_map), seed=config.seed)
    model.set_rated(encoded.users[split.train], encoded.movies[split.train])  # N(u), if used
    eval_sets = {"valid": encoded.examples(split.valid), "test": encoded.examples(split.test)}
    trainer = Trainer(
        model,
        config,
        train,
        mu=mu,
        scale=encoded.ratings.scale,
        eval_sets=eval_sets,
        shard=(0, 1) if process is None else process.shard,
        sync=None if process is None else GradientSync(model, config.batch_size, process),
    )
    resumed_from = _resume(trainer, config, resume, rank)
    report = on_epoch  # the side stage reports its epochs but writes no checkpoints
    if checkpointer is not None:
        checkpointer.preflight(trainer)
    before = trainer.seconds  # training time of the epochs before a resume
    started = time.perf_counter()

    def clock() -> float:
        return before + time.perf_counter() - started

    if checkpointer is not None:
        on_epoch = _with_checkpoints(trainer, checkpointer, on_epoch, clock)
    if isinstance(model, DirectFitModel):
        # A resumed baseline was fitted before its checkpoint: nothing left to do.
        history = trainer.history if trainer.epoch else _fit_direct(model, trainer, on_epoch)
    else:
        history = trainer.fit(on_epoch=on_epoch, progress=progress)
    side_stage = _train_side_stage(trainer, resume, report)
    trainer.seconds = clock()
    check_replicas(model, process)

    metrics: dict[str, Any] = {"train_seconds": trainer.seconds, "threads": threads}
    if process is not None:
        metrics["processes"] = process.world_size
    if resumed_from is not None:
        metrics["resumed_from_epoch"] = resumed_from
        metrics["train_seconds_before_resume"] = before
    metrics["epochs_run"] = trainer.epoch
    metrics["best_epoch"] = trainer.best_epoch
    if side_stage is not None:
        metrics["side_stage"] = side_stage
    for name, examples in eval_sets.items():
        if len(examples):
            rows = getattr(split, name)
            pred = predict_indices(
                model, mu, encoded.ratings.scale, encoded.users[rows], encoded.movies[rows]
            )
            metrics[name] = rating_metrics(pred, encoded.ratings.rating[rows])
    metrics["split"] = split_info
    return TrainResult(
        model=model,
        config=config,
        user_map=encoded.user_map,
        movie_map=encoded.movie_map,
        mu=mu,
        scale=encoded.ratings.scale,
        history=history,
        metrics=metrics,
        train_users=encoded.users[split.train],
        train_movies=encoded.movies[split.train],
        data=data_info(encoded.ratings),
        trainer=trainer,
    )


def _train_side_stage(
    trainer: Trainer, resume: dict[str, Any] | None, report: EpochCallback | None
) -> dict[str, Any] | None:
    """Train a movie_ratings side branch after the main branch; its summary, or None.

    A resumed run's history holds the main branch's epochs only (the side
    stage writes no checkpoints), so the stage always runs from its start.
    """
    if getattr(trainer.model, "ratings_side", None) is None:
        return None
    from resrec.train.side_stage import train_ratings_side

    main_epochs, main_best = trainer.epoch, trainer.best_epoch
    del trainer.history[main_epochs:]
    train_ratings_side(trainer, on_epoch=report)
    return {
        "main_epochs": main_epochs,
        "main_best_epoch": main_best,
        "epochs": trainer.epoch - main_epochs,
        "best_epoch": trainer.best_epoch if trainer.best_epoch > main_epochs else None,
    }


def _fit_direct(
    model: DirectFitModel, trainer: Trainer, on_epoch: EpochCallback | None
) -> list[dict[str, float]]:
    """Fit a closed-form baseline and record it as epoch 1 with the trainer's columns.

    ``train_loss`` equals ``train_mse`` (no penalty term is reported), and the
    validation and test columns are scored exactly as after a trained epoch.
    """
    started = time.perf_counter()
    train = trainer.train
    model.fit_direct(train.users, train.movies, train.ratings - trainer.mu)
    train_seconds = time.perf_counter() - started

    train_mse = trainer.evaluate(train)["mse"]
    record: dict[str, float] = {
        "epoch": 1,
        "lr": 0.0,
        "train_loss": train_mse,
        "train_mse": train_mse,
    }
    for name, examples in trainer.eval_sets.items():
        scores = trainer.evaluate(examples)
        record[f"{name}_loss"] = scores["mse"]
        record[f"{name}_mse"] = scores["mse"]
        record[f"{name}_rmse"] = scores["rmse_clipped"]
        record[f"{name}_mae"] = scores["mae_clipped"]
    record["train_seconds"] = train_seconds
    record["elapsed_seconds"] = time.perf_counter() - started

    trainer.epoch = trainer.best_epoch = 1
    trainer.history.append(record)
    if on_epoch is not None:
        on_epoch(record)
    return trainer.history


def _auto_threads(config: TrainConfig, process: Process | None = None) -> int:
    """Small batches run faster on one thread: the per-op threading cost dominates.

    Processes sharing a machine share its cores.
    """
    if config.batch_size < 1024:
        return 1
    if process is not None and process.local_world_size > 1:
        return max(1, (os.cpu_count() or 1) // process.local_world_size)
    return 0


# Config fields a resumed training may not change: they decide the split or the model.
_FIXED_ON_RESUME = (
    "model",
    "embedding_dim",
    "hidden",
    "activation",
    "batch_norm",
    "implicit_feedback",
    "side_input",
    "side_units",
    "optimizer",
    "test_fraction",
    "valid_fraction",
    "seed",
)


def check_resume(checkpoint: dict[str, Any], config: TrainConfig) -> None:
    """Refuse a ``config`` that cannot continue ``checkpoint`` into a consistent run.

    Fields that decide the split or the model cannot change; ``epochs`` cannot
    fall below the epochs already trained; a changed ``early_stopping`` must
    not have stopped the training before its last epoch, and turning it on
    needs the last epoch to be the best so far (the best epoch's weights were
    not kept without it).
    """
    saved = TrainConfig.from_dict(checkpoint["config"])
    changed = [k for k in _FIXED_ON_RESUME if getattr(saved, k) != getattr(config, k)]
    if changed:
        raise ConfigError(
            f"cannot resume with a different {', '.join(changed)}: these decide the split "
            "and the model",
            hint="resume without changing them, or start a new run",
        )
    state = checkpoint["trainer"]
    trained, history = int(state["epoch"]), state["history"]
    if config.epochs < trained:
        raise ConfigError(
            f"epochs {config.epochs} is below the {trained} epochs the checkpoint has "
            "already trained",
            hint=f"resume with --epochs {trained} or more, or without --epochs to train "
            f"to the run's {saved.epochs}",
        )
    patience = config.early_stopping
    if patience == saved.early_stopping or patience == 0:
        return
    stop, best = early_stop(history, patience)
    if stop is not None and stop < trained:
        raise ConfigError(
            f"early_stopping {patience} would have stopped the training after epoch {stop}, "
            f"but the checkpoint has already trained {trained} epochs",
            hint=f"resume with --early-stopping {_longest_wait(history) + 1} or more, or "
            f"without --early-stopping (the run's is {saved.early_stopping})",
        )
    if saved.early_stopping == 0 and best != trained:
        raise ConfigError(
            f"cannot turn on early stopping when resuming after epoch {trained}: the best "
            f"epoch so far is {best}, and its weights were not kept",
            hint="resume without --early-stopping, or start a new run with it",
        )


def _longest_wait(history: list[dict[str, float]]) -> int:
    """The most epochs without a validation gain before the last epoch of ``history``."""
    longest = 0
    for n, row in enumerate(history[:-1], start=1):
        _, best = early_stop(history[:n], 0)
        longest = max(longest, int(row["epoch"]) - best)
    return longest


def _resume(
    trainer: Trainer, config: TrainConfig, checkpoint: dict[str, Any] | None, rank: int
) -> int | None:
    """Load ``checkpoint`` into ``trainer``; return the epoch it continues from."""
    if checkpoint is None:
        return None
    check_resume(checkpoint, config)
    restore(trainer, checkpoint, rank=rank)
    if config.early_stopping != checkpoint["config"].get("early_stopping", 0):
        trainer.adopt_patience()
    log.info("resuming after epoch %d", trainer.epoch)
    return trainer.epoch


def _with_checkpoints(
    trainer: Trainer,
    checkpointer: Checkpointer,
    on_epoch: EpochCallback | None,
    clock: Callable[[], float],
) -> EpochCallback:
    def after_epoch(record: dict[str, float]) -> None:
        trainer.seconds = clock()
        checkpointer.save(trainer)
        if on_epoch is not None:
            on_epoch(record)

    return after_epoch


def data_info(ratings: Ratings) -> dict[str, Any]:
    return {
        "source": ratings.source,
        "sha256": ratings.sha256,
        "layout": ratings.layout,
        "scale": ratings.scale.to_dict(),
        "n_ratings": len(ratings),
        "n_users": ratings.n_users,
        "n_movies": ratings.n_movies,
        "notes": list(ratings.notes),
    }
