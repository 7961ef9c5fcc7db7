"""The residual network and its two siblings.

For user u and movie m (DESIGN.md)::

    main(u, m) = p_u . q_m + b_u + b_m
    side(u, m) = W2 . act(W1 . [p_u ; q_m] + c1) + c2
    r_hat      = mu + main + side          (ResidualNet)
    r_hat      = mu + main                 (MFNet, biased matrix factorisation)
    r_hat      = mu + side (ReLU, no b_u / b_m)   (DeepNet)

All three return ``r_hat - mu``; the caller adds mu.

With ``implicit=True`` (config ``implicit_feedback``), p_u is replaced everywhere
by the SVD++ user vector::

    p_u + |N(u)|^-1/2 * sum of y_j over j in N(u)

where N(u) holds the movies u rated in the training split (given by
:meth:`_FactorModel.set_rated`) and y_j is one more learned K-vector per movie.
y is a dense parameter, differentiated through :meth:`derived_rows`; it starts
at zero, so an untrained model predicts what the plain one does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resrec.models.autoencoder import MovieRatingsSide
from resrec.models.base import RatingModel, keras_uniform_

if TYPE_CHECKING:
    from resrec.config import TrainConfig

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def _glorot_(layer: nn.Linear, generator: torch.Generator) -> None:
    """Keras's default Dense init: Glorot-uniform weights, zero bias."""
    fan_out, fan_in = layer.weight.shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        layer.weight.uniform_(-limit, limit, generator=generator)
        layer.bias.zero_()


class SideBranch(nn.Module):
    """The MLP on ``[p_u ; q_m]``: hidden layers, then one output unit.

    Each hidden layer is Linear -> (BatchNorm) -> activation -> (Dropout).
    """

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        activation: str,
        *,
        dropout: float = 0.0,
        batch_norm: bool = False,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            linear = nn.Linear(width, size)
            _glorot_(linear, generator)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        out = nn.Linear(width, 1)
        _glorot_(out, generator)
        layers.append(out)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).squeeze(-1)


class _FactorModel(RatingModel):
    """Shared construction: user and movie factor tables (and bias tables)."""

    uses_biases = True
    uses_side = True  # the MLP side branch on [p_u ; q_m]
    accepts_ratings_side = False  # may take the movie_ratings side branch instead
    default_activation: str | None = None
    ratings_side: MovieRatingsSide | None
    rated_ptr: Tensor  # implicit feedback: N(u) as CSR row pointers, (n_users + 1,)
    rated_movies: Tensor  # the movie indices of every N(u), user after user
    rated_norm: Tensor  # |N(u)| ** -1/2, 0 for a user without training ratings

    def __init__(
        self,
        n_users: int,
        n_movies: int,
        embedding_dim: int,
        *,
        hidden: tuple[int, ...] = (400,),
        activation: str = "elu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        init_scale: float = 0.05,
        implicit: bool = False,
        side_input: str = "embeddings",
        side_units: int = 500,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        generator = generator or torch.Generator().manual_seed(0)
        self.n_users = n_users
        self.n_movies = n_movies
        self.embedding_dim = embedding_dim

        self.user_factors = nn.Embedding(n_users, embedding_dim)
        self.movie_factors = nn.Embedding(n_movies, embedding_dim)
        keras_uniform_(self.user_factors, init_scale, generator)
        keras_uniform_(self.movie_factors, init_scale, generator)
        if self.uses_biases:
            self.user_bias = nn.Embedding(n_users, 1)
            self.movie_bias = nn.Embedding(n_movies, 1)
            keras_uniform_(self.user_bias, init_scale, generator)
            keras_uniform_(self.movie_bias, init_scale, generator)
        self.ratings_side = None
        if side_input == "movie_ratings" and self.accepts_ratings_side:
            self.uses_side = False
            self.ratings_side = MovieRatingsSide(n_users, n_movies, side_units, generator=generator)
        if self.uses_side:
            self.side = SideBranch(
                2 * embedding_dim,
                hidden,
                activation,
                dropout=dropout,
                batch_norm=batch_norm,
                generator=generator,
            )
        self.implicit = implicit
        if implicit:
            # y_j, one per movie; zero at first, so training starts from the plain model.
            self.implicit_factors = nn.Embedding(n_movies, embedding_dim)
            nn.init.zeros_(self.implicit_factors.weight)
            # N(u), the movies each user rated in training, as CSR (set_rated fills it).
            # Not saved with the weights: a run keeps them in train_pairs.npz.
            self.register_buffer("rated_ptr", torch.zeros(n_users + 1, dtype=torch.int64), False)
            self.register_buffer("rated_movies", torch.zeros(0, dtype=torch.int64), False)
            self.register_buffer("rated_norm", torch.zeros(n_users), False)

    def set_rated(self, users: np.ndarray | Tensor, movies: np.ndarray | Tensor) -> None:
        """Record N(u), the movies each user rated in training (implicit feedback only).

        ``users`` and ``movies`` are the user and movie indices of the training
        ratings. A user without training ratings gets no implicit term.
        """
        if not self.implicit:
            return
        users_t = torch.as_tensor(np.asarray(users), dtype=torch.int64)
        movies_t = torch.as_tensor(np.asarray(movies), dtype=torch.int64)
        order = torch.argsort(users_t * self.n_movies + movies_t)
        counts = torch.bincount(users_t, minlength=self.n_users)
        device = self.rated_ptr.device
        self.rated_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(device)
        self.rated_movies = movies_t[order].to(device)
        norm = counts.to(torch.float32).clamp(min=1).rsqrt() * (counts > 0)
        self.rated_norm = norm.to(device)

    def derived_rows(self, users: Tensor, movies: Tensor) -> dict[str, Tensor]:
        """``user_implicit``: |N(u)|^-1/2 * sum of y_j over j in N(u), per pair."""
        if not self.implicit:
            return {}
        # One bag per distinct user of the batch, then one row per pair.
        distinct, inverse = torch.unique(users, return_inverse=True)
        start = self.rated_ptr.index_select(0, distinct)
        counts = self.rated_ptr.index_select(0, distinct + 1) - start
        offsets = counts.cumsum(0) - counts
        total = int(counts.sum())

        # Where each bag's movies lie in rated_movies, and their weights.
        shift = torch.repeat_interleave(start - offsets, counts, output_size=total)
        where = torch.arange(total, device=users.device) + shift
        norms = self.rated_norm.index_select(0, distinct)
        weights = torch.repeat_interleave(norms, counts, output_size=total)

        bags = F.embedding_bag(
            self.rated_movies.index_select(0, where),
            self.implicit_factors.weight,
            offsets,
            mode="sum",
            per_sample_weights=weights,
        )  # (distinct users, K)
        return {"user_implicit": bags.index_select(0, inverse)}

    @torch.no_grad()
    def user_table(self) -> Tensor:
        """Every user's vector as the model uses it: p_u, plus the implicit term if any.

        Inference works on this table, so a model with implicit feedback is
        served like one without (shape ``(n_users, embedding_dim)``).
        """
        p = self.user_factors.weight.detach()
        if not self.implicit:
            return p
        users = torch.arange(self.n_users, device=p.device)
        return p + self.derived_rows(users, users)["user_implicit"]

    def user_vectors(self, rows: dict[str, Tensor]) -> Tensor:
        """p_u, plus the implicit term when the model has one."""
        if self.implicit:
            return rows["user_factors"] + rows["user_implicit"]
        return rows["user_factors"]

    @classmethod
    def from_config(
        cls, config: TrainConfig, n_users: int, n_movies: int, generator: torch.Generator
    ) -> _FactorModel:
        return cls(
            n_users,
            n_movies,
            config.embedding_dim,
            hidden=config.hidden,
            activation=cls.default_activation or config.activation,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
            init_scale=config.init_scale,
            implicit=config.implicit_feedback,
            side_input=config.side_input,
            side_units=config.side_units,
            generator=generator,
        )

    def row_tables(self) -> dict[str, tuple[nn.Embedding, str]]:
        tables = {
            "user_factors": (self.user_factors, "user"),
            "movie_factors": (self.movie_factors, "movie"),
        }
        if self.uses_biases:
            tables["user_bias"] = (self.user_bias, "user")
            tables["movie_bias"] = (self.movie_bias, "movie")
        return tables

    def components(self, users: Tensor, movies: Tensor) -> dict[str, Tensor]:
        """Each additive term of the prediction minus mu, per (user, movie) pair.

        Keys: ``dot`` (p_u . q_m), ``user_bias``, ``movie_bias`` and ``side``;
        terms a model lacks are zero. They sum exactly to ``forward``.
        """
        rows = self.gather(users, movies)
        zero = torch.zeros(users.shape[0], dtype=rows["user_factors"].dtype)
        out = {"dot": zero, "user_bias": zero, "movie_bias": zero, "side": zero}
        if self.uses_biases:
            out["dot"] = (self.user_vectors(rows) * rows["movie_factors"]).sum(-1)
            out["user_bias"] = rows["user_bias"].squeeze(-1)
            out["movie_bias"] = rows["movie_bias"].squeeze(-1)
        if self.uses_side:
            p = self.user_vectors(rows)
            out["side"] = self.side(torch.cat([p, rows["movie_factors"]], -1))
        if self.ratings_side is not None:
            out["side"] = self.ratings_side(users, movies)
        return out

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        out = self.forward_rows(self.gather(users, movies))
        if self.ratings_side is not None:
            out = out + self.ratings_side(users, movies)
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        """As the base class, less the movie_ratings side branch (trained in its own stage)."""
        params = super().dense_parameters()
        if self.ratings_side is None:
            return params
        own = {id(p) for p in self.ratings_side.parameters()}
        return [p for p in params if id(p) not in own]


class ResidualNet(_FactorModel):
    """Matrix-factorisation branch plus a side branch, added (the reference).

    The side branch is the MLP on ``[p_u ; q_m]``, or with ``side_input =
    "movie_ratings"`` a :class:`~resrec.models.autoencoder.MovieRatingsSide`,
    which :meth:`forward` adds (:meth:`forward_rows` is then the main branch).
    """

    accepts_ratings_side = True

    def forward_rows(self, rows: dict[str, Tensor]) -> Tensor:
        p, q = self.user_vectors(rows), rows["movie_factors"]
        main = (p * q).sum(-1) + rows["user_bias"].squeeze(-1) + rows["movie_bias"].squeeze(-1)
        if not self.uses_side:
            return main
        return main + self.side(torch.cat([p, q], -1))


class MFNet(_FactorModel):
    """Biased matrix factorisation: the main branch alone."""

    uses_side = False

    def forward_rows(self, rows: dict[str, Tensor]) -> Tensor:
        p, q = self.user_vectors(rows), rows["movie_factors"]
        return (p * q).sum(-1) + rows["user_bias"].squeeze(-1) + rows["movie_bias"].squeeze(-1)


class DeepNet(_FactorModel):
    """The side branch alone, with ReLU and no biases (the tutorial's "deep" model)."""

    uses_biases = False
    default_activation = "relu"

    def forward_rows(self, rows: dict[str, Tensor]) -> Tensor:
        p, q = self.user_vectors(rows), rows["movie_factors"]
        return self.side(torch.cat([p, q], -1))
