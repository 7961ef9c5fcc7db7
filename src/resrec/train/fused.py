"""A fused training step without autograd, for the common models on the CPU.

The autograd path of :class:`~resrec.train.trainer.Trainer` spends most of a
small batch's time dispatching small operations: building the graph, four
row gathers, four row-optimiser updates of about twenty operations each and a
dense optimiser. This module computes the same step with a hand-written
backward pass and about forty operations in all, on buffers allocated once.

What it handles
    :class:`~resrec.models.residual.ResidualNet`, :class:`~resrec.models.residual.MFNet`
    and :class:`~resrec.models.residual.DeepNet` with no hidden layer or one,
    activation ``elu``, ``relu``, ``tanh`` or ``identity``, no dropout and no
    batch normalisation, float32 on the CPU; every row optimiser of
    :mod:`resrec.train.optim` with ``torch.optim`` SGD, Adam or Adagrad for the
    side branch; ``l2`` and ``l2_dense``. :func:`unsupported_reason` says why
    anything else is left to the autograd path.

How the state is laid out
    For the duration of one pass over the training split, every per-row
    value lives in one table with a row per user, then a row per movie, then
    one spare row. A row holds the factors and the bias (``D = K + 1``
    columns, ``K`` for the deep model), then the row optimiser's state in
    blocks of ``D`` columns (momentum's velocity, or Adam's two moments, or
    Adagrad's sums), and for momentum the step the row was last updated at.
    Before a chunk of batches is trained, each batch's distinct rows are
    found with one vectorised sort (:func:`_distinct_rows`); a step then
    gathers each distinct row once, with its optimiser state, sums the
    gradients of its occurrences, updates it in place and writes it back once.
    One update serves all four tables, because their rule is the same. The
    side branch's parameters live in one flat vector, laid out so that its
    first bias rides along with the weights in the matrix products (a column
    of ones is appended to the input). :meth:`FusedEngine.load` copies the
    model and optimiser state in before a pass; :meth:`FusedEngine.store`
    copies it back after it, so between passes the model, the row optimiser
    and the ``torch.optim`` optimiser hold what the autograd path would have
    left there, and checkpoints, evaluation and saving see no difference.

Results
    The arithmetic is that of the autograd path up to float32 rounding: sums
    run in a different order, some multiply-adds are fused, and ELU is
    computed as ``max(x, 0) + (exp(min(x, 0)) - 1)`` because ``expm1`` is
    several times slower than ``exp`` here. Keras's momentum stays exact and
    lazy (:class:`~resrec.train.optim.LazyMomentumSGD`); its decay factors
    come from a table computed once in float64 instead of a float64 ``pow``
    per step, with the same float32 values.

Large batches
    The side branch of a large batch is computed in blocks of rows holding
    about :data:`BLOCK_FLOATS` hidden activations, so that they stay in the
    core's cache; the weight gradients are summed over the blocks.

Limitations
    One process only (a :class:`~resrec.train.trainer.Synchronizer` sends the
    trainer down the autograd path), one hidden layer at most, CPU tensors
    only. Between :meth:`FusedEngine.load` and :meth:`FusedEngine.store` the
    model's tables are stale; nothing reads them there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from resrec.models.base import RatingModel
from resrec.models.residual import DeepNet, MFNet, ResidualNet
from resrec.train.optim import LazyAdagrad, LazyAdam, LazyMomentumSGD, PlainSGD, RowOptimizer

if TYPE_CHECKING:
    from resrec.train.trainer import Examples, Trainer

log = logging.getLogger(__name__)

BLOCK_FLOATS = 1 << 17  # hidden activations computed together (rows x hidden width)
CHUNK_RATINGS = 1 << 20  # ratings whose batch indices are prepared at once
CHECK_EVERY = 256  # batches between checks for a non-finite loss
FALLBACK_ROWS = 65536  # rows per call of an unsupported model's forward
EVAL_ROWS = 1024  # at most this many rows per block when evaluating (measured best)

_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ELU: "elu",
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Identity: "identity",
}

ProgressCallback = Callable[[int, int], None]


# -- what is supported -----------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """The shape of a supported model."""

    k: int  # embedding_dim
    main: bool  # the dot product and the biases
    side: bool  # the MLP on [p_u ; q_m]
    hidden: int  # hidden units (0: the side branch is one linear layer)
    activation: str


def _shape(model: nn.Module) -> _Shape | str:
    """The model's shape, or why the fused step cannot train it."""
    if type(model) not in (ResidualNet, MFNet, DeepNet):
        return f"the model is a {type(model).__name__}"
    assert isinstance(model, ResidualNet | MFNet | DeepNet)
    params = list(model.parameters())
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return "the model is not float32 on the CPU"
    if model.implicit:
        return "the model has implicit feedback"
    if model.ratings_side is not None:
        return "the side branch reads movie ratings"
    k = int(model.embedding_dim)
    main = bool(model.uses_biases)
    if not model.uses_side:
        return _Shape(k, main, False, 0, "identity")

    layers = list(model.side.layers)
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        return _Shape(k, main, True, 0, "identity")
    if len(layers) != 3 or not isinstance(layers[0], nn.Linear):
        return "the side branch has dropout, batch norm or more than one hidden layer"
    activation = _ACTIVATIONS.get(type(layers[1]))
    if activation is None:
        return f"the activation {type(layers[1]).__name__} has no fused form"
    if isinstance(layers[1], nn.ELU) and layers[1].alpha != 1.0:
        return "ELU with alpha other than 1"
    return _Shape(k, main, True, layers[0].out_features, activation)


def _dense_kind(optimizer: torch.optim.Optimizer | None) -> str | None:
    """``"none"``, ``"sgd"``, ``"adam"`` or ``"adagrad"``; None when not supported."""
    if optimizer is None:
        return "none"
    if len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if group.get("maximize") or group.get("differentiable"):
        return None
    if type(optimizer) is torch.optim.SGD:
        plain = not group["nesterov"] and group["dampening"] == 0
        return "sgd" if plain else None
    if type(optimizer) is torch.optim.Adam:
        return None if group["amsgrad"] or group.get("decoupled_weight_decay") else "adam"
    if type(optimizer) is torch.optim.Adagrad:
        return "adagrad" if group["lr_decay"] == 0 else None
    return None


def unsupported_reason(
    model: RatingModel,
    row_optimizer: RowOptimizer,
    dense_optimizer: torch.optim.Optimizer | None,
) -> str | None:
    """Why the fused step cannot train this model with these optimisers, or None if it can."""
    shape = _shape(model)
    if isinstance(shape, str):
        return shape
    if type(row_optimizer) not in _ROW_RULES:
        return f"the row optimiser is a {type(row_optimizer).__name__}"
    if _dense_kind(dense_optimizer) is None:
        return f"the dense optimiser {type(dense_optimizer).__name__} has unsupported options"
    return None


# -- the packed row table --------------------------------------------------------


@dataclass(frozen=True)
class _Columns:
    """Where each part of a packed row lives (see the module docstring)."""

    d: int  # factors and bias
    blocks: int  # optimiser state blocks of d columns after the weights
    last: int | None  # column holding minus the step a row was last updated at (int32 bits)

    @property
    def width(self) -> int:
        """Columns in all, rounded up to a multiple of 4 for :meth:`FusedEngine.write_rows`."""
        used = self.d * (1 + self.blocks) + int(self.last is not None)
        return (used + 3) // 4 * 4


class _Buffers:
    """Everything one step of ``b`` ratings writes, with its views, allocated once.

    The occurrence buffers (``occ``, ``grad``) have a row per occurrence: rows
    ``0..b-1`` for the batch's users, ``b..2b-1`` for its movies. The row
    buffers (``s``, ``total``) have a row per distinct packed row the
    batch touches, padded to ``2b`` rows with the spare row (see
    :func:`_distinct_rows`).
    """

    def __init__(self, b: int, shape: _Shape, cols: _Columns, block_floats: int) -> None:
        k, d = shape.k, cols.d
        self.b = b
        # The distinct rows, updated in place and written back (in-place operations
        # on column views avoid the copies that ``out=`` a strided view would cost).
        self.s = torch.empty(2 * b, cols.width)
        self.s_w = self.s[:, :d]
        self.s_state = [self.s[:, d * i : d * (i + 1)] for i in range(1, cols.blocks + 1)]
        if cols.last is not None:
            self.s_last = self.s.view(torch.int32)[:, cols.last]

        self.occ = torch.empty(2 * b, cols.width)  # the rows of each occurrence
        self.occ_w = self.occ[:, :d]
        self.p, self.q = self.occ[:b, :k], self.occ[b:, :k]
        self.grad = torch.zeros(2 * b, d)  # gradient per occurrence
        self.grad_p, self.grad_q = self.grad[:b, :k], self.grad[b:, :k]
        if shape.main:
            self.b_user, self.b_movie = self.occ[:b, k], self.occ[b:, k]
            self.grad_bias = self.grad[:, k].view(2, b)
        self.total = torch.empty(2 * b, d)  # gradient per distinct row
        self.idle = torch.empty(2 * b, dtype=torch.int32)
        self.decay = torch.empty(2 * b, 2)
        self.decay_v, self.decay_w = self.decay[:, :1], self.decay[:, 1:]

        self.err = torch.empty(b)
        self.g = torch.empty(b)
        self.g_col, self.g_both = self.g.unsqueeze(1), self.g.expand(2, b)
        self.x = torch.ones(b, 2 * k + 1)  # [p ; q ; 1]
        self.dx = torch.empty(b, 2 * k + 1)
        self.x_p, self.x_q = self.x[:, :k], self.x[:, k : 2 * k]
        self.dx_p, self.dx_q = self.dx[:, :k], self.dx[:, k : 2 * k]

        # The side branch in blocks of rows: (x, err, g, dx, activation, scratch, first).
        rows = min(b, max(64, block_floats // max(1, shape.hidden)))
        hidden, tmp = torch.empty(rows, shape.hidden), torch.empty(rows, shape.hidden)
        self.blocks = [
            (
                self.x[lo : lo + rows],
                self.err[lo : lo + rows],
                self.g[lo : lo + rows],
                self.dx[lo : lo + rows],
                hidden[: min(rows, b - lo)],
                tmp[: min(rows, b - lo)],
                lo == 0,
            )
            for lo in range(0, b, rows)
        ]


class FusedEngine:
    """Trains a supported model one batch at a time without autograd.

    Parameters
    ----------
    model
        The model to train (see :func:`unsupported_reason`).
    row_optimizer, dense_optimizer
        The trainer's optimisers; the engine reads their hyperparameters and
        state before each pass and writes their state back after it.
    l2
        The trainer's penalty on the gathered rows (``config.l2``).
    block_floats
        The side branch of a large batch is computed in blocks of about this
        many hidden activations, to keep them in the core's cache.
    """

    def __init__(
        self,
        model: RatingModel,
        row_optimizer: RowOptimizer,
        dense_optimizer: torch.optim.Optimizer | None,
        *,
        l2: float = 0.0,
        block_floats: int = BLOCK_FLOATS,
    ) -> None:
        reason = unsupported_reason(model, row_optimizer, dense_optimizer)
        if reason is not None:
            raise ValueError(f"the fused step cannot train this model: {reason}")
        shape = _shape(model)
        assert isinstance(shape, _Shape)
        self.model = model
        self.shape = shape
        self.l2 = l2
        self.block_floats = block_floats
        self.n_users = int(model.n_users)
        self.n_movies = int(model.n_movies)
        self.k = shape.k
        self.d = shape.k + int(shape.main)

        rule = _ROW_RULES[type(row_optimizer)]
        last = self.d * (1 + rule.blocks) if rule.uses_last else None
        self.cols = _Columns(self.d, rule.blocks, last)
        # One spare row after the movies pads each batch's distinct rows to a fixed count.
        self.spare = self.n_users + self.n_movies
        self.table = torch.zeros(self.spare + 1, self.cols.width)
        if last is not None:
            self.last = self.table.view(torch.int32)[:, last]
        self.rows = rule(row_optimizer, self)
        self.dense = _DenseRule(model, dense_optimizer, shape) if shape.side else None
        self._buffers: dict[int, _Buffers] = {}
        log.debug("fused training step for %s, rows of %d columns", shape, self.cols.width)

    # -- moving state in and out ----------------------------------------------------

    def regions(self) -> dict[str, tuple[slice, slice]]:
        """Row table name -> (rows, columns) of the packed table that hold it."""
        users, movies = slice(0, self.n_users), slice(self.n_users, self.spare)
        k = self.k
        out = {"user_factors": (users, slice(0, k)), "movie_factors": (movies, slice(0, k))}
        if self.shape.main:
            out["user_bias"] = (users, slice(k, k + 1))
            out["movie_bias"] = (movies, slice(k, k + 1))
        return out

    def pack_block(self, block: int, tensors: dict[str, Tensor]) -> None:
        """Copy per-table tensors into column block ``block`` of the packed table."""
        for name, (rows, cols) in self.regions().items():
            start = block * self.d
            self.table[rows, start + cols.start : start + cols.stop].copy_(tensors[name])

    def unpack_block(self, block: int, tensors: dict[str, Tensor]) -> None:
        """Copy column block ``block`` of the packed table into per-table tensors."""
        for name, (rows, cols) in self.regions().items():
            start = block * self.d
            tensors[name].copy_(self.table[rows, start + cols.start : start + cols.stop])

    def _weights(self) -> dict[str, Tensor]:
        tables = self.model.row_tables()
        return {name: table.weight.data for name, (table, _) in tables.items()}

    def write_rows(self, distinct: Tensor, rows: Tensor) -> None:
        """``table[distinct] = rows``, 16 bytes at a time (twice as fast as 4 here)."""
        self.table.view(torch.complex128).index_copy_(0, distinct, rows.view(torch.complex128))

    def load(self, step: int) -> None:
        """Copy the model's weights and the optimisers' state in, as of ``step``."""
        with torch.no_grad():
            self.rows.load(step)
            self.pack_block(0, self._weights())
            if self.dense is not None:
                self.dense.load()

    def store(self) -> None:
        """Copy the weights and optimiser state back to the model and the optimisers."""
        with torch.no_grad():
            self.unpack_block(0, self._weights())
            self.rows.store()
            if self.dense is not None:
                self.dense.store()

    # -- one pass -------------------------------------------------------------------

    def train_pass(
        self, trainer: Trainer, progress: ProgressCallback | None = None
    ) -> tuple[float, float]:
        """One epoch over ``trainer.train`` in the trainer's batch order.

        Visits the ratings in the same order as the autograd path
        (:meth:`Trainer.epoch_order`), advances ``trainer.step`` by one per batch, checks for a
        non-finite loss every :data:`CHECK_EVERY` batches and returns the
        epoch's mean loss and mean squared error.
        """
        train = trainer.train
        n, size = len(train), trainer.config.batch_size
        order = trainer.epoch_order()
        n_batches = (n + size - 1) // size
        sq = torch.zeros(n_batches)
        penalty = torch.zeros(n_batches)
        chunk = max(1, CHUNK_RATINGS // size) * size
        step = trainer.step
        self.load(step)
        try:
            for lo in range(0, n, chunk):
                rows, b = order[lo : lo + chunk], lo // size
                self.rows.reset_spare()
                parts = self._chunk_batches(train, trainer._targets, rows, size)
                for distinct, inverse, t in parts:
                    for i in range(t.shape[0]):
                        step += 1
                        self.step(distinct[i], inverse[i], t[i], step, sq[b], penalty[b])
                        b += 1
                        if b % CHECK_EVERY == 0 or b == n_batches:
                            trainer.step = step
                            trainer._check_finite(sq + penalty, b - 1, CHECK_EVERY)
                            if progress is not None:
                                progress(b, n_batches)
        finally:
            trainer.step = step
            self.store()
        sq_total = float(sq.sum(dtype=torch.float64))
        penalty_total = float(penalty.sum(dtype=torch.float64))
        return (sq_total + penalty_total) / n, sq_total / n

    def _chunk_batches(
        self, train: Examples, targets: Tensor, rows: Tensor, size: int
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Batches of the training ``rows``, by batch size: distinct rows, inverse, targets.

        Each is a matrix with a line per batch (see :func:`_distinct_rows`); the
        full batches come first, then the short last one, if any.
        """
        u = train.users.index_select(0, rows)
        m = train.movies.index_select(0, rows).add_(self.n_users)
        t = targets.index_select(0, rows)
        full = len(rows) // size
        parts = [(0, full * size, size), (full * size, len(rows), len(rows) - full * size)]
        out: list[tuple[Tensor, Tensor, Tensor]] = []
        for lo, hi, n in parts:
            if hi <= lo:
                continue
            packed = torch.cat([u[lo:hi].view(-1, n), m[lo:hi].view(-1, n)], 1)
            distinct, inverse = _distinct_rows(packed.numpy(), self.spare)
            out.append((distinct, inverse, t[lo:hi].view(-1, n)))
        return out

    # -- one step -------------------------------------------------------------------

    def step(
        self,
        distinct: Tensor,
        inverse: Tensor,
        t: Tensor,
        step: int,
        sq: Tensor,
        penalty: Tensor,
    ) -> None:
        """Train on one batch of ``b`` ratings (see :func:`_distinct_rows`).

        ``distinct`` lists the packed rows the batch touches (padded to ``2b``
        with the spare row); ``inverse[i]`` is the position in ``distinct`` of
        the row of occurrence ``i`` (users ``0..b-1``, then movies). Writes the
        batch's summed squared error to ``sq`` and its l2 penalty (times the
        batch size) to ``penalty``.
        """
        b = t.shape[0]
        buf = self._buffers.get(b)
        if buf is None:
            buf = self._buffers[b] = _Buffers(b, self.shape, self.cols, self.block_floats)
        torch.index_select(self.table, 0, distinct, out=buf.s)
        torch.index_select(buf.s, 0, inverse, out=buf.occ)
        err = buf.err

        # Forward, main branch: err = p.q + b_u + b_m - t; the side branch adds to it.
        if self.shape.main:
            torch.sub(buf.b_user, t, out=err).add_(buf.b_movie)
            err.add_(torch.linalg.vecdot(buf.p, buf.q))
        else:
            torch.neg(t, out=err)
        if self.dense is not None:
            buf.x_p.copy_(buf.p)
            buf.x_q.copy_(buf.q)
            self.dense.forward_backward(buf, 2.0 / b)
        else:
            torch.mul(err, 2.0 / b, out=buf.g)
        torch.dot(err, err, out=sq)

        # Row gradients of the main branch plus those flowing back from the side branch.
        # (In place: ``out=`` a strided view would compute into a copy first.)
        if self.dense is not None:
            buf.grad_p.copy_(buf.dx_p)
            buf.grad_q.copy_(buf.dx_q)
        if self.shape.main and self.dense is not None:
            buf.grad_p.addcmul_(buf.g_col, buf.q)
            buf.grad_q.addcmul_(buf.g_col, buf.p)
        elif self.shape.main:
            buf.grad_p.copy_(buf.q).mul_(buf.g_col)
            buf.grad_q.copy_(buf.p).mul_(buf.g_col)
        if self.shape.main:
            buf.grad_bias.copy_(buf.g_both)
        if self.l2 > 0:
            penalty.copy_((buf.occ_w * buf.occ_w).sum()).mul_(self.l2)
            buf.grad.add_(buf.occ_w, alpha=2.0 * self.l2 / b)

        # Sum the gradients of each distinct row, then update the rows.
        buf.total.zero_().index_add_(0, inverse, buf.grad)
        self.rows.update(distinct, step, buf)
        if self.dense is not None:
            self.dense.update()


def _distinct_rows(packed: np.ndarray, spare: int) -> tuple[Tensor, Tensor]:
    """The distinct rows of each batch, and where each occurrence finds its row.

    ``packed`` holds one batch per line: ``m`` packed-table rows (a row may
    repeat). Returns ``distinct``, each line's distinct rows in increasing
    order, padded to ``m`` entries with ``spare``, and ``inverse`` with
    ``distinct[i, inverse[i, j]] == packed[i, j]``. A row then appears once
    in an update however often the batch rates it, and the padding keeps
    every batch's buffers the same size (the spare row only ever receives a
    zero gradient).
    """
    m = packed.shape[1]
    keys = packed * m + np.arange(m)  # sorting by row also sorts by position within a row
    keys.sort(axis=1)
    rows = keys // m
    first = np.empty(keys.shape, dtype=bool)
    first[:, 0] = True
    np.not_equal(rows[:, 1:], rows[:, :-1], out=first[:, 1:])
    group = np.cumsum(first, axis=1) - 1

    inverse = np.empty_like(group)
    np.put_along_axis(inverse, keys - rows * m, group, axis=1)
    distinct = np.full(keys.shape, spare, dtype=np.int64)
    batch = np.nonzero(first)[0]
    distinct[batch, group[first]] = rows[first]
    return torch.from_numpy(distinct), torch.from_numpy(inverse)


# -- the side branch ---------------------------------------------------------------


class _DenseRule:
    """The side branch's parameters as one flat vector, with its optimiser.

    Layout with a hidden layer of H units and input width 2K: ``W1t`` is
    (2K + 1) x H, the first layer's weight transposed with its bias as the last
    row; then the H output weights and the output bias. Without a hidden
    layer: the 2K output weights, then the bias.
    """

    def __init__(
        self, model: RatingModel, optimizer: torch.optim.Optimizer | None, shape: _Shape
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.kind = _dense_kind(optimizer)
        self.shape = shape
        self.params = model.dense_parameters()
        n_in, h = 2 * shape.k + 1, shape.hidden
        size = n_in * h + h + 1 if h else n_in
        self.flat = torch.empty(size)
        self.grad = torch.zeros(size)
        self.state = [torch.zeros(size) for _ in self._state_names()]
        self.n_steps = 0
        self.w2, self.gw2 = self.flat[n_in * h :], self.grad[n_in * h :]
        if h:
            self.w1t = self.flat[: n_in * h].view(n_in, h)
            self.gw1t = self.grad[: n_in * h].view(n_in, h)
            self.w2_hidden, self.c2 = self.w2[:h], self.w2[h:]
            self.gw2_hidden, self.gc2 = self.gw2[:h], self.gw2[h:]

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` shaped like the model's dense parameters, in their order."""
        n_in, h = 2 * self.shape.k + 1, self.shape.hidden
        if not h:
            return [flat[: n_in - 1].view(1, n_in - 1), flat[n_in - 1 :]]
        w1t = flat[: n_in * h].view(n_in, h)
        return [w1t[: n_in - 1].t(), w1t[n_in - 1], flat[n_in * h : -1].view(1, h), flat[-1:]]

    # -- state in and out ---------------------------------------------------------

    def _state_names(self) -> list[str]:
        if self.kind == "sgd" and self.momentum == 0:
            return []
        return {
            "none": [],
            "sgd": ["momentum_buffer"],
            "adam": ["exp_avg", "exp_avg_sq"],
            "adagrad": ["sum"],
        }[self.kind or "none"]

    def load(self) -> None:
        for param, view in zip(self.params, self.views(self.flat), strict=True):
            view.copy_(param)
        for i, name in enumerate(self._state_names()):
            self.state[i].zero_()
            for param, view in zip(self.params, self.views(self.state[i]), strict=True):
                saved = self._param_state(param).get(name)
                if saved is not None:
                    view.copy_(saved)
        self.n_steps = 0
        if self.params and self.kind in ("adam", "adagrad"):
            step = self._param_state(self.params[0]).get("step")
            self.n_steps = int(step) if step is not None else 0

    def store(self) -> None:
        for param, view in zip(self.params, self.views(self.flat), strict=True):
            param.data.copy_(view)
        if self.optimizer is None:
            return
        names = self._state_names()
        for j, param in enumerate(self.params):
            state = self.optimizer.state[param]
            for i, name in enumerate(names):
                state[name] = self.views(self.state[i])[j].clone()
            if self.kind in ("adam", "adagrad"):
                state["step"] = torch.tensor(float(self.n_steps), dtype=torch.float32)

    def _param_state(self, param: Tensor) -> dict[str, Any]:
        assert self.optimizer is not None
        return self.optimizer.state.get(param, {})

    @property
    def group(self) -> dict[str, Any]:
        assert self.optimizer is not None
        return self.optimizer.param_groups[0]

    @property
    def momentum(self) -> float:
        return float(self.group.get("momentum", 0.0))

    # -- forward and backward -----------------------------------------------------

    def forward_backward(self, buf: _Buffers, scale: float) -> None:
        """Add the side branch's output to ``buf.err``, then set ``buf.g`` and the gradients.

        ``buf.x`` holds [p ; q ; 1]. On return ``buf.g`` is ``scale * err``,
        ``buf.dx`` the gradient with respect to ``buf.x`` and ``self.grad`` the
        parameters' gradient.
        """
        if not self.shape.hidden:
            buf.err.addmv_(buf.x, self.w2)
            torch.mul(buf.err, scale, out=buf.g)
            torch.mv(buf.x.t(), buf.g, out=self.gw2)
            torch.outer(buf.g, self.w2, out=buf.dx)
            return
        activation = self.shape.activation
        w1t, w2, gw1t, gw2 = self.w1t, self.w2_hidden, self.gw1t, self.gw2_hidden
        buf.err.add_(self.c2)
        for x, err, g, dx, a, tmp, first in buf.blocks:
            torch.mm(x, w1t, out=a)
            _activate(activation, a, tmp)
            err.addmv_(a, w2)
            torch.mul(err, scale, out=g)

            # d w2 = a^T g; then the gradient at the hidden layer's input, in tmp.
            if first:
                torch.mv(a.t(), g, out=gw2)
            else:
                gw2.addmv_(a.t(), g)
            torch.outer(g, w2, out=tmp)
            _activation_backward(activation, tmp, a)

            # d W1t = [p ; q ; 1]^T tmp, and the gradient at [p ; q ; 1].
            if first:
                torch.mm(x.t(), tmp, out=gw1t)
            else:
                gw1t.addmm_(x.t(), tmp)
            torch.mm(tmp, w1t.t(), out=dx)
        torch.sum(buf.g, 0, keepdim=True, out=self.gc2)

    # -- the optimiser --------------------------------------------------------------

    def update(self) -> None:
        """One step of the ``torch.optim`` optimiser's rule on the flat vector."""
        if self.optimizer is None:
            return
        group = self.group
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        grad, flat = self.grad, self.flat
        if wd != 0:
            grad.add_(flat, alpha=wd)
        self.n_steps += 1
        if self.kind == "sgd" and not self.state:
            flat.add_(grad, alpha=-lr)
        elif self.kind == "sgd":
            self.state[0].mul_(self.momentum).add_(grad)
            flat.add_(self.state[0], alpha=-lr)
        elif self.kind == "adam":
            b1, b2 = group["betas"]
            exp_avg, exp_avg_sq = self.state
            exp_avg.lerp_(grad, 1 - b1)
            exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            correction1 = 1 - b1**self.n_steps
            correction2 = 1 - b2**self.n_steps
            denom = _sqrt(exp_avg_sq).div_(correction2**0.5).add_(group["eps"])
            flat.addcdiv_(exp_avg, denom, value=-lr / correction1)
        elif self.kind == "adagrad":
            total = self.state[0]
            total.addcmul_(grad, grad, value=1)
            flat.addcdiv_(grad, _sqrt(total).add_(group["eps"]), value=-lr)


def _sqrt(x: Tensor) -> Tensor:
    """``x.sqrt()`` as a new contiguous tensor.

    The square root of a strided view runs several times slower here than that
    of a contiguous copy, so the copy comes first.
    """
    out = x.contiguous()
    return out.sqrt_() if out is not x else out.sqrt()


def _activate(kind: str, a: Tensor, tmp: Tensor) -> None:
    """Apply the activation to ``a`` in place (``tmp`` is scratch of the same shape)."""
    if kind == "elu":
        # max(x, 0) + (exp(min(x, 0)) - 1); the bracket is exactly 0 for x > 0.
        torch.clamp(a, max=0, out=tmp)
        tmp.exp_().sub_(1)
        a.clamp_(min=0).add_(tmp)
    elif kind == "relu":
        a.clamp_(min=0)
    elif kind == "tanh":
        a.tanh_()


def _activation_backward(kind: str, grad: Tensor, a: Tensor) -> None:
    """Turn the gradient at the activation ``a`` into that at its input, in place."""
    if kind == "elu":
        # d elu / dx is 1 for x > 0, else exp(x) = elu(x) + 1.
        torch.ops.aten.elu_backward.grad_input(grad, 1.0, 1, 1, True, a, grad_input=grad)
    elif kind == "relu":
        torch.ops.aten.threshold_backward.grad_input(grad, a, 0, grad_input=grad)
    elif kind == "tanh":
        torch.ops.aten.tanh_backward.grad_input(grad, a, grad_input=grad)


# -- row optimisers on the packed table -------------------------------------------


class _RowRule:
    """A row optimiser's update applied to all rows of the packed table at once."""

    blocks = 0  # optimiser state blocks of D columns after the weights
    uses_last = False  # needs the step each row was last updated at
    state_names: tuple[str, ...] = ()  # the optimiser's per-table state, one per block
    spare_state: tuple[float, ...] = ()  # the spare row's state per block (see reset_spare)

    def __init__(self, optimizer: RowOptimizer, engine: FusedEngine) -> None:
        self.optimizer = optimizer
        self.engine = engine

    def load(self, step: int) -> None:
        for i, name in enumerate(self.state_names, start=1):
            self.engine.pack_block(i, getattr(self.optimizer, name))
        self.reset_spare()

    def reset_spare(self) -> None:
        """Give the spare row state that keeps its arithmetic away from zeros and denormals.

        Its gradient is always zero, so its values never matter, but a square
        root of zero or a denormal takes MKL's slow path on every step.
        """
        d, row = self.engine.d, self.engine.table[self.engine.spare]
        for i, value in enumerate(self.spare_state, start=1):
            row[i * d : (i + 1) * d].fill_(value)

    def store(self) -> None:
        for i, name in enumerate(self.state_names, start=1):
            self.engine.unpack_block(i, getattr(self.optimizer, name))

    def update(self, distinct: Tensor, step: int, buf: _Buffers) -> None:
        """Update the rows ``distinct`` from ``buf.s`` (as gathered) and ``buf.total``."""
        raise NotImplementedError


class _PlainRows(_RowRule):
    def update(self, distinct: Tensor, step: int, buf: _Buffers) -> None:
        buf.s_w.add_(buf.total, alpha=-self.optimizer.lr)
        self.engine.write_rows(distinct, buf.s)


class _MomentumRows(_RowRule):
    """:class:`LazyMomentumSGD`'s exact lazy update, with tabulated decay factors."""

    blocks = 1
    uses_last = True
    state_names = ("velocity",)
    optimizer: LazyMomentumSGD

    def __init__(self, optimizer: RowOptimizer, engine: FusedEngine) -> None:
        super().__init__(optimizer, engine)
        self.decay = _momentum_decay_table(self.optimizer.momentum)

    def load(self, step: int) -> None:
        # Bring every row up to ``step``; after an epoch's flush this changes nothing.
        self.optimizer.flush(step)
        super().load(step)
        self.engine.last.fill_(-step)

    def store(self) -> None:
        super().store()
        last = self.engine.last.neg().to(torch.int64)
        for name, (rows, _) in self.engine.regions().items():
            self.optimizer.last_step[name].copy_(last[rows])

    def update(self, distinct: Tensor, step: int, buf: _Buffers) -> None:
        lr, total = self.optimizer.lr, buf.total

        # Steps each row sat idle, then its factors m * m^idle and sum_{j=1..idle} m^j.
        torch.add(buf.s_last, step - 1, out=buf.idle).clamp_(max=self.decay.shape[0] - 1)
        torch.index_select(self.decay, 0, buf.idle, out=buf.decay)

        # w += geometric * v_old; v = m^(idle+1) v_old - lr g; w += v.
        velocity = buf.s_state[0]
        buf.s_w.addcmul_(buf.decay_w, velocity)
        velocity.mul_(buf.decay_v).sub_(total, alpha=lr)
        buf.s_w.add_(velocity)
        buf.s_last.fill_(-step)
        self.engine.write_rows(distinct, buf.s)


def _momentum_decay_table(m: float) -> Tensor:
    """Rows k = 0, 1, ...: ``m * m^k`` and ``m (1 - m^k) / (1 - m)`` in float32.

    The values are those :class:`LazyMomentumSGD` computes per step (float64
    powers rounded to float32). The table ends where both columns have
    reached their float32 limits (0 and ``m / (1 - m)``); longer idle spans
    use its last row. Momenta so close to 1 that the table would exceed 2^22
    rows are cut there, which changes the result by less than float32 rounding
    only for the span lengths beyond it.
    """
    if m == 0:
        return torch.tensor([[0.0, 0.0]])
    rows = min(1 << 22, math.ceil(math.log(1e-46) / math.log(m)) + 2)
    powers = torch.pow(m, torch.arange(rows, dtype=torch.float64))
    geometric = m * (1.0 - powers) / (1.0 - m)
    return torch.stack([m * powers.to(torch.float32), geometric.to(torch.float32)], 1)


class _AdamRows(_RowRule):
    """:class:`LazyAdam`: Adam on the touched rows, bias-corrected by the global step."""

    blocks = 2
    state_names = ("exp_avg", "exp_avg_sq")
    spare_state = (0.0, 1.0)
    optimizer: LazyAdam

    def update(self, distinct: Tensor, step: int, buf: _Buffers) -> None:
        lr, eps, total = self.optimizer.lr, self.optimizer.eps, buf.total
        b1, b2 = self.optimizer.betas

        exp_avg, exp_avg_sq = buf.s_state
        exp_avg.mul_(b1).add_(total, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(total, total, value=1 - b2)
        step_size = lr * (1 - b2**step) ** 0.5 / (1 - b1**step)
        denom = _sqrt(exp_avg_sq).add_(eps)
        buf.s_w.addcdiv_(exp_avg, denom, value=-step_size)
        self.engine.write_rows(distinct, buf.s)


class _AdagradRows(_RowRule):
    """:class:`LazyAdagrad`: Adagrad on the touched rows."""

    blocks = 1
    state_names = ("sum_sq",)
    spare_state = (1.0,)
    optimizer: LazyAdagrad

    def update(self, distinct: Tensor, step: int, buf: _Buffers) -> None:
        lr, eps, total = self.optimizer.lr, self.optimizer.eps, buf.total

        sum_sq = buf.s_state[0].addcmul_(total, total)
        denom = _sqrt(sum_sq).add_(eps)
        buf.s_w.addcdiv_(total, denom, value=-lr)
        self.engine.write_rows(distinct, buf.s)


_ROW_RULES: dict[type[RowOptimizer], type[_RowRule]] = {
    PlainSGD: _PlainRows,
    LazyMomentumSGD: _MomentumRows,
    LazyAdam: _AdamRows,
    LazyAdagrad: _AdagradRows,
}


# -- evaluation ----------------------------------------------------------------------


@torch.no_grad()
def predict_offsets(
    model: RatingModel, users: Tensor, movies: Tensor, *, block_rows: int | None = None
) -> Tensor:
    """Raw outputs (prediction minus mu) of any rating model, block by block.

    Supported models (see :func:`unsupported_reason`) are computed with the
    fused forward pass and its cheaper ELU; others call ``model(users, movies)``
    on blocks of ``block_rows`` (default: as many as keep :data:`BLOCK_FLOATS`
    hidden activations, or :data:`FALLBACK_ROWS` for the models' own forward).
    """
    out = torch.empty(users.shape[0], dtype=torch.float32, device=users.device)
    shape = _shape(model)
    if isinstance(shape, str) or users.device.type != "cpu":
        rows = block_rows or FALLBACK_ROWS
        for lo in range(0, users.shape[0], rows):
            hi = lo + rows
            out[lo:hi] = model(users[lo:hi], movies[lo:hi])
        return out
    rows = block_rows or min(EVAL_ROWS, max(64, BLOCK_FLOATS // max(1, shape.hidden)))
    forward = _EvalForward(model, shape, rows)
    for lo in range(0, users.shape[0], rows):
        hi = lo + rows
        forward(users[lo:hi], movies[lo:hi], out[lo:hi])
    return out


class _EvalForward:
    """The fused forward pass of a supported model, reading the model's own tensors.

    The tables are widened so that one gather per side brings all a rating
    needs: user rows ``[p, b_u, 1]`` and movie rows ``[q, 1, b_m]`` (biases 0
    for models without them), whose dot product is the main branch. The side
    branch's first layer reads the same rows, ``[p, b_u, 1] . [W1u^T; 0; c1] +
    [q, 1, b_m] . [W1m^T; 0; 0]``, so no ``[p; q]`` block is assembled.
    """

    def __init__(self, model: RatingModel, shape: _Shape, block_rows: int) -> None:
        k, h = shape.k, shape.hidden
        self.shape = shape
        tables = {name: table.weight.detach() for name, (table, _) in model.row_tables().items()}
        self.users = _wide_table(tables, "user", shape.main, user=True)
        self.movies = _wide_table(tables, "movie", shape.main, user=False)
        self.hidden = torch.empty(block_rows, max(h, 1))
        self.tmp = torch.empty(block_rows, h)
        self.constant = 0.0
        if not shape.side:
            return
        params = [p.detach() for p in model.dense_parameters()]
        first, bias = params[0], params[1]  # (h or 1, 2k), (h or 1,)
        zero = torch.zeros(1, first.shape[0])
        self.w_user = torch.cat([first[:, :k].t(), zero, bias.unsqueeze(0)]).contiguous()
        self.w_movie = torch.cat([first[:, k:].t(), zero, zero]).contiguous()
        if h:
            self.w2 = params[2].reshape(-1).contiguous()
            self.constant = float(params[3])
            if shape.activation == "elu":
                self.constant -= float(self.w2.sum())

    def __call__(self, users: Tensor, movies: Tensor, out: Tensor) -> None:
        h, n = self.shape.hidden, users.shape[0]
        u = self.users.index_select(0, users)
        m = self.movies.index_select(0, movies)
        if self.shape.main:
            torch.sum(u * m, 1, out=out)
        else:
            out.zero_()
        if not self.shape.side:
            return
        hidden = self.hidden[:n]
        torch.mm(u, self.w_user, out=hidden)
        hidden.addmm_(m, self.w_movie)
        if not h:
            out.add_(hidden[:, 0])
            return
        if self.shape.activation == "elu":
            # w2 . elu(a) = w2 . a - w2 . min(a, 0) + w2 . exp(min(a, 0)) - sum(w2):
            # three passes over the block instead of forming elu(a).
            out.addmv_(hidden, self.w2)
            hidden.clamp_(max=0)
            out.addmv_(hidden, self.w2, alpha=-1)
            out.addmv_(hidden.exp_(), self.w2)
        else:
            _activate(self.shape.activation, hidden, self.tmp[:n])
            out.addmv_(hidden, self.w2)
        out.add_(self.constant)


def _wide_table(tables: dict[str, Tensor], side: str, bias: bool, *, user: bool) -> Tensor:
    """``[factors, bias, 1]`` for users, ``[factors, 1, bias]`` for movies (bias 0 if none)."""
    factors = tables[f"{side}_factors"]
    column = tables[f"{side}_bias"] if bias else torch.zeros(factors.shape[0], 1)
    ones = torch.ones(factors.shape[0], 1)
    return torch.cat([factors, column, ones] if user else [factors, ones, column], 1)
