"""Inference: predictions, top-N recommendations, similar movies, explanations, fold-in.

>>> rec = Recommender.load("runs/ml-100k-tutorial")
>>> rec.predict(user_id=1, movie_id=50).prediction
>>> [item.movie.title for item in rec.recommend(user_id=1, n=10).items]
>>> rec.recommend_for_ratings({50: 5, 172: 4, 181: 5}, n=10)

Everything takes and returns raw ``user_id`` / ``movie_id`` values. A
:class:`Recommender` is built once, is read-only afterwards and may be shared
by threads (the HTTP server does so).

How the numbers are made
------------------------
The prediction is ``mu + user_bias + movie_bias + dot + side`` (DESIGN.md),
summed left to right in float64 from float32 terms, then clipped to the
rating scale. :meth:`Recommender.explain` returns those five terms and their
sum, so they add up exactly to the unclipped prediction.

Top-N scores one user against every movie at once. The side branch's first
layer splits as ``W1 . [p; q] = W1u . p + W1m . q``; the user half is
computed once per user, the movie half's dot with the output layer once at
load, and the rest block by block in cache (see :class:`_SideBranch`). Candidates are then
rescored exactly, one pair at a time, and ordered by the unclipped score,
highest first, ties broken by ascending ``movie_id``.

Unknown and untrained ids
-------------------------
A user or movie is *known* when it has at least one training rating. Ids
absent from the id map, and ids in the map with no training rating (they
occur only in held-out ratings, so their embeddings were never trained), are
refused with :class:`~resrec.errors.UnknownIdError` unless the caller asks
for the fallback (``fallback=True``), which uses the bias estimate:
``mu + movie_bias`` for an unknown user, ``mu + user_bias`` for an unknown
movie and ``mu`` when both are unknown. Models without bias terms (``deep``)
use the mean trained embedding of the unknown side instead. The result says
which estimate it is (``estimate="fallback"`` and a ``note``).

Limitations
-----------
- Untrained movies are never recommended, and :meth:`Recommender.similar`
  only compares trained movies.
- :meth:`Recommender.similar` is the cosine of movie embeddings only: it
  ignores the movie biases (overall popularity or quality) and the side
  branch, which reads the embeddings non-linearly, so two movies the network
  treats alike can have dissimilar embeddings. For ``deep`` models the
  embeddings are only used through the side branch, so the cosine is a weak
  guide.
- Fold-in fits a new user's embedding and bias only; the movie tables and the
  side branch stay frozen, so a new user cannot change what the model knows
  about movies.
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, DataError, ModelFileError, UnknownIdError
from resrec.ids import IdMap

if TYPE_CHECKING:
    from resrec.data.movies import Movies
    from resrec.models.base import RatingModel
    from resrec.run import Run

log = logging.getLogger(__name__)

Estimate = Literal["model", "folded-in", "fallback"]
TERMS = ("mu", "user_bias", "movie_bias", "dot", "side")

_CHUNK_ROWS = 512  # movies per block in the all-movies pass: 512 x 400 floats fit in L2
_PAIR_BLOCK = 512  # (user, movie) pairs per block when scoring pairs


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Movie:
    """A movie as the outside world sees it."""

    movie_id: int
    title: str | None  # None when no movie metadata is loaded or it lacks this movie
    genres: tuple[str, ...]
    n_ratings: int  # training ratings the model saw; 0 means the model cannot score it

    @property
    def known(self) -> bool:
        return self.n_ratings > 0


@dataclass(frozen=True)
class Explanation:
    """The additive terms of one prediction.

    ``raw = mu + user_bias + movie_bias + dot + side`` exactly (float64, left to
    right); ``prediction`` is ``raw`` clipped to the rating scale.
    """

    mu: float
    user_bias: float
    movie_bias: float
    dot: float
    side: float
    raw: float
    prediction: float

    def terms(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TERMS}


@dataclass(frozen=True)
class Prediction:
    """A prediction for one (user, movie) pair, with how it was made."""

    user_id: int | None  # None for a folded-in user
    movie: Movie
    prediction: float  # clipped to the rating scale
    raw: float  # before clipping
    estimate: Estimate
    note: str | None = None
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Recommendation:
    rank: int
    movie: Movie
    prediction: float
    raw: float
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Recommendations:
    """Top-N movies for one user; ``reason`` says why the list is empty or short."""

    user_id: int | None
    items: list[Recommendation]
    estimate: Estimate
    excluded_rated: int  # movies left out because the user rated them
    candidates: int  # movies that could be recommended
    note: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SimilarMovie:
    movie: Movie
    similarity: float  # cosine of the two movie embeddings


@dataclass(frozen=True)
class SimilarMovies:
    movie: Movie
    items: list[SimilarMovie]


@dataclass(frozen=True)
class FoldedUser:
    """A new user's embedding and bias, fitted against the frozen model."""

    factors: np.ndarray  # (K,) float32
    bias: float
    movie_index: np.ndarray  # the movies the user rated (indices)
    movie_id: np.ndarray
    rating: np.ndarray
    fit_rmse: float  # RMSE of the (unclipped) fit on the given ratings
    ignored: list[int] = field(default_factory=list)  # unknown movie_ids skipped


@dataclass
class ScoreReport:
    """What :meth:`Recommender.score_file` did."""

    rows: int = 0  # data lines read
    scored: int = 0
    fallback: int = 0  # rows scored with the fallback estimate
    bad: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first few
    seconds: float = 0.0


# --------------------------------------------------------------------------- side branch


class _SideBranch:
    """The side branch rearranged for fast scoring; float32, read-only.

    The first Linear (with a following eval-mode BatchNorm folded in) splits as
    ``W1 . [p; q] + c1 = W1u . p + W1m . q + c1``. For one user and every movie
    the pre-activations ``x = Q . W1m^T + (c1 + W1u . p)`` are made block by
    block (512 movies at a time, so a block stays in the L2 cache) by one small
    matrix product from the K-wide movie table. Streaming a precomputed
    (n_movies, H) table ``W1m . q + c1`` instead was measured slower: at ML-20M
    scale it is 43 MB read per user, against 1 MB for the movie table.

    When one activation and one Linear to a single output follow (the
    reference network), the dot with ``w2`` needs no pass over the block for
    its linear part, with ``z = min(x, 0)``::

        w2 . elu(x) = w2 . x - w2 . z + alpha * (w2 . exp(z) - sum(w2))
        w2 . x      = Q . (W1m^T w2) + w2 . (c1 + W1u . p)     (precomputed per movie)

    so a block costs one product, one clamp, one exponential and two
    matrix-vector products, all in cache.
    """

    def __init__(self, side: nn.Module, movie_factors: Tensor) -> None:
        layers = [m for m in side.layers if not isinstance(m, nn.Dropout)]  # type: ignore[union-attr]
        first = layers.pop(0)
        if not isinstance(first, nn.Linear):
            raise ModelFileError(f"side branch starts with {type(first).__name__}, not Linear")
        weight = first.weight.detach().clone()
        bias = first.bias.detach().clone()
        if layers and isinstance(layers[0], nn.BatchNorm1d):
            scale, shift = _batch_norm_affine(layers.pop(0))
            weight = weight * scale[:, None]
            bias = bias * scale + shift
        # Private copies without gradients: fold-in differentiates through them, and
        # must neither touch the model's parameters nor race with other threads.
        self.activation = copy.deepcopy(layers.pop(0)) if layers else nn.Identity()
        self.rest = copy.deepcopy(nn.Sequential(*layers)).eval().requires_grad_(False)
        self.activation.eval().requires_grad_(False)

        k = movie_factors.shape[1]
        self.hidden = weight.shape[0]
        self.movie_factors = movie_factors
        self.w1 = weight.contiguous()  # (H, 2K)
        self.c1 = bias.contiguous()  # (H,)
        self.w1u_t = weight[:, :k].t().contiguous()  # (K, H)
        self.w1m_t = weight[:, k:].t().contiguous()  # (K, H)

        # The output layer, for the closed forms (zeros when they do not apply).
        self.kind, self.alpha = _fast_kind(self.activation, layers)
        self.w2 = torch.zeros(self.hidden)
        self.c2 = 0.0
        out = layers[0] if self.kind is not None else None
        if isinstance(out, nn.Linear):
            self.w2 = out.weight.detach()[0].clone()
            self.c2 = float(out.bias.detach()[0])
        self.alpha_w2 = self.alpha * self.w2
        self.sum_w2 = float(self.w2.sum())
        with torch.no_grad():
            self.movie_linear = movie_factors @ (self.w1m_t @ self.w2)  # (n_movies,)

    # -- all movies for one user -------------------------------------------

    def all_movies(
        self, p: Tensor, pool: ThreadPoolExecutor | None = None, parts: int = 1
    ) -> Tensor:
        """Side-branch output for one user embedding ``p`` (K,) and every movie.

        With a ``pool``, the movies are split in up to ``parts`` ranges scored by
        its threads (torch releases the GIL in each operation).
        """
        b = p @ self.w1u_t + self.c1  # (H,): the user's share of every pre-activation
        if self.kind is None:
            return self._general_blocks(b)
        linear = self.movie_linear + float(self.w2 @ b)  # w2 . x for every movie
        if self.kind == "identity":
            return linear + self.c2

        n = self.movie_factors.shape[0]
        negative = torch.empty(n)  # w2 . min(x, 0)
        expo = torch.empty(n)  # alpha w2 . exp(min(x, 0))
        parts = 1 if pool is None else min(parts, n // (4 * _CHUNK_ROWS))
        if parts <= 1:
            self._elu_blocks(b, 0, n, negative, expo)
        else:
            step = -(-n // parts // _CHUNK_ROWS) * _CHUNK_ROWS
            assert pool is not None
            jobs = [
                pool.submit(self._elu_blocks, b, lo, min(n, lo + step), negative, expo)
                for lo in range(0, n, step)
            ]
            for job in jobs:
                job.result()
        out = linear - negative
        if self.kind == "elu":
            out += expo
            out -= self.alpha * self.sum_w2
        return out + self.c2

    def _elu_blocks(self, b: Tensor, lo: int, hi: int, negative: Tensor, expo: Tensor) -> None:
        """Fill ``negative`` and ``expo`` for movies ``lo:hi``, a block at a time."""
        q = self.movie_factors
        with torch.inference_mode():  # per thread: a pool's threads start outside it
            block = torch.empty(min(_CHUNK_ROWS, hi - lo), self.hidden)
            for start in range(lo, hi, _CHUNK_ROWS):
                stop = min(hi, start + _CHUNK_ROWS)
                z = torch.addmm(b, q[start:stop], self.w1m_t, out=block[: stop - start])
                z.clamp_(max=0)
                torch.mv(z, self.w2, out=negative[start:stop])
                if self.kind == "elu":
                    torch.mv(z.exp_(), self.alpha_w2, out=expo[start:stop])

    def _general_blocks(self, b: Tensor) -> Tensor:
        q = self.movie_factors
        n = q.shape[0]
        out = torch.empty(n)
        for lo in range(0, n, _CHUNK_ROWS):
            hi = min(n, lo + _CHUNK_ROWS)
            x = torch.addmm(b, q[lo:hi], self.w1m_t)
            out[lo:hi] = self.rest(self.activation(x)).reshape(-1)
        return out

    # -- pairs --------------------------------------------------------------

    def pairs(self, p: Tensor, q: Tensor, block: Tensor | None = None) -> Tensor:
        """Side-branch output for rows of user embeddings ``p`` and movie embeddings ``q``.

        ``block`` is optional scratch space of at least ``(len(p), H)``.
        """
        x = torch.cat([p, q], 1)
        if self.kind is None or torch.is_grad_enabled():
            h = torch.addmm(self.c1, x, self.w1.t())
            return self.rest(self.activation(h)).reshape(-1)
        if block is None:
            block = torch.empty(x.shape[0], self.hidden)
        h = torch.addmm(self.c1, x, self.w1.t(), out=block[: x.shape[0]])  # (n, H)
        out = h @ self.w2
        if self.kind == "identity":
            return out + self.c2
        out -= h.clamp_(max=0) @ self.w2
        if self.kind == "elu":
            out += h.exp_() @ self.alpha_w2 - self.alpha * self.sum_w2
        return out + self.c2


def _batch_norm_affine(norm: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``scale * x + shift``."""
    assert norm.running_var is not None and norm.running_mean is not None
    scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean.detach() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.detach()
    return scale, shift


def _fast_kind(activation: nn.Module, rest: list[nn.Module]) -> tuple[str | None, float]:
    """Which closed form the all-movies pass can use, and ELU's alpha."""
    single_out = len(rest) == 1 and isinstance(rest[0], nn.Linear) and rest[0].out_features == 1
    if not single_out:
        return None, 0.0
    if isinstance(activation, nn.ELU):
        return "elu", float(activation.alpha)
    if isinstance(activation, nn.ReLU):
        return "relu", 0.0
    if isinstance(activation, nn.Identity):
        return "identity", 0.0
    return None, 0.0


# --------------------------------------------------------------------------- recommender


class Recommender:
    """Predictions, top-N, similar movies, explanations and fold-in for a trained model.

    Build it with :meth:`load` from a run directory, or directly from a model
    and its id maps. All tables are copied to float32 tensors at construction;
    nothing changes afterwards.

    Parameters
    ----------
    model
        A trained ``residual``, ``mf`` or ``deep`` model.
    user_map, movie_map
        The id maps of the run.
    mu
        Mean training rating.
    scale
        The rating scale predictions are clipped to.
    train_users, train_movies
        User and movie indices of every training rating: what each user rated
        (excluded from recommendations) and which ids are known.
    movies
        Optional titles and genres.
    noise_variance
        The model's rating error variance (its validation or test MSE); it
        weighs the prior in :meth:`fold_in`. Defaults to 1.
    threads
        Python threads that share one user's all-movie scores (large catalogs
        only). Useful for single-request latency with torch at one thread; a
        server gets its parallelism from concurrent requests instead.
    """

    def __init__(
        self,
        model: RatingModel,
        user_map: IdMap,
        movie_map: IdMap,
        mu: float,
        scale: RatingScale,
        train_users: np.ndarray,
        train_movies: np.ndarray,
        *,
        movies: Movies | None = None,
        noise_variance: float | None = None,
        name: str = "<memory>",
        threads: int = 1,
    ) -> None:
        if not hasattr(model, "user_factors") or not hasattr(model, "movie_factors"):
            raise ModelFileError(
                f"{type(model).__name__} has no embeddings; inference supports "
                "the residual, mf and deep models"
            )
        self.name = name
        self.kind = type(model).__name__
        self.user_map = user_map
        self.movie_map = movie_map
        self.mu = float(mu)
        self.scale = scale
        self.noise_variance = float(noise_variance or 1.0)
        model.eval()

        self._load_tables(model)
        self._index_training(train_users, train_movies)
        self._fit_prior()
        self.movies = movies
        self._meta_row = _metadata_rows(movie_map, movies)
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, "resrec-score") if threads > 1 else None

    # -- construction -----------------------------------------------------------

    @classmethod
    def load(cls, run_path: str | Path, movies_path: str | Path | None = None) -> Recommender:
        """Load a run directory, and movie metadata from ``movies_path`` or beside the ratings.

        Without ``movies_path`` the movies file of the release is looked for
        next to the ratings file the run was trained on; if there is none,
        results carry no titles or genres.
        """
        from resrec.run import load_run

        run = load_run(run_path)
        return cls.from_run(run, movies=_load_movies(run, movies_path))

    @classmethod
    def from_run(cls, run: Run, *, movies: Movies | None = None) -> Recommender:
        users, movie_rows = run.train_pairs()
        return cls(
            run.model,
            run.user_map,
            run.movie_map,
            run.mu,
            run.scale,
            users,
            movie_rows,
            movies=movies,
            noise_variance=_noise_variance(run.metrics),
            name=str(run.path),
        )

    def _load_tables(self, model: RatingModel) -> None:
        self.has_biases = bool(getattr(model, "uses_biases", False))
        has_side = bool(getattr(model, "uses_side", False))
        with torch.no_grad():
            # The user vectors the model uses (with implicit feedback, p_u plus its term).
            user_factors: Tensor = model.user_table()  # type: ignore[operator]
            movie_factors: Tensor = model.movie_factors.weight  # type: ignore[union-attr,assignment]
            self.P = user_factors.detach().float().clone().contiguous()
            self.Q = movie_factors.detach().float().clone().contiguous()
            n_users, n_movies = self.P.shape[0], self.Q.shape[0]
            self.BU = torch.zeros(n_users)
            self.BM = torch.zeros(n_movies)
            if self.has_biases:
                self.BU = model.user_bias.weight.detach().float().reshape(-1).clone()  # type: ignore[union-attr,operator]
                self.BM = model.movie_bias.weight.detach().float().reshape(-1).clone()  # type: ignore[union-attr,operator]
        self.side = _SideBranch(model.side, self.Q) if has_side else None  # type: ignore[arg-type]
        if len(self.user_map) != self.P.shape[0] or len(self.movie_map) != self.Q.shape[0]:
            raise ModelFileError("the id maps and the model's tables have different sizes")

    def _index_training(self, train_users: np.ndarray, train_movies: np.ndarray) -> None:
        users = np.asarray(train_users, dtype=np.int64)
        movies = np.asarray(train_movies, dtype=np.int64)
        order = np.lexsort((movies, users))
        counts = np.bincount(users, minlength=len(self.user_map))
        self._rated_ptr = np.concatenate([[0], np.cumsum(counts)])
        self._rated = movies[order].astype(np.int32)
        self.user_counts = counts
        self.movie_counts = np.bincount(movies, minlength=len(self.movie_map))
        self.trained_users = counts > 0
        self.trained_movies = self.movie_counts > 0
        for array in (self._rated_ptr, self._rated, self.user_counts, self.movie_counts):
            array.flags.writeable = False
        self._trained_movie_index = torch.from_numpy(np.flatnonzero(self.trained_movies))
        with torch.no_grad():
            q = self.Q[self._trained_movie_index]
            self._unit_q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _fit_prior(self) -> None:
        """Mean and variance of the trained users' embeddings and biases (fold-in's prior)."""
        rows = torch.from_numpy(np.flatnonzero(self.trained_users))
        if rows.numel() == 0:
            raise ModelFileError("the run has no training ratings")
        p = self.P[rows].double()
        b = self.BU[rows].double()
        self._prior_mean = p.mean(0).float()
        self._prior_var = p.var(0, unbiased=False).clamp_min(1e-6).float()
        self._prior_bias = float(b.mean())
        self._prior_bias_var = max(float(b.var(unbiased=False)), 1e-6)
        q = self.Q[self._trained_movie_index]
        self._mean_movie = q.mean(0)

    # -- ids and movies ---------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.user_map)

    @property
    def n_movies(self) -> int:
        return len(self.movie_map)

    def _user_index(self, user_id: int) -> int | None:
        """The index of a known (trained) user, or None."""
        index = _index_in(self.user_map, user_id)
        return index if index >= 0 and self.trained_users[index] else None

    def _movie_index(self, movie_id: int) -> int | None:
        index = _index_in(self.movie_map, movie_id)
        return index if index >= 0 and self.trained_movies[index] else None

    def _unknown(self, kind: str, raw_id: int) -> UnknownIdError:
        id_map = self.user_map if kind == "user" else self.movie_map
        if raw_id in id_map:
            message = (
                f"{kind}_id {raw_id} has no training ratings (it occurs only in held-out "
                "ratings), so the model never learnt it"
            )
        else:
            message = f"unknown {kind}_id {raw_id}: it does not occur in the training ratings"
        return UnknownIdError(
            message,
            hint="ask for the fallback (--fallback, fallback=true) to use the bias estimate",
        )

    def movie(self, movie_id: int) -> Movie:
        """Title, genres and training-rating count of any ``movie_id``."""
        index = _index_in(self.movie_map, movie_id)
        count = int(self.movie_counts[index]) if index >= 0 else 0
        title, genres = self._metadata(int(movie_id), index)
        return Movie(int(movie_id), title, genres, count)

    def _movie_of_index(self, index: int) -> Movie:
        movie_id = int(self.movie_map.raw_ids[index])
        title, genres = self._metadata(movie_id, index)
        return Movie(movie_id, title, genres, int(self.movie_counts[index]))

    def _metadata(self, movie_id: int, index: int) -> tuple[str | None, tuple[str, ...]]:
        if self.movies is None:
            return None, ()
        row = int(self._meta_row[index]) if index >= 0 else -1
        if row < 0 and index < 0 and movie_id in self.movies:
            row = self.movies.index_of(movie_id)
        if row < 0:
            return None, ()
        return self.movies.title[row], tuple(self.movies.genres[row])

    def rated(self, user_id: int) -> np.ndarray:
        """The movie_ids a user rated in training (empty for an unknown user)."""
        index = self._user_index(user_id)
        return self.movie_map.raw_ids[self._rated_of(index)] if index is not None else np.empty(0)

    def _rated_of(self, index: int) -> np.ndarray:
        return self._rated[self._rated_ptr[index] : self._rated_ptr[index + 1]]

    def users(self, limit: int = 20, offset: int = 0) -> list[tuple[int, int]]:
        """``(user_id, training ratings)`` of trained users, in user_id order."""
        rows = np.flatnonzero(self.trained_users)[offset : offset + limit]
        return [(int(self.user_map.raw_ids[i]), int(self.user_counts[i])) for i in rows]

    def search_movies(self, text: str, limit: int = 10) -> list[Movie]:
        """Movies whose title contains ``text`` (case-insensitive), those the model knows first.

        Titles that start with ``text`` come before the others (see
        :meth:`resrec.data.movies.Movies.search`).
        """
        if self.movies is None:
            raise ConfigError(
                "no movie metadata is loaded, so titles cannot be searched",
                hint="pass --movies PATH (movies.csv, movies.dat or u.item)",
            )
        if limit < 1:
            raise ConfigError(f"limit must be at least 1; got {limit}")
        found = [self.movie(movie_id) for movie_id, _ in self.movies.search(text, 4 * limit + 20)]
        found.sort(key=lambda m: not m.known)  # stable: keeps the title order within each group
        return found[:limit]

    # -- single predictions -------------------------------------------------------

    def predict(self, user_id: int, movie_id: int, *, fallback: bool = False) -> Prediction:
        """The prediction for one pair, clipped to the rating scale (with its explanation).

        Raises :class:`UnknownIdError` for an unknown or untrained user or movie
        unless ``fallback`` is true (see the module docstring).
        """
        return self.explain(user_id, movie_id, fallback=fallback)

    def explain(self, user_id: int, movie_id: int, *, fallback: bool = False) -> Prediction:
        """A prediction with its additive terms in ``.explanation``."""
        user = self._user_index(user_id)
        movie = self._movie_index(movie_id)
        notes = []
        if user is None:
            if not fallback:
                raise self._unknown("user", user_id)
            notes.append(f"user_id {user_id} is not known")
        if movie is None:
            if not fallback:
                raise self._unknown("movie", movie_id)
            notes.append(f"movie_id {movie_id} is not known")

        if user is not None and movie is not None:
            terms = self._pair_terms(self.P[[user]], self.BU[[user]], torch.tensor([movie]))
            estimate: Estimate = "model"
            note = None
        else:
            terms = self._fallback_terms(user, movie)
            estimate = "fallback"
            note = "; ".join(notes) + f": {self._fallback_name(user, movie)}"
        explanation = self._explanation({k: float(v[0]) for k, v in terms.items()})
        return Prediction(
            user_id=int(user_id),
            movie=self.movie(movie_id),
            prediction=explanation.prediction,
            raw=explanation.raw,
            estimate=estimate,
            note=note,
            explanation=explanation,
        )

    def _explanation(self, terms: Mapping[str, float]) -> Explanation:
        raw = self.mu
        for name in TERMS[1:]:
            raw += float(terms[name])
        return Explanation(
            mu=self.mu,
            user_bias=float(terms["user_bias"]),
            movie_bias=float(terms["movie_bias"]),
            dot=float(terms["dot"]),
            side=float(terms["side"]),
            raw=raw,
            prediction=float(min(max(raw, self.scale.low), self.scale.high)),
        )

    def _fallback_name(self, user: int | None, movie: int | None) -> str:
        if not self.has_biases:
            return "the model has no bias terms, so the mean trained embedding stands in"
        if user is None and movie is None:
            return "neither is known, so the estimate is mu, the mean training rating"
        if user is None:
            return "bias estimate mu + movie bias"
        return "bias estimate mu + user bias"

    def _fallback_terms(self, user: int | None, movie: int | None) -> dict[str, np.ndarray]:
        """Terms for a pair where the user, the movie or both are unknown."""
        zero = np.zeros(1, dtype=np.float32)
        if self.has_biases:
            return {
                "user_bias": self.BU[[user]].numpy() if user is not None else zero,
                "movie_bias": self.BM[[movie]].numpy() if movie is not None else zero,
                "dot": zero,
                "side": zero,
            }
        p = self.P[[user]] if user is not None else self._prior_mean[None]
        q = self.Q[[movie]] if movie is not None else self._mean_movie[None]
        assert self.side is not None
        with torch.inference_mode():
            side = self.side.pairs(p, q).numpy()
        return {"user_bias": zero, "movie_bias": zero, "dot": zero, "side": side}

    # -- many pairs ---------------------------------------------------------------

    def _pair_terms(self, p: Tensor, bu: Tensor, movies: Tensor) -> dict[str, np.ndarray]:
        """float32 terms (minus mu) for rows of user embeddings/biases and movie indices."""
        with torch.inference_mode():
            q = self.Q[movies]
            zero = torch.zeros(movies.shape[0])
            terms = {"user_bias": bu, "movie_bias": self.BM[movies], "dot": zero, "side": zero}
            if self.has_biases:
                terms["dot"] = (p * q).sum(1)
            if self.side is not None:
                terms["side"] = self.side.pairs(p, q)
            return {k: v.numpy() for k, v in terms.items()}

    def predict_indices(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Clipped float32 predictions for arrays of user and movie *indices*.

        No check that the indices are trained; :meth:`predict_ids` and
        :meth:`score_file` do that. Pairs go through in blocks of 512 so the
        side branch's hidden layer stays in cache.
        """
        users_t = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        movies_t = torch.from_numpy(np.ascontiguousarray(movies, dtype=np.int64))
        out = torch.empty(users_t.shape[0])
        block = torch.empty(_PAIR_BLOCK, self.side.hidden) if self.side is not None else None
        with torch.inference_mode():
            for lo in range(0, users_t.shape[0], _PAIR_BLOCK):
                u = users_t[lo : lo + _PAIR_BLOCK]
                m = movies_t[lo : lo + _PAIR_BLOCK]
                p, q = self.P[u], self.Q[m]
                raw = self.BU[u] + self.BM[m]
                if self.has_biases:
                    raw += (p * q).sum(1)
                if self.side is not None:
                    raw += self.side.pairs(p, q, block)
                out[lo : lo + raw.shape[0]] = raw
            out += self.mu
            out.clamp_(self.scale.low, self.scale.high)
        return out.numpy()

    def predict_ids(
        self, user_ids: np.ndarray, movie_ids: np.ndarray, *, fallback: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Clipped predictions for arrays of raw ids, and a mask of fallback rows.

        Without ``fallback`` an unknown or untrained id raises
        :class:`UnknownIdError` naming the first one.
        """
        users = self.user_map.index_of(user_ids, missing="negative")
        movies = self.movie_map.index_of(movie_ids, missing="negative")
        user_ok = users >= 0
        user_ok[user_ok] = self.trained_users[users[user_ok]]
        movie_ok = movies >= 0
        movie_ok[movie_ok] = self.trained_movies[movies[movie_ok]]
        ok = user_ok & movie_ok
        if not fallback and not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            if not user_ok[row]:
                raise self._unknown("user", int(user_ids[row]))
            raise self._unknown("movie", int(movie_ids[row]))

        out = np.empty(len(users), dtype=np.float32)
        out[ok] = self.predict_indices(users[ok], movies[ok])
        if not ok.all():
            out[~ok] = self._fallback_many(users, movies, user_ok, movie_ok, ~ok)
        return out, ~ok

    def _fallback_many(
        self,
        users: np.ndarray,
        movies: np.ndarray,
        user_ok: np.ndarray,
        movie_ok: np.ndarray,
        rows: np.ndarray,
    ) -> np.ndarray:
        if not self.has_biases:
            values = [
                self._explanation(
                    {
                        k: float(v[0])
                        for k, v in self._fallback_terms(
                            int(users[r]) if user_ok[r] else None,
                            int(movies[r]) if movie_ok[r] else None,
                        ).items()
                    }
                ).prediction
                for r in np.flatnonzero(rows)
            ]
            return np.asarray(values, dtype=np.float32)
        bu = np.where(user_ok, self.BU.numpy()[np.maximum(users, 0)], 0.0)[rows]
        bm = np.where(movie_ok, self.BM.numpy()[np.maximum(movies, 0)], 0.0)[rows]
        raw = np.float32(self.mu) + bu.astype(np.float32) + bm.astype(np.float32)
        return np.clip(raw, self.scale.low, self.scale.high)

    # -- top-N ----------------------------------------------------------------------

    def scores(self, user_id: int) -> np.ndarray:
        """Unclipped scores of one known user for every movie index (float32)."""
        index = self._user_index(user_id)
        if index is None:
            raise self._unknown("user", user_id)
        return self._all_scores(self.P[index], float(self.BU[index]))

    def _all_scores(self, p: Tensor | None, bias: float) -> np.ndarray:
        """Unclipped scores for every movie; ``p=None`` is the bias-only fallback."""
        with torch.inference_mode():
            out = self.BM + (self.mu + bias)
            if p is not None:
                if self.has_biases:
                    out += self.Q @ p
                if self.side is not None:
                    out += self.side.all_movies(p, self._pool, self.threads)
        return out.numpy()

    def recommend(
        self,
        user_id: int,
        n: int = 10,
        *,
        include_rated: bool = False,
        fallback: bool = False,
        explain: bool = False,
    ) -> Recommendations:
        """The ``n`` movies with the highest predictions for a user.

        Movies the user rated in training are left out unless
        ``include_rated``. An unknown or untrained user raises
        :class:`UnknownIdError` unless ``fallback`` is true, which ranks movies
        by the bias estimate (``mu + movie_bias``: popularity as the model
        learnt it).
        """
        _check_n(n)
        index = self._user_index(user_id)
        if index is not None:
            p: Tensor | None = self.P[index]
            bias = float(self.BU[index])
            rated = self._rated_of(index)
            estimate: Estimate = "model"
            note = None
        elif fallback:
            p = None if self.has_biases else self._prior_mean
            bias = 0.0
            rated = np.empty(0, dtype=np.int32)
            estimate = "fallback"
            note = f"user_id {user_id} is not known: {self._fallback_name(None, 0)}"
        else:
            raise self._unknown("user", user_id)
        return self._top_n(
            p, bias, rated, n, include_rated, explain, user_id=int(user_id), estimate=estimate,
            note=note,
        )  # fmt: skip

    def _top_n(
        self,
        p: Tensor | None,
        bias: float,
        rated: np.ndarray,
        n: int,
        include_rated: bool,
        explain: bool,
        *,
        user_id: int | None,
        estimate: Estimate,
        note: str | None,
    ) -> Recommendations:
        scores = self._all_scores(p, bias)
        allowed = self.trained_movies.copy()
        excluded = 0
        if not include_rated and rated.size:
            allowed[rated] = False
            excluded = int(rated.size)
        candidates = int(allowed.sum())
        if candidates == 0:
            empty_reason = (
                "the user has rated every movie the model knows; "
                "ask to include rated movies to rank them anyway"
                if excluded
                else "the model knows no movies"
            )
            return Recommendations(user_id, [], estimate, excluded, 0, note, empty_reason)

        chosen, terms = self._select(scores, allowed, n, p, bias)
        items = []
        for rank, (movie, values) in enumerate(zip(chosen, terms, strict=True), start=1):
            explanation = self._explanation(values)
            items.append(
                Recommendation(
                    rank=rank,
                    movie=self._movie_of_index(int(movie)),
                    prediction=explanation.prediction,
                    raw=explanation.raw,
                    explanation=explanation if explain else None,
                )
            )
        reason = None
        if len(items) < n:
            reason = f"only {candidates} movies could be recommended"
        return Recommendations(user_id, items, estimate, excluded, candidates, note, reason)

    def _select(
        self, scores: np.ndarray, allowed: np.ndarray, n: int, p: Tensor | None, bias: float
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """The top ``n`` allowed movie indices by exact score (ties by movie_id), and their terms.

        The fast all-movies scores may differ from the exact pair scores in the
        last float32 digits, so every movie within a small margin of the n-th
        best fast score is rescored exactly before the final order is taken.
        """
        masked = np.where(allowed, scores, -np.inf)
        k = min(n, int(allowed.sum()))
        kth = float(np.partition(masked, masked.size - k)[masked.size - k])
        margin = 1e-3 + 1e-5 * abs(kth)
        pool = np.flatnonzero(masked >= kth - margin)
        terms = self._terms_for(p, bias, pool)
        exact = np.asarray([self._explanation(t).raw for t in terms])
        order = np.lexsort((pool, -exact))[:k]  # score descending, then movie_id ascending
        return pool[order], [terms[i] for i in order]

    def _terms_for(
        self, p: Tensor | None, bias: float, movies: np.ndarray
    ) -> list[dict[str, float]]:
        """Per-movie terms for one user embedding (``None``: bias-only fallback)."""
        index = torch.from_numpy(np.asarray(movies, dtype=np.int64))
        n = index.shape[0]
        if p is None:
            zero = np.zeros(n, dtype=np.float32)
            bm = self.BM[index].numpy()
            arrays = {"user_bias": zero, "movie_bias": bm, "dot": zero, "side": zero}
        else:
            arrays = self._pair_terms(p.expand(n, -1), torch.full((n,), bias), index)
        return [{k: float(v[i]) for k, v in arrays.items()} for i in range(n)]

    # -- similar movies -----------------------------------------------------------------

    def similar(self, movie_id: int, n: int = 10) -> SimilarMovies:
        """The ``n`` trained movies whose embeddings have the highest cosine with this one.

        Ignores biases and the side branch (see Limitations in the module
        docstring). Ties are broken by ascending ``movie_id``.
        """
        _check_n(n)
        index = self._movie_index(movie_id)
        if index is None:
            raise UnknownIdError(
                str(self._unknown("movie", movie_id).message),
                hint="similar movies need a movie with training ratings",
            )
        with torch.inference_mode():
            q = self.Q[index]
            cosine = (self._unit_q @ (q / q.norm().clamp_min(1e-12))).numpy()
        pool = self._trained_movie_index.numpy()
        keep = pool != index
        pool, cosine = pool[keep], cosine[keep]
        order = np.lexsort((pool, -cosine))[:n]
        items = [SimilarMovie(self._movie_of_index(int(pool[i])), float(cosine[i])) for i in order]
        return SimilarMovies(self.movie(movie_id), items)

    # -- new users --------------------------------------------------------------------

    def fold_in(
        self,
        ratings: Mapping[int, float] | Iterable[tuple[int, float]],
        *,
        unknown: Literal["error", "ignore"] = "error",
        prior_weight: float = 1.0,
        factors: bool = True,
    ) -> FoldedUser:
        """Fit a new user's embedding and bias to ``{movie_id: rating}`` against the frozen model.

        The fit is a MAP estimate: squared error on the given ratings plus a
        Gaussian prior whose mean and per-dimension variance are those of the
        trained users' embeddings and biases, weighted by the model's error
        variance times ``prior_weight``. With few ratings the user stays near
        the average user; with many, the ratings dominate. ``factors=False``
        fits the bias alone (the embedding stays at the prior mean).

        Raises
        ------
        ConfigError
            No ratings, a movie rated twice, or a rating off the scale.
        UnknownIdError
            A movie the model does not know (unless ``unknown="ignore"``).
        """
        movie_ids, values = _rating_arrays(ratings)
        index, kept, ignored = self._rated_movies(movie_ids, unknown)
        values = values[kept]
        self._check_ratings(values)
        if index.size == 0:
            raise ConfigError(
                "none of the rated movies is known to the model; rate movies it was trained on"
            )

        p, bias = self._fit_user(index, values, prior_weight, factors)
        with torch.inference_mode():
            terms = self._pair_terms(
                p.expand(index.size, -1), torch.full((index.size,), bias), torch.from_numpy(index)
            )
        fitted = self.mu + sum(terms[k].astype(np.float64) for k in TERMS[1:])
        rmse = float(np.sqrt(np.mean((fitted - values) ** 2)))
        return FoldedUser(
            factors=p.numpy().copy(),
            bias=bias,
            movie_index=index,
            movie_id=self.movie_map.raw_ids[index],
            rating=values,
            fit_rmse=rmse,
            ignored=ignored,
        )

    def _rated_movies(
        self, movie_ids: np.ndarray, unknown: str
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        if unknown not in ("error", "ignore"):
            raise ConfigError(f"unknown must be 'error' or 'ignore'; got {unknown!r}")
        index = self.movie_map.index_of(movie_ids, missing="negative")
        known = index >= 0
        known[known] = self.trained_movies[index[known]]
        ignored = [int(m) for m in movie_ids[~known]]
        if ignored and unknown == "error":
            raise UnknownIdError(
                str(self._unknown("movie", ignored[0]).message),
                hint="rate movies the model was trained on, or ignore unknown ones",
            )
        return index[known], known, ignored

    def _check_ratings(self, values: np.ndarray) -> None:
        bad = ~np.isfinite(values) | ~self.scale.on_scale(values)
        if bad.any():
            raise ConfigError(
                f"rating {float(values[bad][0]):g} is not on the rating scale "
                f"({self.scale.describe()})"
            )

    def _fit_user(
        self, movies: np.ndarray, values: np.ndarray, prior_weight: float, factors: bool
    ) -> tuple[Tensor, float]:
        """Minimise squared error + prior over (embedding, bias) with L-BFGS."""
        if not prior_weight >= 0:
            raise ConfigError(f"prior_weight must be >= 0; got {prior_weight}")
        m = torch.from_numpy(movies.astype(np.int64))
        target = torch.from_numpy(values.astype(np.float32)) - self.mu
        q = self.Q[m]
        bm = self.BM[m]
        weight = self.noise_variance * prior_weight

        p = self._prior_mean.clone().requires_grad_(factors)
        b = torch.tensor(self._prior_bias if self.has_biases else 0.0)
        b.requires_grad_(self.has_biases)
        params = [t for t in (p, b) if t.requires_grad]
        if not params:
            return p.detach(), float(b)

        def loss() -> Tensor:
            pred = bm + b
            pp = p.expand(q.shape[0], -1)
            if self.has_biases:
                pred = pred + (pp * q).sum(1)
            if self.side is not None:
                pred = pred + self.side.pairs(pp, q)
            penalty = ((p - self._prior_mean) ** 2 / self._prior_var).sum()
            penalty = penalty + (b - self._prior_bias) ** 2 / self._prior_bias_var
            return ((target - pred) ** 2).sum() + weight * penalty

        optimizer = torch.optim.LBFGS(
            params, lr=1.0, max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = loss()
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
        return p.detach(), float(b.detach())

    def recommend_for_ratings(
        self,
        ratings: Mapping[int, float] | Iterable[tuple[int, float]],
        n: int = 10,
        *,
        include_rated: bool = False,
        unknown: Literal["error", "ignore"] = "error",
        explain: bool = False,
    ) -> Recommendations:
        """Fold a new user in from ``{movie_id: rating}`` and recommend ``n`` movies.

        The rated movies are left out unless ``include_rated``.
        """
        _check_n(n)
        user = self.fold_in(ratings, unknown=unknown)
        note = f"folded in from {user.movie_index.size} ratings"
        if user.ignored:
            note += f"; ignored unknown movie_ids {user.ignored}"
        return self._top_n(
            torch.from_numpy(user.factors), user.bias, user.movie_index, n, include_rated, explain,
            user_id=None, estimate="folded-in", note=note,
        )  # fmt: skip

    def predict_folded(self, user: FoldedUser, movie_ids: np.ndarray) -> np.ndarray:
        """Clipped predictions of a folded-in user for known ``movie_ids``."""
        index = self.movie_map.index_of(movie_ids)
        if not self.trained_movies[index].all():
            bad = int(np.asarray(movie_ids)[~self.trained_movies[index]][0])
            raise self._unknown("movie", bad)
        p = torch.from_numpy(user.factors)
        terms = self._pair_terms(
            p.expand(index.size, -1), torch.full((index.size,), user.bias), torch.from_numpy(index)
        )
        raw = self.mu + sum(terms[k].astype(np.float64) for k in TERMS[1:])
        return np.clip(raw, self.scale.low, self.scale.high)

    def bias_estimate(self, movie_ids: np.ndarray) -> np.ndarray:
        """The fallback for an unknown user: ``mu + movie_bias``, clipped (known movies only)."""
        index = self.movie_map.index_of(movie_ids)
        if not self.has_biases:
            p = self._prior_mean.expand(index.size, -1)
            terms = self._pair_terms(p, torch.zeros(index.size), torch.from_numpy(index))
            raw = self.mu + terms["side"].astype(np.float64)
        else:
            raw = self.mu + self.BM.numpy()[index].astype(np.float64)
        return np.clip(raw, self.scale.low, self.scale.high)

    # -- files ----------------------------------------------------------------------------

    def score_file(
        self,
        pairs_path: str | Path,
        out_path: str | Path,
        *,
        fallback: bool = False,
        max_reported: int = 100,
    ) -> ScoreReport:
        """Predict every (user_id, movie_id) row of a CSV file, streaming, into another CSV.

        The input needs a header naming a ``user_id`` (or ``userId``) and a
        ``movie_id`` (or ``movieId``) column; other columns are ignored, so a
        MovieLens ``ratings.csv`` can be scored as it is. The output has the
        columns ``user_id,movie_id,prediction`` (and ``fallback``, 1 where the
        bias estimate was used, when ``fallback`` is true), one row per good
        input row, in input order.

        Rows that cannot be scored (a wrong number of fields, an id that is not
        a whole number, an unknown id without ``fallback``) are skipped and
        counted; the first ``max_reported`` are listed with their line number
        in the returned report.
        """
        started = time.perf_counter()
        source, target = Path(pairs_path), Path(out_path)
        if target.exists() and source.exists() and target.resolve() == source.resolve():
            raise ConfigError(
                f"--out {target} is the --pairs file itself; it would be overwritten",
                hint="write the predictions to another file",
            )
        if target.is_dir():
            raise ConfigError(f"--out {target} is a folder; expected a file name for the CSV")
        report = _score_csv(self, source, target, fallback, max_reported)
        report.seconds = time.perf_counter() - started
        return report


# --------------------------------------------------------------------------- helpers


def _index_in(id_map: IdMap, raw_id: int) -> int:
    """The index of one raw id, or -1 (also for ids beyond int64, which no map holds)."""
    if not -(2**63) <= int(raw_id) < 2**63:
        return -1
    return int(id_map.index_of([raw_id], missing="negative")[0])


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"n must be at least 1; got {n}")


def _rating_arrays(
    ratings: Mapping[int, float] | Iterable[tuple[int, float]],
) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(ratings.items()) if isinstance(ratings, Mapping) else list(ratings)
    if not pairs:
        raise ConfigError("no ratings given; a new user needs at least one rating")
    too_big = [m for m, _ in pairs if not -(2**63) <= int(m) < 2**63]
    if too_big:
        raise UnknownIdError(f"unknown movie_id {too_big[0]}: it does not occur in the model")
    movie_ids = np.asarray([int(m) for m, _ in pairs], dtype=np.int64)
    values = np.asarray([float(r) for _, r in pairs], dtype=np.float64)
    unique, counts = np.unique(movie_ids, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"movie_id {int(unique[counts > 1][0])} is rated more than once")
    return movie_ids, values


def parse_rated(text: str) -> list[tuple[int, float]]:
    """Parse ``"movie:rating,movie:rating,..."`` (the CLI's ``--rated``)."""
    pairs = []
    for number, item in enumerate(text.split(","), start=1):
        movie, sep, rating = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append((int(movie), float(rating)))
        except ValueError:
            raise ConfigError(
                f"--rated item {number} is {item.strip()!r}; expected MOVIE_ID:RATING, "
                "e.g. '50:5,172:4.5'"
            ) from None
    return pairs


def _metadata_rows(movie_map: IdMap, movies: Movies | None) -> np.ndarray:
    """Row of each movie index in the metadata table (-1 where it is not listed)."""
    rows = np.full(len(movie_map), -1, dtype=np.int64)
    if movies is not None and len(movies):
        ids = np.asarray(movies.movie_id, dtype=np.int64)
        index = movie_map.index_of(ids, missing="negative")
        listed = index >= 0
        rows[index[listed]] = np.flatnonzero(listed)
    rows.flags.writeable = False
    return rows


def _noise_variance(metrics: Mapping[str, Any]) -> float | None:
    for split in ("valid", "test"):
        value = metrics.get(split, {}).get("mse") if isinstance(metrics.get(split), dict) else None
        if value is not None and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _load_movies(run: Run, movies_path: str | Path | None) -> Movies | None:
    from resrec.data.movies import find_movies_file, read_movies

    if movies_path is not None:
        return read_movies(movies_path)
    source = str(run.info.get("data", {}).get("source") or "")
    if not source or source.startswith("<"):
        log.info("the run's ratings came from memory; no movie metadata to look for")
        return None
    found = find_movies_file(source)
    if found is None:
        log.info("no movies file beside %s; results will have no titles", source)
        return None
    try:
        movies = read_movies(found)
    except DataError as exc:
        log.warning("ignoring movie metadata in %s: %s", found, exc)
        return None
    log.info("movie metadata from %s (%d movies)", found, len(movies))
    return movies


# --------------------------------------------------------------------------- batch scoring

_USER_COLUMNS = ("user_id", "userId", "userid", "user")
_MOVIE_COLUMNS = ("movie_id", "movieId", "movieid", "item_id", "itemId", "movie", "item")
_CSV_BLOCK = 1 << 22  # bytes parsed at a time


def _score_csv(
    rec: Recommender, src: Path, dst: Path, fallback: bool, max_reported: int
) -> ScoreReport:
    """Stream ``src`` through the model into ``dst`` (see :meth:`Recommender.score_file`)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(src)
    columns = (
        _pick_column(header, _USER_COLUMNS, "user_id", src),
        _pick_column(header, _MOVIE_COLUMNS, "movie_id", src),
    )
    lines = _LineTracker()
    reader = pacsv.open_csv(
        src,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK),
        parse_options=pacsv.ParseOptions(
            invalid_row_handler=lines.on_invalid, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(columns),
            column_types={name: pa.string() for name in columns},
            strings_can_be_null=False,
        ),
    )
    report = ScoreReport()
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        with open(partial, "wb") as out:
            _score_stream(rec, reader, out, columns, lines, fallback, report, max_reported)
        for line, reason in lines.ready(None):
            _report_bad(report, line, reason, max_reported)
        partial.replace(dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    report.rows += len(lines.skipped)
    return report


def _score_stream(
    rec: Recommender,
    reader: Iterable[Any],
    out: Any,
    columns: tuple[str, str],
    lines: _LineTracker,
    fallback: bool,
    report: ScoreReport,
    max_reported: int,
) -> None:
    """Score batch after batch; parsing, scoring and writing overlap in three threads."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = ["user_id", "movie_id", "prediction"] + (["fallback"] if fallback else [])
    types = [pa.int64(), pa.int64(), pa.float32(), pa.int8()]
    schema = pa.schema(list(zip(names, types, strict=False)))
    out.write((",".join(names) + "\n").encode())
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    writing: Future[None] | None = None
    with (
        pacsv.CSVWriter(out, schema, write_options=options) as csv_out,
        ThreadPoolExecutor(1, thread_name_prefix="resrec-write") as writer,
    ):
        try:
            for batch in _read_ahead(reader):
                users, movies, good = _batch_ids(batch, *columns)
                numbers = lines.next_lines(batch.num_rows)
                report.rows += batch.num_rows
                bad = [(int(numbers[r]), _id_problem(batch, int(r))) for r in np.flatnonzero(~good)]
                table, unknown = _score_batch(
                    rec, users[good], movies[good], numbers[good], fallback, report
                )
                if writing is not None:
                    writing.result()
                writing = writer.submit(csv_out.write_table, pa.Table.from_batches([table], schema))
                done = int(numbers[-1]) if batch.num_rows else 0
                for line, reason in sorted(bad + unknown + lines.ready(done)):
                    _report_bad(report, line, reason, max_reported)
        finally:
            if writing is not None:
                writing.result()


class _LineTracker:
    """Physical line numbers of the rows pyarrow keeps, and the reasons of those it skips.

    Kept rows are the lines 2, 3, ... (line 1 is the header) minus the skipped
    ones; the k-th kept line is ``k + 2`` plus the number of skipped lines at or
    before it. The parser reports skipped lines from the reading thread.
    """

    def __init__(self) -> None:
        self.skipped: list[int] = []
        self._pending: list[tuple[int, str]] = []
        self._kept = 0
        self._lock = threading.Lock()

    def on_invalid(self, row: Any) -> str:
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        with self._lock:
            self.skipped.append(int(row.number))
            self._pending.append((int(row.number), reason))
        return "skip"

    def next_lines(self, count: int) -> np.ndarray:
        ordinal = np.arange(self._kept, self._kept + count, dtype=np.int64) + 2
        self._kept += count
        with self._lock:
            skipped = np.asarray(self.skipped, dtype=np.int64)
        shifted = skipped - np.arange(skipped.size)
        return ordinal + np.searchsorted(shifted, ordinal, side="right")

    def ready(self, done: int | None) -> list[tuple[int, str]]:
        """Skipped lines up to line ``done`` (all when None), each handed out once."""
        with self._lock:
            ready = [item for item in self._pending if done is None or item[0] <= done]
            self._pending = [item for item in self._pending if done is not None and item[0] > done]
        return ready


def _read_ahead(reader: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``reader`` in a background thread, up to ``depth`` items ahead."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in reader:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=produce, name="resrec-read", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _csv_header(src: Path) -> list[str]:
    if not src.is_file():
        raise DataError("no such file", path=src)
    with open(src, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if not first:
        raise DataError(
            "empty first line; expected a header such as user_id,movie_id", path=src, line=1
        )
    return [name.strip().strip('"') for name in first.split(",")]


def _pick_column(header: list[str], names: Sequence[str], role: str, src: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise DataError(
        f"the header names no {role} column; expected one of {', '.join(names)}, "
        f"found {', '.join(header)}",
        path=src,
        line=1,
    )


def _batch_ids(
    batch: Any, user_col: str, movie_col: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ids of a batch of string columns, and a mask of rows where both parse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    good = np.ones(batch.num_rows, dtype=bool)
    for name in (user_col, movie_col):
        column = batch.column(name)
        try:
            columns.append(pc.cast(column, pa.int64()).to_numpy())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        trimmed = pc.utf8_trim_whitespace(column)
        ok = pc.match_substring_regex(trimmed, r"^[+-]?[0-9]{1,18}$").to_numpy(zero_copy_only=False)
        values = np.zeros(batch.num_rows, dtype=np.int64)
        if ok.any():
            values[ok] = pc.cast(trimmed.filter(pa.array(ok)), pa.int64()).to_numpy()
        columns.append(values)
        good &= ok
    return columns[0], columns[1], good


def _id_problem(batch: Any, row: int) -> str:
    values = [str(batch.column(i)[row].as_py()) for i in range(batch.num_columns)]
    if all(not v.strip() for v in values):
        return "empty line"
    for name, value in zip(batch.schema.names, values, strict=True):
        text = value.strip()
        if not (text.lstrip("+-").isdigit() and len(text) <= 19):
            return f"{name} {value!r} is not a whole number"
    return "ids out of range"


def _score_batch(
    rec: Recommender,
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    lines: np.ndarray,
    fallback: bool,
    report: ScoreReport,
) -> tuple[Any, list[tuple[int, str]]]:
    """Predictions of one batch as a record batch, and its rows with unknown ids."""
    import pyarrow as pa

    users = rec.user_map.index_of(user_ids, missing="negative")
    movies = rec.movie_map.index_of(movie_ids, missing="negative")
    user_ok = users >= 0
    user_ok[user_ok] = rec.trained_users[users[user_ok]]
    movie_ok = movies >= 0
    movie_ok[movie_ok] = rec.trained_movies[movies[movie_ok]]
    ok = user_ok & movie_ok
    keep = np.ones(len(users), dtype=bool) if fallback else ok
    unknown = []
    if not fallback:
        for row in np.flatnonzero(~ok):
            kind, raw = ("user", user_ids[row]) if not user_ok[row] else ("movie", movie_ids[row])
            unknown.append((int(lines[row]), f"unknown {kind}_id {raw}"))

    prediction = np.empty(int(keep.sum()), dtype=np.float32)
    known = ok[keep]
    prediction[known] = rec.predict_indices(users[ok], movies[ok])
    if fallback and not ok.all():
        prediction[~known] = rec._fallback_many(users, movies, user_ok, movie_ok, ~ok)
        report.fallback += int((~ok).sum())
    report.scored += int(keep.sum())
    columns = [
        pa.array(user_ids[keep]),
        pa.array(movie_ids[keep]),
        pa.array(np.round(prediction, 4)),
    ]
    if fallback:
        columns.append(pa.array((~known).astype(np.int8)))
    names = ["user_id", "movie_id", "prediction"] + (["fallback"] if fallback else [])
    return pa.RecordBatch.from_arrays(columns, names=names), unknown


def _report_bad(report: ScoreReport, line: int, reason: str, max_reported: int) -> None:
    report.bad += 1
    if len(report.bad_rows) < max_reported:
        report.bad_rows.append((line, reason))
