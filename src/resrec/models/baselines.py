"""Baselines fitted in closed form: the global mean, and user and movie biases.

Both share :class:`RatingModel`'s interface (``forward(users, movies)``
returns the prediction minus mu, ``components`` splits it into additive
terms), but they have no row tables for the trainer to update by gradient:
:meth:`DirectFitModel.fit_direct` computes their values from the training
ratings in one call. :func:`resrec.workflow.fit` calls it in place of the
epoch loop and records the result as a one-epoch history.

For user u and movie m, with mu the mean training rating::

    GlobalMean:  r_hat = mu
    Biases:      r_hat = mu + b_u + b_m

The biases minimise the regularised squared error

    sum over training ratings (r - mu - b_u - b_m)^2
        + reg_user * sum_u b_u^2 + reg_movie * sum_m b_m^2

by alternating exact minimisation: with the user biases fixed, each movie
bias has the closed form ``sum_{u rated m} (r - mu - b_u) / (reg_movie + n_m)``,
and symmetrically for the users. Each pass lowers the objective; ten passes
settle it to well below the rating's resolution on MovieLens.

Unknown ids: the models take user and movie *indices*. An index outside
``0..n-1`` raises ``IndexError``, as ``nn.Embedding`` does for the factor
models. A user or movie index that has no training rating gets a bias of 0,
so its prediction falls back to mu (plus the other side's bias).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from resrec.models.base import RatingModel

if TYPE_CHECKING:
    from resrec.config import TrainConfig


class DirectFitModel(RatingModel):
    """A model whose values are computed from the training ratings, not trained by SGD."""

    fits_directly = True

    def __init__(self, n_users: int, n_movies: int) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_movies = n_movies

    def row_tables(self) -> dict[str, tuple[nn.Embedding, str]]:
        """No tables for the trainer: everything is fitted by :meth:`fit_direct`."""
        return {}

    def forward_rows(self, rows: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} is fitted directly and has no row tables; call forward()"
        )

    def fit_direct(self, users: Tensor, movies: Tensor, targets: Tensor) -> None:
        """Fit to ``targets`` (rating minus mu) of the given user and movie indices."""
        raise NotImplementedError

    def components(self, users: Tensor, movies: Tensor) -> dict[str, Tensor]:
        """The additive terms of ``forward``: ``dot``, ``user_bias``, ``movie_bias``, ``side``.

        Terms a model lacks are zero, as for the factor models.
        """
        user_bias, movie_bias = self._biases(users, movies)
        zero = torch.zeros_like(user_bias)
        return {"dot": zero, "user_bias": user_bias, "movie_bias": movie_bias, "side": zero}

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        user_bias, movie_bias = self._biases(users, movies)
        return user_bias + movie_bias

    def _biases(self, users: Tensor, movies: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _check_indices(self, users: Tensor, movies: Tensor) -> None:
        for index, size, kind in ((users, self.n_users, "user"), (movies, self.n_movies, "movie")):
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
                raise IndexError(f"{kind} index out of range 0..{size - 1}")


class GlobalMean(DirectFitModel):
    """Predicts mu, the mean training rating, for every pair (offset 0)."""

    @classmethod
    def from_config(cls, config: TrainConfig, n_users: int, n_movies: int) -> GlobalMean:
        return cls(n_users, n_movies)

    def fit_direct(self, users: Tensor, movies: Tensor, targets: Tensor) -> None:
        """Nothing to fit: mu, added by the caller, is already the answer."""
        self._check_indices(users, movies)

    def _biases(self, users: Tensor, movies: Tensor) -> tuple[Tensor, Tensor]:
        self._check_indices(users, movies)
        zero = torch.zeros(users.shape[0], dtype=torch.float32, device=users.device)
        return zero, zero


class Biases(DirectFitModel):
    """``mu + b_u + b_m`` with ridge-regularised biases, by alternating closed-form passes.

    Parameters
    ----------
    n_users, n_movies
        Sizes of the user and movie index ranges.
    reg_user, reg_movie
        Ridge penalties on the user and movie biases, in units of "pseudo
        ratings": a movie with ``n_m`` ratings has its mean offset shrunk by
        ``n_m / (n_m + reg_movie)``.
    passes
        Alternating passes (movie biases first, then user biases).
    """

    user_bias: Tensor
    movie_bias: Tensor

    def __init__(
        self,
        n_users: int,
        n_movies: int,
        *,
        reg_user: float = 5.0,
        reg_movie: float = 2.0,
        passes: int = 10,
    ) -> None:
        super().__init__(n_users, n_movies)
        if reg_user < 0 or reg_movie < 0 or passes < 1:
            raise ValueError(
                f"Biases needs reg_user, reg_movie >= 0 and passes >= 1; "
                f"got {reg_user}, {reg_movie}, {passes}"
            )
        self.reg_user = reg_user
        self.reg_movie = reg_movie
        self.passes = passes
        self.register_buffer("user_bias", torch.zeros(n_users))
        self.register_buffer("movie_bias", torch.zeros(n_movies))

    @classmethod
    def from_config(cls, config: TrainConfig, n_users: int, n_movies: int) -> Biases:
        return cls(
            n_users,
            n_movies,
            reg_user=config.bias_reg_user,
            reg_movie=config.bias_reg_movie,
            passes=config.bias_passes,
        )

    def fit_direct(self, users: Tensor, movies: Tensor, targets: Tensor) -> None:
        """Set the biases to the regularised least-squares fit of ``targets``."""
        self._check_indices(users, movies)
        t = targets.to(torch.float64)
        count_u = torch.bincount(users, minlength=self.n_users).to(torch.float64)
        count_m = torch.bincount(movies, minlength=self.n_movies).to(torch.float64)
        b_u = torch.zeros(self.n_users, dtype=torch.float64, device=t.device)
        b_m = torch.zeros(self.n_movies, dtype=torch.float64, device=t.device)

        for _ in range(self.passes):
            # Each line is the exact minimiser over one side with the other side fixed.
            residual = t - b_u[users]
            b_m = _sum_by(movies, residual, self.n_movies) / (count_m + self.reg_movie)
            residual = t - b_m[movies]
            b_u = _sum_by(users, residual, self.n_users) / (count_u + self.reg_user)

        # Rows with neither ratings nor a penalty (reg 0, count 0) are 0/0: make them 0.
        self.user_bias.copy_(torch.nan_to_num(b_u, nan=0.0).to(torch.float32))
        self.movie_bias.copy_(torch.nan_to_num(b_m, nan=0.0).to(torch.float32))

    def _biases(self, users: Tensor, movies: Tensor) -> tuple[Tensor, Tensor]:
        return self.user_bias.index_select(0, users), self.movie_bias.index_select(0, movies)


def _sum_by(index: Tensor, values: Tensor, size: int) -> Tensor:
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, values)
