"""A side branch that reads each movie's ratings: an item autoencoder's decoder.

With ``side_input = "movie_ratings"`` the residual model's side branch is::

    h_m        = sigmoid(V . r_m + c)          (the movie's code, side_units wide)
    side(u, m) = w_u . h_m + d_u

where ``r_m`` is the vector of the training ratings movie m received (one
coordinate per user, 0 where the user did not rate it), ``V`` the encoder (a
row per user, stored as ``encoder``), and ``w_u``, ``d_u`` the user's decoder
row and bias. It is the decoder of an item-based autoencoder (I-AutoRec), read
at one user: the encoder sees which users rated the movie and how, which the
movie's K factors summarise only coarsely.

This branch is trained after the main branch, on the main branch's residuals,
by :func:`resrec.train.side_stage.train_ratings_side`; until then its codes
and decoder bias are zero, so it adds nothing. Its codes for every movie are kept in ``codes``
(saved with the weights), so a loaded model predicts without the training
ratings.

Limitations
    The codes are those of the training ratings: a movie's code does not change
    when a new user folds in ratings of it. The encoder has a row per user, so
    the branch costs ``2 * n_users * side_units`` weights (138M at ML-20M
    scale with 500 units).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MovieRatings:
    """The training ratings grouped by movie (CSR): what the encoder reads.

    ``ptr[m]:ptr[m+1]`` indexes the users (``users``) who rated movie m and
    their ratings (``ratings``); ``rows`` gives each entry's position in the
    training examples it came from.
    """

    def __init__(self, users: Tensor, movies: Tensor, ratings: Tensor, n_movies: int) -> None:
        self.rows = torch.argsort(movies, stable=True)
        self.users = users.index_select(0, self.rows)
        self.ratings = ratings.index_select(0, self.rows).to(torch.float32)
        counts = torch.bincount(movies, minlength=n_movies)
        self.ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.counts = counts

    def entries(self, movies: Tensor) -> tuple[Tensor, Tensor]:
        """Positions (into ``users``/``ratings``) of the given movies' entries, movie
        after movie, and each entry's place in ``movies``."""
        start = self.ptr.index_select(0, movies)
        counts = self.ptr.index_select(0, movies + 1) - start
        total = int(counts.sum())
        offsets = counts.cumsum(0) - counts
        shift = torch.repeat_interleave(start - offsets, counts, output_size=total)
        where = torch.arange(total, device=movies.device) + shift
        owner = torch.repeat_interleave(
            torch.arange(movies.shape[0], device=movies.device), counts, output_size=total
        )
        return where, owner


class MovieRatingsSide(nn.Module):
    """``side(u, m) = w_u . sigmoid(V . r_m + c) + d_u`` (see the module docstring)."""

    codes: Tensor

    def __init__(
        self, n_users: int, n_movies: int, units: int, *, generator: torch.Generator
    ) -> None:
        super().__init__()
        # nn.Linear's default ranges: 1/sqrt(inputs), n_users into the encoder and
        # units into the decoder. The decoder bias and the codes start at zero, so the
        # branch adds exactly 0 until its stage computes the codes.
        self.encoder = nn.Parameter(torch.empty(n_users, units))
        self.encoder_bias = nn.Parameter(torch.empty(units))
        self.decoder = nn.Parameter(torch.empty(n_users, units))
        self.decoder_bias = nn.Parameter(torch.zeros(n_users))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(max(n_users, 1))
            self.encoder.uniform_(-bound, bound, generator=generator)
            self.encoder_bias.uniform_(-bound, bound, generator=generator)
            self.decoder.uniform_(
                -1.0 / math.sqrt(units), 1.0 / math.sqrt(units), generator=generator
            )
        self.register_buffer("codes", torch.zeros(n_movies, units))

    @property
    def units(self) -> int:
        return int(self.encoder.shape[1])

    def encode(self, data: MovieRatings, movies: Tensor) -> Tensor:
        """Codes ``h_m`` of ``movies`` from their training ratings, differentiable."""
        where, _ = data.entries(movies)
        counts = data.ptr.index_select(0, movies + 1) - data.ptr.index_select(0, movies)
        offsets = counts.cumsum(0) - counts
        pre = F.embedding_bag(
            data.users.index_select(0, where),
            self.encoder,
            offsets,
            mode="sum",
            per_sample_weights=data.ratings.index_select(0, where),
        )
        return torch.sigmoid(pre + self.encoder_bias)

    @torch.no_grad()
    def refresh_codes(self, data: MovieRatings, block: int = 1024) -> None:
        """Recompute ``codes`` for every movie (movies without ratings get sigmoid(c))."""
        n_movies = self.codes.shape[0]
        for lo in range(0, n_movies, block):
            movies = torch.arange(lo, min(lo + block, n_movies), device=self.codes.device)
            self.codes[lo : lo + block] = self.encode(data, movies)

    def score(self, users: Tensor, codes: Tensor) -> Tensor:
        """``w_u . h + d_u`` for rows of users and codes."""
        w = self.decoder.index_select(0, users)
        return (w * codes).sum(-1) + self.decoder_bias.index_select(0, users)

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        """The side branch of (user, movie) index pairs, from the stored codes.

        When the pairs cover few users and many movies each (a user's whole
        catalogue, as top-N and coverage ask), one matrix product of those
        users' decoder rows with every code costs less than a gather per pair.
        """
        distinct, inverse = torch.unique(users, return_inverse=True)
        if torch.is_grad_enabled() or distinct.shape[0] * self.codes.shape[0] > 4 * users.shape[0]:
            return self.score(users, self.codes.index_select(0, movies))
        table = self.decoder.index_select(0, distinct) @ self.codes.t()  # (users, movies)
        table += self.decoder_bias.index_select(0, distinct)[:, None]
        return table[inverse, movies]

    def penalty(self) -> Tensor:
        """Sum of squares of the encoder and decoder weights (not the biases)."""
        return (self.encoder * self.encoder).sum() + (self.decoder * self.decoder).sum()

    @torch.no_grad()
    def tables(self) -> tuple[Tensor, Tensor]:
        """The branch as a dot product: user rows ``[w_u, d_u]``, movie rows ``[h_m, 1]``.

        ``(users[u] * movies[m]).sum() == side(u, m)``; inference serves the
        branch this way, as extra columns of the factor tables.
        """
        users = torch.cat([self.decoder, self.decoder_bias[:, None]], 1)
        movies = torch.cat([self.codes, self.codes.new_ones(self.codes.shape[0], 1)], 1)
        return users.detach().float(), movies.detach().float()
