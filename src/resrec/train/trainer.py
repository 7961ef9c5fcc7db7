"""The training engine: batches, optimisers, the epoch loop and evaluation.

:meth:`Trainer.run_epoch` trains one pass over the training split and returns
that epoch's numbers as a dict; :meth:`Trainer.fit` loops over epochs, handles
early stopping and calls back after each epoch. Nothing here writes files or
prints; runs are written by :mod:`resrec.run`.

How the train figures are measured: ``train_loss`` and ``train_mse`` are the
averages over the epoch's batches of the batch loss and the batch MSE, taken
while the weights change (as Keras reports them), weighted by batch size. The
``valid_*`` and ``test_*`` figures are computed after the epoch, with the
weights at that point. ``*_loss`` and ``*_mse`` use the raw (unclipped) model
output, like the tutorial; ``*_rmse`` and ``*_mae`` use predictions clipped to
the rating scale.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from resrec.config import TrainConfig
from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, DivergenceError
from resrec.models.base import RatingModel
from resrec.train.fused import FusedEngine, unsupported_reason
from resrec.train.fused import predict_offsets as predict_fused
from resrec.train.optim import (
    LazyAdagrad,
    LazyAdam,
    LazyMomentumSGD,
    PlainSGD,
    RowOptimizer,
)

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, float]], None]


class Synchronizer(Protocol):
    """What distributed training plugs into the trainer (see resrec.train.distributed)."""

    def grads(
        self, row_index: dict[str, Tensor], row_grads: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Called after each backward pass with this process's row indices and row
        gradients; returns those of the whole global batch, having summed the dense
        gradients over processes in place."""
        ...

    def total(self, value: Tensor) -> Tensor:
        """The sum of ``value`` over all processes."""
        ...


ProgressCallback = Callable[[int, int], None]


@dataclass
class Examples:
    """Index-encoded ratings ready for the model: int64 indices, float32 ratings."""

    users: Tensor
    movies: Tensor
    ratings: Tensor

    @classmethod
    def from_numpy(cls, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray) -> Examples:
        return cls(
            torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(movies, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(ratings, dtype=np.float32)),
        )

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device) -> Examples:
        return Examples(self.users.to(device), self.movies.to(device), self.ratings.to(device))


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when a GPU is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but torch sees no GPU",
            hint="install a CUDA build of torch (see the README) or use --device cpu",
        )
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of 'auto', 'cpu', 'cuda'; got {name!r}")
    return torch.device(name)


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (0 = all cores) and return the number used."""
    n = threads or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


class Trainer:
    """Trains a :class:`RatingModel` on ``train`` and scores it on named eval sets.

    Parameters
    ----------
    model
        The network to train, in place.
    config
        Optimiser, batch and schedule settings.
    train
        The training examples; the model is fitted to ``rating - mu``.
    mu
        Mean training rating, added back to every prediction.
    scale
        The rating scale predictions are clipped to for RMSE and MAE.
    eval_sets
        Name -> examples scored after each epoch (``"valid"``, ``"test"``).
    """

    def __init__(
        self,
        model: RatingModel,
        config: TrainConfig,
        train: Examples,
        *,
        mu: float,
        scale: RatingScale,
        eval_sets: dict[str, Examples] | None = None,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
        sync: Synchronizer | None = None,
        fused: bool | None = None,
    ) -> None:
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.config = config
        self.train = train.to(self.device)
        self.mu = float(mu)
        self.scale = scale
        self.eval_sets = {k: v.to(self.device) for k, v in (eval_sets or {}).items() if len(v)}
        self.generator = generator or torch.Generator().manual_seed(config.seed)

        self.rank, self.world_size = shard
        self.sync = sync
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best_rmse = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.stopped = False
        self.seconds = 0.0  # wall seconds of training so far, earlier sessions included
        self._targets = self.train.ratings - self.mu
        self._l2_scale = self._count_scale() if config.l2_count_power != 1 else None
        self.row_optimizer = self._make_row_optimizer()
        self.dense_optimizer = self._make_dense_optimizer()
        self.fused = self._make_fused(fused)

    # -- construction ---------------------------------------------------------

    def _make_row_optimizer(self) -> RowOptimizer:
        c = self.config
        tables = {name: t.weight.data for name, (t, _) in self.model.row_tables().items()}
        if c.optimizer == "sgd":
            if c.momentum == 0:
                return PlainSGD(tables, c.lr)
            return LazyMomentumSGD(tables, c.lr, c.momentum)
        if c.optimizer == "adam":
            return LazyAdam(tables, c.lr, c.betas, c.eps)
        return LazyAdagrad(tables, c.lr, c.eps)

    def _make_dense_optimizer(self) -> torch.optim.Optimizer | None:
        c = self.config
        params = self.model.dense_parameters()
        if not params:
            return None
        # The implicit-feedback table y has its own weight decay, l2_implicit.
        implicit = getattr(self.model, "implicit_factors", None)
        groups: list[dict[str, Any]] = [{"params": params}]
        if implicit is not None:
            groups = [
                {"params": [p for p in params if p is not implicit.weight]},
                {"params": [implicit.weight], "weight_decay": c.l2_implicit},
            ]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.l2_dense)
        if c.optimizer == "adam":
            return torch.optim.Adam(
                groups, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.l2_dense, foreach=True
            )
        return torch.optim.Adagrad(groups, lr=c.lr, eps=c.eps, weight_decay=c.l2_dense)

    def _count_scale(self) -> dict[str, Tensor]:
        """Per row, n ** (l2_count_power - 1), n being its number of training ratings.

        A row occurs n times an epoch, so its l2 per epoch is proportional to
        n ** l2_count_power.
        """
        power = self.config.l2_count_power - 1
        counts = {
            "user": torch.bincount(self.train.users, minlength=self.model.n_users),
            "movie": torch.bincount(self.train.movies, minlength=self.model.n_movies),
        }
        return {
            side: n.clamp(min=1).to(torch.float64).pow(power).to(torch.float32)
            for side, n in counts.items()
        }

    def _make_fused(self, wanted: bool | None) -> FusedEngine | None:
        """The autograd-free step of :mod:`resrec.train.fused` where it applies.

        ``wanted``: None uses it when it can; False never; True insists.
        """
        reason = unsupported_reason(self.model, self.row_optimizer, self.dense_optimizer)
        if self.sync is not None or self.world_size != 1 or self.device.type != "cpu":
            reason = "distributed or non-CPU training"
        if self._l2_scale is not None:
            reason = "l2_count_power is not 1"
        if wanted is False or (reason is not None and wanted is None):
            return None
        if reason is not None:
            raise ConfigError(f"the fused training step cannot be used: {reason}")
        return FusedEngine(self.model, self.row_optimizer, self.dense_optimizer, l2=self.config.l2)

    # -- one epoch --------------------------------------------------------------

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch`` under the configured schedule."""
        c = self.config
        if c.schedule == "step":
            return c.lr * c.schedule_gamma ** (epoch // c.schedule_step)
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * epoch / c.epochs))
        return c.lr

    def _set_lr(self, lr: float) -> None:
        self.row_optimizer.lr = lr
        if self.dense_optimizer is not None:
            for group in self.dense_optimizer.param_groups:
                group["lr"] = lr

    def run_epoch(self, progress: ProgressCallback | None = None) -> dict[str, float]:
        """Train one epoch, score the eval sets and return the epoch's figures."""
        started = time.perf_counter()
        lr = self.learning_rate(self.epoch)
        self._set_lr(lr)
        train_loss, train_mse = self._train_pass(progress)
        self.row_optimizer.flush(self.step)
        train_seconds = time.perf_counter() - started

        self.epoch += 1
        record: dict[str, float] = {
            "epoch": self.epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_mse": train_mse,
        }
        for name, examples in self.eval_sets.items():
            scores = self.evaluate(examples)
            # Evaluation loss is the plain MSE: the L2 term is a training device only.
            record[f"{name}_loss"] = scores["mse"]
            for key in ("mse", "rmse", "mae"):
                record[f"{name}_{key}"] = scores[f"{key}_clipped" if key != "mse" else key]
        record["train_seconds"] = train_seconds
        record["elapsed_seconds"] = time.perf_counter() - started
        self.history.append(record)
        return record

    def _train_pass(self, progress: ProgressCallback | None) -> tuple[float, float]:
        if self.fused is not None:
            self.model.train()
            return self.fused.train_pass(self, progress)
        model, c = self.model, self.config
        model.train()
        tables = model.row_tables()

        order = self.epoch_order().to(self.device)
        users = self.train.users.index_select(0, order)
        movies = self.train.movies.index_select(0, order)
        targets = self._targets.index_select(0, order)

        n = len(self.train)
        n_batches = (n + c.batch_size - 1) // c.batch_size
        losses = torch.zeros(n_batches, dtype=torch.float64, device=self.device)
        sq_errors = torch.zeros(n_batches, dtype=torch.float64, device=self.device)
        check_every = 256

        for b in range(n_batches):
            # This process's share of global batch b (all of it with one process).
            lo, hi = self._shard_bounds(b * c.batch_size, min((b + 1) * c.batch_size, n))
            batch_size = min((b + 1) * c.batch_size, n) - b * c.batch_size
            index = {"user": users[lo:hi], "movie": movies[lo:hi]}
            self.step += 1

            rows = {
                name: table.weight.detach().index_select(0, index[side]).requires_grad_()
                for name, (table, side) in tables.items()
            }
            derived = model.derived_rows(index["user"], index["movie"])
            err = model.forward_rows({**rows, **derived}) - targets[lo:hi]
            sq = (err * err).sum()
            # Divide by the global batch size so gradients add up across processes.
            loss = sq / batch_size
            if c.l2 > 0:
                loss = loss + c.l2 * self._penalty(tables, rows, index) / batch_size

            if self.dense_optimizer is not None:
                self.dense_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            row_index = {name: index[side] for name, (_, side) in tables.items()}
            row_grads = {name: _grad(rows[name]) for name in tables}
            if self.sync is not None:
                row_index, row_grads = self.sync.grads(row_index, row_grads)
            if self.dense_optimizer is not None:
                self.dense_optimizer.step()
            for name in tables:
                self.row_optimizer.update(name, row_index[name], row_grads[name], self.step)

            losses[b] = loss.detach() * batch_size
            sq_errors[b] = sq.detach()
            if (b + 1) % check_every == 0 or b + 1 == n_batches:
                self._check_finite(losses, b, check_every)
                if progress is not None:
                    progress(b + 1, n_batches)

        totals = torch.stack([losses.sum(), sq_errors.sum()])
        if self.sync is not None:
            totals = self.sync.total(totals)
        return float(totals[0]) / n, float(totals[1]) / n

    def epoch_order(self) -> Tensor:
        """The order in which this epoch visits the training ratings (drawn on the CPU).

        A plain shuffle, unless ``config.user_chunk`` is set: then each user's
        ratings, shuffled, are cut into chunks of that many, and the chunks are
        shuffled. A batch then holds the ratings of fewer distinct users, which
        makes the implicit-feedback term (a sum over each batch user's rated
        movies) that much cheaper. Every rating is still visited once an epoch.
        """
        n = len(self.train)
        order = torch.randperm(n, generator=self.generator)
        chunk = self.config.user_chunk
        if chunk == 0:
            return order
        users = self.train.users.cpu()
        order = order[torch.argsort(users[order], stable=True)]  # by user, shuffled within
        counts = torch.bincount(users, minlength=self.model.n_users)
        starts = counts.cumsum(0) - counts
        rank = torch.arange(n) - starts.index_select(0, users[order])
        chunk_id = torch.cumsum(rank % chunk == 0, 0) - 1
        n_chunks = int(chunk_id[-1]) + 1 if n else 0
        key = torch.randperm(n_chunks, generator=self.generator).index_select(0, chunk_id)
        return order[torch.argsort(key, stable=True)]

    def _penalty(
        self,
        tables: dict[str, tuple[nn.Embedding, str]],
        rows: dict[str, Tensor],
        index: dict[str, Tensor],
    ) -> Tensor:
        """Sum of squares of the batch's rows, each scaled by its count (see l2_count_power)."""
        if self._l2_scale is None:
            return sum((r * r).sum() for r in rows.values())  # type: ignore[return-value]
        total = torch.zeros((), device=self.device)
        for name, (_, side) in tables.items():
            scale = self._l2_scale[side].index_select(0, index[side])
            total = total + ((rows[name] * rows[name]).sum(-1) * scale).sum()
        return total

    def _shard_bounds(self, lo: int, hi: int) -> tuple[int, int]:
        """The part of rows ``lo:hi`` that this process trains on."""
        if self.world_size == 1:
            return lo, hi
        size = hi - lo
        start = lo + (size * self.rank) // self.world_size
        stop = lo + (size * (self.rank + 1)) // self.world_size
        return start, stop

    def _check_finite(self, losses: Tensor, b: int, window: int) -> None:
        recent = losses[max(0, b + 1 - window) : b + 1]
        if bool(torch.isfinite(recent).all()):
            return
        first = int(torch.nonzero(~torch.isfinite(recent))[0]) + max(0, b + 1 - window)
        raise DivergenceError(
            f"training diverged: the loss became {float(losses[first])} at epoch "
            f"{self.epoch + 1}, step {first + 1} of the epoch",
            hint=f"lower the learning rate (now {self.row_optimizer.lr:g}) or add l2",
        )

    # -- evaluation -------------------------------------------------------------

    @torch.no_grad()
    def predict_offsets(self, examples: Examples) -> Tensor:
        """Raw model outputs (prediction minus mu, unclipped) for every example."""
        self.model.eval()
        if self.fused is not None:
            return predict_fused(self.model, examples.users, examples.movies)
        out = torch.empty(len(examples), dtype=torch.float32, device=self.device)
        size = self.config.eval_batch_size
        for lo in range(0, len(examples), size):
            hi = min(lo + size, len(examples))
            out[lo:hi] = self.model(examples.users[lo:hi], examples.movies[lo:hi])
        return out

    def evaluate(self, examples: Examples) -> dict[str, float]:
        """MSE of the raw output, and RMSE/MAE of the clipped predictions."""
        offsets = self.predict_offsets(examples).to(torch.float64)
        err = offsets - (examples.ratings.to(torch.float64) - self.mu)  # on the device
        clipped = (offsets + self.mu).clamp(self.scale.low, self.scale.high)
        err_clipped = clipped - examples.ratings.to(torch.float64)
        mse = float((err * err).mean())
        mse_clipped = float((err_clipped * err_clipped).mean())
        if not (math.isfinite(mse) and math.isfinite(mse_clipped)):
            raise DivergenceError(
                f"the model's predictions are not finite after epoch {self.epoch}",
                hint="lower the learning rate or add l2",
            )
        return {
            "mse": mse,
            "mse_clipped": mse_clipped,
            "rmse_clipped": math.sqrt(mse_clipped),
            "mae_clipped": float(err_clipped.abs().mean()),
        }

    # -- the loop ---------------------------------------------------------------

    def fit(
        self,
        *,
        on_epoch: EpochCallback | None = None,
        progress: Callable[[int], ProgressCallback | None] | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``config.epochs`` or early stopping; return the history.

        With ``config.early_stopping = k`` (which needs a validation set) the loop
        stops once validation RMSE has not improved for ``k`` epochs, restores the
        weights of the epoch with the lowest validation RMSE and reports it as
        ``best_epoch``. Otherwise the last epoch's weights are kept and
        ``best_epoch`` is the last epoch. The test set is never looked at.
        """
        c = self.config
        while self.epoch < c.epochs and not self.stopped:
            record = self.run_epoch(progress(self.epoch + 1) if progress else None)
            self._track_best(record)
            if on_epoch is not None:
                on_epoch(record)
        if c.early_stopping and self.best_state is not None and self.best_epoch != self.epoch:
            self.model.load_state_dict(self.best_state)
        elif not c.early_stopping:
            self.best_epoch = self.epoch  # the weights kept are the last epoch's
        return self.history

    def _track_best(self, record: dict[str, float]) -> None:
        if "valid_rmse" not in record:
            self.best_epoch = self.epoch
            return
        if record["valid_rmse"] < self.best_rmse:
            self.best_rmse, self.best_epoch = record["valid_rmse"], self.epoch
            if self.config.early_stopping:
                self.best_state = _clone_state(self.model)
        elif (
            self.config.early_stopping
            and self.epoch - self.best_epoch >= self.config.early_stopping
        ):
            log.info("early stop after epoch %d (best %d, kept)", self.epoch, self.best_epoch)
            self.stopped = True

    # -- checkpoints ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stands."""
        return {
            "model": _clone_state(self.model),
            "row_optimizer": self.row_optimizer.state_dict(),
            "dense_optimizer": (
                None if self.dense_optimizer is None else self.dense_optimizer.state_dict()
            ),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "history": [dict(row) for row in self.history],
            "best_rmse": self.best_rmse,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "stopped": self.stopped,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.row_optimizer.load_state_dict(state["row_optimizer"])
        if self.dense_optimizer is not None and state["dense_optimizer"] is not None:
            self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.best_rmse = float(state["best_rmse"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.stopped = bool(state["stopped"])
        # A checkpoint written before "seconds" was kept: the epochs' own timings.
        seconds = state.get("seconds")
        if seconds is None:
            seconds = sum(float(row.get("elapsed_seconds", 0.0)) for row in self.history)
        self.seconds = float(seconds)

    def adopt_patience(self) -> None:
        """Apply ``config.early_stopping`` to a history trained under another patience.

        Whether training has stopped is decided again from the history; when
        early stopping is turned on, the current weights become the best
        epoch's, which :func:`early_stop` must have found to be the last one.
        """
        stop, best = early_stop(self.history, self.config.early_stopping)
        self.stopped = stop is not None
        if self.config.early_stopping and self.best_state is None and best == self.epoch:
            self.best_state = _clone_state(self.model)


def early_stop(history: list[dict[str, float]], patience: int) -> tuple[int | None, int]:
    """Replay early stopping with ``patience`` over ``history``: (stop epoch, best epoch).

    The stop epoch is the first epoch after which :meth:`Trainer.fit` would
    have stopped (None: it would not have stopped, or ``patience`` is 0); the
    best epoch is that of the lowest validation RMSE up to there (the last
    epoch without a validation split).
    """
    best_rmse, best_epoch = math.inf, 0
    for row in history:
        epoch = int(row["epoch"])
        if "valid_rmse" not in row:
            best_epoch = epoch
        elif row["valid_rmse"] < best_rmse:
            best_rmse, best_epoch = row["valid_rmse"], epoch
        elif patience and epoch - best_epoch >= patience:
            return epoch, best_epoch
    return None, best_epoch


def _grad(row: Tensor) -> Tensor:
    grad = row.grad
    if grad is None:  # a table unused by forward_rows
        return torch.zeros_like(row)
    return grad


def _clone_state(model: nn.Module) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
