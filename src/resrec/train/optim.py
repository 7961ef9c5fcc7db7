"""Row-wise optimisers for embedding and bias tables.

A batch touches a few hundred rows of tables with up to hundreds of thousands
of rows. These optimisers update only the touched rows while giving the same
result as their dense counterparts would:

* :class:`LazyMomentumSGD` reproduces Keras's SGD with momentum, where *every*
  row's velocity decays and moves the row on every step, even rows with a zero
  gradient. A row untouched for ``t - 1`` steps, then touched at step ``t``,
  has a closed form (a geometric series), so each row is brought up to date
  only when touched, and all rows at once by :meth:`RowOptimizer.flush` before
  the weights are read. In exact arithmetic this equals the dense update; in
  float32 it differs only by rounding.
* :class:`LazyAdam` is Adam restricted to the touched rows (the moments of
  untouched rows are not decayed), with bias correction by the global step,
  as ``torch.optim.SparseAdam`` does.
* :class:`LazyAdagrad` is Adagrad on the touched rows, which is exact since
  Adagrad leaves rows with a zero gradient unchanged.

The gradient of a row touched several times in one batch is the sum over its
occurrences. Each update gathers the old state, computes the new state per
occurrence and scatters it back; duplicates of a row compute identical values,
so the scatter's order does not matter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class RowOptimizer:
    """Base class: one state per table, updated for the rows of each batch."""

    def __init__(self, tables: dict[str, Tensor], lr: float) -> None:
        self.tables = tables
        self.lr = lr
        self._grad_sum = {name: torch.zeros_like(w) for name, w in tables.items()}

    def summed_grad(self, name: str, index: Tensor, grad: Tensor) -> Tensor:
        """Per occurrence, the gradient summed over every occurrence of its row."""
        acc = self._grad_sum[name]
        acc.index_add_(0, index, grad)
        total = acc.index_select(0, index)
        acc.index_fill_(0, index, 0.0)
        return total

    def update(self, name: str, index: Tensor, grad: Tensor, step: int) -> None:
        """Apply step number ``step`` (1-based) to the rows ``index`` of table ``name``."""
        raise NotImplementedError

    def flush(self, step: int) -> None:
        """Bring every row up to date with step ``step`` (no-op unless lazy)."""

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])


class PlainSGD(RowOptimizer):
    """SGD without momentum: ``w -= lr * g``."""

    def update(self, name: str, index: Tensor, grad: Tensor, step: int) -> None:
        # index_add_ sums duplicate rows itself, so no gathering of sums is needed.
        self.tables[name].index_add_(0, index, grad, alpha=-self.lr)


class LazyMomentumSGD(RowOptimizer):
    """Keras's momentum SGD (``v = m v - lr g; w += v``), one row at a time."""

    def __init__(self, tables: dict[str, Tensor], lr: float, momentum: float) -> None:
        super().__init__(tables, lr)
        self.momentum = momentum
        self.velocity = {name: torch.zeros_like(w) for name, w in tables.items()}
        self.last_step = {
            name: torch.zeros(w.shape[0], dtype=torch.int64, device=w.device)
            for name, w in tables.items()
        }

    def _decay(self, idle: Tensor) -> tuple[Tensor, Tensor]:
        """For ``idle`` zero-gradient steps: velocity factor m^k and position factor.

        After k steps without gradient, v_k = m^k v and w_k = w + v * sum_{j=1..k} m^j.
        """
        m = self.momentum
        powers = torch.pow(m, idle.to(torch.float64))
        geometric = m * (1.0 - powers) / (1.0 - m)
        return powers.to(torch.float32).unsqueeze(1), geometric.to(torch.float32).unsqueeze(1)

    def update(self, name: str, index: Tensor, grad: Tensor, step: int) -> None:
        weight, velocity, last = self.tables[name], self.velocity[name], self.last_step[name]
        total = self.summed_grad(name, index, grad)

        # Catch the row up over the steps it sat idle, then apply this step.
        power, geometric = self._decay(step - 1 - last.index_select(0, index))
        v_old = velocity.index_select(0, index)
        v_new = self.momentum * power * v_old - self.lr * total
        w_new = weight.index_select(0, index) + geometric * v_old + v_new

        weight.index_copy_(0, index, w_new)
        velocity.index_copy_(0, index, v_new)
        last.index_fill_(0, index, step)

    def flush(self, step: int) -> None:
        for name, weight in self.tables.items():
            power, geometric = self._decay(step - self.last_step[name])
            weight.add_(geometric * self.velocity[name])
            self.velocity[name].mul_(power)
            self.last_step[name].fill_(step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "velocity": {k: v.clone() for k, v in self.velocity.items()},
            "last_step": {k: v.clone() for k, v in self.last_step.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in self.tables:
            self.velocity[name].copy_(state["velocity"][name])
            self.last_step[name].copy_(state["last_step"][name])


class LazyAdam(RowOptimizer):
    """Adam on the touched rows, bias-corrected by the global step."""

    def __init__(
        self, tables: dict[str, Tensor], lr: float, betas: tuple[float, float], eps: float
    ) -> None:
        super().__init__(tables, lr)
        self.betas = betas
        self.eps = eps
        self.exp_avg = {name: torch.zeros_like(w) for name, w in tables.items()}
        self.exp_avg_sq = {name: torch.zeros_like(w) for name, w in tables.items()}

    def update(self, name: str, index: Tensor, grad: Tensor, step: int) -> None:
        b1, b2 = self.betas
        total = self.summed_grad(name, index, grad)

        m = b1 * self.exp_avg[name].index_select(0, index) + (1 - b1) * total
        v = b2 * self.exp_avg_sq[name].index_select(0, index) + (1 - b2) * total * total
        step_size = self.lr * (1 - b2**step) ** 0.5 / (1 - b1**step)
        w = self.tables[name].index_select(0, index) - step_size * m / (v.sqrt() + self.eps)

        self.tables[name].index_copy_(0, index, w)
        self.exp_avg[name].index_copy_(0, index, m)
        self.exp_avg_sq[name].index_copy_(0, index, v)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "exp_avg": {k: v.clone() for k, v in self.exp_avg.items()},
            "exp_avg_sq": {k: v.clone() for k, v in self.exp_avg_sq.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in self.tables:
            self.exp_avg[name].copy_(state["exp_avg"][name])
            self.exp_avg_sq[name].copy_(state["exp_avg_sq"][name])


class LazyAdagrad(RowOptimizer):
    """Adagrad on the touched rows (exact: untouched rows do not change)."""

    def __init__(self, tables: dict[str, Tensor], lr: float, eps: float) -> None:
        super().__init__(tables, lr)
        self.eps = eps
        self.sum_sq = {name: torch.zeros_like(w) for name, w in tables.items()}

    def update(self, name: str, index: Tensor, grad: Tensor, step: int) -> None:
        total = self.summed_grad(name, index, grad)
        acc = self.sum_sq[name].index_select(0, index) + total * total
        w = self.tables[name].index_select(0, index) - self.lr * total / (acc.sqrt() + self.eps)
        self.tables[name].index_copy_(0, index, w)
        self.sum_sq[name].index_copy_(0, index, acc)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "sum_sq": {k: v.clone() for k, v in self.sum_sq.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for name in self.tables:
            self.sum_sq[name].copy_(state["sum_sq"][name])
