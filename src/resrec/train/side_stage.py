"""The second stage of a residual model whose side branch reads movie ratings.

:func:`train_ratings_side` trains a
:class:`~resrec.models.autoencoder.MovieRatingsSide` after the main branch has
been trained (and, with early stopping, restored to its best epoch), with the
main branch frozen: the side branch learns what the main branch leaves over,
``r - mu - main(u, m)``. Each step takes :data:`MOVIES_PER_BATCH` movies and
all their training ratings, encodes the movies from those ratings and decodes
them at the users who rated them. Per epoch the objective is::

    sum over training ratings of (side(u, m) - residual)^2
        + side_l2 / 2 * (|V|^2 + |W|^2)

(V the encoder, W the decoder; the biases are not penalised), minimised with
Adam at ``side_lr``. Every movie's code is refreshed after each epoch, the
validation and test figures are those of the whole model, and the epoch goes
into the trainer's history with the next epoch number. Early stopping (the
config's patience, or 5 without one) keeps the epoch with the lowest
validation RMSE; if that does not beat the main branch alone by
:data:`MIN_GAIN`, the side branch is set to zero and the model is the main
branch. Without a validation split the
stage runs ``side_epochs`` epochs and keeps the last.

Limitations
    The stage writes no checkpoints of its own: a run interrupted during it
    resumes from the main branch's last checkpoint and trains the side stage
    again, to the same result. With several processes, every process trains
    the stage alike on the whole training split.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from resrec.errors import DivergenceError
from resrec.models.autoencoder import MovieRatings, MovieRatingsSide

if TYPE_CHECKING:
    from resrec.train.trainer import EpochCallback, Trainer

log = logging.getLogger(__name__)

MOVIES_PER_BATCH = 256
DEFAULT_PATIENCE = 5
MIN_GAIN = 0.001  # validation RMSE the side branch must gain over the main branch alone


def train_ratings_side(trainer: Trainer, *, on_epoch: EpochCallback | None = None) -> None:
    """Train ``trainer.model.ratings_side`` on the main branch's residuals, in place.

    Appends one history row per epoch to ``trainer.history`` and moves
    ``trainer.epoch`` and ``trainer.best_epoch`` on; ``trainer.best_rmse``
    ends as the validation RMSE of the model kept.
    """
    model, config = trainer.model, trainer.config
    side = model.ratings_side
    if not isinstance(side, MovieRatingsSide):
        raise TypeError("the model has no movie_ratings side branch")
    train = trainer.train
    data = MovieRatings(train.users, train.movies, train.ratings, model.n_movies)

    # While the codes are 0 the model is its main branch alone.
    main_rmse = _valid_rmse(trainer)
    with torch.no_grad():
        residual = trainer._targets - trainer.predict_offsets(train)
        side.refresh_codes(data)
    targets = residual.index_select(0, data.rows)
    optimizer = torch.optim.Adam(side.parameters(), lr=config.side_lr)
    movies = torch.nonzero(data.counts > 0).squeeze(1)
    patience = config.early_stopping or DEFAULT_PATIENCE

    main_best = trainer.best_epoch
    best_rmse, best_epoch = main_rmse, main_best
    last_gain = trainer.epoch  # patience counts from the stage's start or its best epoch
    best_state: dict[str, Any] | None = None
    log.info(
        "side stage from epoch %d: a side branch reading movie ratings, trained on the "
        "main branch's residuals (main branch alone: validation RMSE %.4f)",
        trainer.epoch + 1,
        main_rmse,
    )
    for _ in range(config.side_epochs):
        record = _epoch(trainer, side, data, targets, movies, optimizer)
        trainer.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        valid = record.get("valid_rmse", math.nan)
        if not math.isfinite(valid) or valid < best_rmse:
            best_rmse, best_epoch = valid, trainer.epoch
            last_gain = trainer.epoch
            best_state = {k: v.detach().clone() for k, v in side.state_dict().items()}
        elif trainer.epoch - last_gain >= patience:
            break

    if best_state is not None and best_rmse > main_rmse - MIN_GAIN:
        best_state = None  # a gain within the validation split's noise
    if best_state is None:
        log.info(
            "side stage: no epoch beat the main branch alone by %g; the side branch is zero",
            MIN_GAIN,
        )
        best_rmse, best_epoch = main_rmse, main_best
        with torch.no_grad():
            side.decoder.zero_()
            side.decoder_bias.zero_()
    else:
        side.load_state_dict(best_state)
    trainer.best_rmse, trainer.best_epoch = best_rmse, best_epoch


def _valid_rmse(trainer: Trainer) -> float:
    """Validation RMSE of the model as it stands; NaN without a validation split."""
    valid = trainer.eval_sets.get("valid")
    if valid is None:
        return math.nan
    return trainer.evaluate(valid)["rmse_clipped"]


def _epoch(
    trainer: Trainer,
    side: MovieRatingsSide,
    data: MovieRatings,
    targets: torch.Tensor,
    movies: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> dict[str, float]:
    """One pass over the movies in a seeded order; the epoch's history row."""
    config = trainer.config
    started = time.perf_counter()
    side.train()
    order = movies.index_select(0, torch.randperm(movies.shape[0], generator=trainer.generator))
    sq_total = penalty_total = 0.0
    for lo in range(0, order.shape[0], MOVIES_PER_BATCH):
        batch = order[lo : lo + MOVIES_PER_BATCH]
        where, owner = data.entries(batch)
        codes = side.encode(data, batch)  # (movies in batch, units)
        err = side.score(data.users.index_select(0, where), codes.index_select(0, owner))
        err = err - targets.index_select(0, where)
        sq = (err * err).sum()
        penalty = config.side_l2 / 2 * side.penalty() * (batch.shape[0] / movies.shape[0])
        optimizer.zero_grad(set_to_none=True)
        (sq + penalty).backward()
        optimizer.step()
        sq_total += float(sq.detach())
        penalty_total += float(penalty.detach())
        trainer.step += 1
    if not math.isfinite(sq_total + penalty_total):
        raise DivergenceError(
            f"training diverged in the side stage: the loss became {sq_total} at epoch "
            f"{trainer.epoch + 1}",
            hint=f"lower side_lr (now {config.side_lr:g}) or raise side_l2",
        )
    side.eval()
    side.refresh_codes(data)
    train_seconds = time.perf_counter() - started

    trainer.epoch += 1
    n = len(trainer.train)
    record: dict[str, float] = {
        "epoch": trainer.epoch,
        "lr": config.side_lr,
        "train_loss": (sq_total + penalty_total) / n,
        "train_mse": sq_total / n,
    }
    for name, examples in trainer.eval_sets.items():
        scores = trainer.evaluate(examples)
        record[f"{name}_loss"] = scores["mse"]
        for key in ("mse", "rmse", "mae"):
            record[f"{name}_{key}"] = scores[f"{key}_clipped" if key != "mse" else key]
    record["train_seconds"] = train_seconds
    record["elapsed_seconds"] = time.perf_counter() - started
    return record
