"""The interface every trainable rating model shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from resrec.errors import ConfigError

if TYPE_CHECKING:
    from resrec.config import TrainConfig


class RatingModel(nn.Module):
    """Base class: ``forward(users, movies)`` returns predictions minus mu.

    Subclasses keep their per-user and per-movie parameters in ``nn.Embedding``
    tables listed by :meth:`row_tables`, and compute the prediction from the
    gathered rows in :meth:`forward_rows`. The split lets the trainer gather
    the rows once, differentiate only the gathered rows, and update the tables
    row by row.
    """

    n_users: int
    n_movies: int

    def row_tables(self) -> dict[str, tuple[nn.Embedding, str]]:
        """Name -> (table, ``"user"`` or ``"movie"``) for every per-row table."""
        raise NotImplementedError

    def forward_rows(self, rows: dict[str, Tensor]) -> Tensor:
        """Predictions (minus mu) from the gathered rows of :meth:`row_tables`."""
        raise NotImplementedError

    def gather(self, users: Tensor, movies: Tensor) -> dict[str, Tensor]:
        index = {"user": users, "movie": movies}
        rows = {
            name: table.weight.index_select(0, index[side])
            for name, (table, side) in self.row_tables().items()
        }
        rows.update(self.derived_rows(users, movies))
        return rows

    def set_rated(self, users: np.ndarray | Tensor, movies: np.ndarray | Tensor) -> None:
        """Tell the model which movies each user rated in training.

        ``users`` and ``movies`` are the indices of the training ratings. Only
        models with implicit feedback use them; for the others this does nothing.
        """

    def derived_rows(self, users: Tensor, movies: Tensor) -> dict[str, Tensor]:
        """Per-pair inputs of :meth:`forward_rows` computed from dense parameters.

        Unlike the rows of :meth:`row_tables`, these are differentiated through
        to the dense parameters they come from. None by default.
        """
        return {}

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        return self.forward_rows(self.gather(users, movies))

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the row tables (updated densely every step)."""
        row_ids = {id(table.weight) for table, _ in self.row_tables().values()}
        return [p for p in self.parameters() if id(p) not in row_ids]


def keras_uniform_(table: nn.Embedding, scale: float, generator: torch.Generator) -> None:
    """Fill a table uniformly in [-scale, scale], as Keras initialises embeddings."""
    with torch.no_grad():
        table.weight.uniform_(-scale, scale, generator=generator)


def build_model(config: TrainConfig, n_users: int, n_movies: int, *, seed: int) -> RatingModel:
    """Create the model named by ``config.model`` with seeded initial weights.

    ``"biases"`` and ``"global-mean"`` have no initial weights; they are fitted by
    :meth:`~resrec.models.baselines.DirectFitModel.fit_direct`, not by the trainer.
    """
    from resrec.models.baselines import Biases, GlobalMean
    from resrec.models.residual import DeepNet, MFNet, ResidualNet

    if config.model == "global-mean":
        return GlobalMean.from_config(config, n_users, n_movies)
    if config.model == "biases":
        return Biases.from_config(config, n_users, n_movies)
    generator = torch.Generator().manual_seed(seed)
    kinds: dict[str, type[RatingModel]] = {
        "residual": ResidualNet,
        "mf": MFNet,
        "deep": DeepNet,
    }
    if config.model not in kinds:
        raise ConfigError(
            f"model must be one of {sorted([*kinds, 'biases', 'global-mean'])}; "
            f"got {config.model!r}"
        )
    return kinds[config.model].from_config(config, n_users, n_movies, generator)  # type: ignore[attr-defined]
