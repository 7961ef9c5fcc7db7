"""The :class:`Recommender`: a trained run turned into predictions and recommendations.

The class holds the tables and answers the queries; the work behind them is
done in modules of its own: :mod:`~resrec.inference.loading` (the run, the
widened factor tables, movie metadata), :mod:`~resrec.inference.explain`
(the additive terms, the fallback estimate, similar movies),
:mod:`~resrec.inference.topn` (top-N) and :mod:`~resrec.inference.foldin`
(new users).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, ModelFileError, UnknownIdError, counted
from resrec.ids import IdMap
from resrec.inference.explain import (
    _bias_estimate,
    _explain,
    _fallback_many,
    _fallback_name,
    _similar,
    _unit_rows,
)
from resrec.inference.foldin import _fold_in, _predict_folded, parse_rated
from resrec.inference.loading import (
    MIN_MOVIE_COVERAGE,
    _factor_tables,
    _load_movies,
    _metadata_rows,
    _noise_variance,
    check_inference_model,
    check_weight_sizes,
    warn_if_foreign_movies,
)
from resrec.inference.pairs import PairScorer
from resrec.inference.results import (
    Estimate,
    FoldedUser,
    Movie,
    Prediction,
    Recommendations,
    ScoreReport,
    SimilarMovies,
)
from resrec.inference.scoring import _score_csv
from resrec.inference.side import SideBounds, _SideBranch
from resrec.inference.topn import _prepare_top_n, _top_n, _useful_slack

if TYPE_CHECKING:
    from resrec.data.movies import Movies
    from resrec.models.base import RatingModel
    from resrec.run import Run

__all__ = [
    "MIN_MOVIE_COVERAGE",
    "Recommender",
    "check_inference_model",
    "parse_rated",
    "warn_if_foreign_movies",
]

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
    name, weights
        The run and the file its weights came from, for messages (``weights``
        defaults to ``name``). A model with a value beyond
        :data:`~resrec.inference.loading.MAX_WEIGHT` is refused.
    bounds
        Whether top-N may use :class:`SideBounds` (built by
        :meth:`prepare_top_n`, or by itself after a few queries). False
        scores every movie for every query; the answers are the same.
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
        weights: str | None = None,
        threads: int = 1,
        bounds: bool = True,
    ) -> None:
        check_inference_model(model, name)
        check_weight_sizes(model, weights or name)
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
        self._bounds: SideBounds | None = None
        self._anchor_tops = torch.empty(0, 0)  # the best scores at each anchor (_useful_slack)
        self._bounds_lock = threading.Lock()
        self._top_n_calls = 0
        self._use_bounds = bounds

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
        check_inference_model(run.model, str(run.path))
        return cls.from_run(run, movies=_load_movies(run, movies_path))

    @classmethod
    def from_run(cls, run: Run, *, movies: Movies | None = None) -> Recommender:
        users, movie_rows = run.train_pairs()
        recommender = cls(
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
            weights=str(run.path / "weights.safetensors"),
        )
        if movies is not None:
            trained = recommender.movie_map.raw_ids[recommender.trained_movies]
            warn_if_foreign_movies(movies, str(run.info.get("data", {}).get("layout")), trained)
        return recommender

    def _load_tables(self, model: RatingModel) -> None:
        self.has_biases = bool(getattr(model, "uses_biases", False))
        has_side = bool(getattr(model, "uses_side", False))
        self.P, self.BU, self.Q, self.BM, self.main_dim = _factor_tables(model, self.has_biases)
        self.side = _SideBranch(model.side, self.Q) if has_side else None  # type: ignore[arg-type]
        self._pairs = PairScorer(self.P, self.BU, self.Q, self.BM, self.side, self.has_biases)
        if len(self.user_map) != self.P.shape[0] or len(self.movie_map) != self.Q.shape[0]:
            raise ModelFileError(
                f"the id maps ({len(self.user_map):,} users, {len(self.movie_map):,} movies) "
                f"and the model's tables ({self.P.shape[0]:,} users, {self.Q.shape[0]:,} "
                "movies) have different sizes",
                hint="retrain, or restore the run from a copy",
            )

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
        self._n_trained_movies = int(self._trained_movie_index.numel())
        self._untrained_penalty = np.where(self.trained_movies, 0.0, -np.inf).astype(np.float32)
        self._untrained_penalty.flags.writeable = False
        self._unit_q = _unit_rows(self.Q[self._trained_movie_index, : self.main_dim])

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
        return _explain(self, user_id, movie_id, fallback)

    # -- many pairs ---------------------------------------------------------------

    def predict_indices(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Clipped float32 predictions for arrays of user and movie *indices*.

        No check that the indices are trained; :meth:`predict_ids` and
        :meth:`score_file` do that. Pairs go through in blocks of 512 so the
        side branch's hidden layer stays in cache.
        """
        users_t = torch.from_numpy(np.ascontiguousarray(users, dtype=np.int64))
        movies_t = torch.from_numpy(np.ascontiguousarray(movies, dtype=np.int64))
        out = torch.empty(users_t.shape[0])
        self._pairs(users_t, movies_t, out)
        with torch.inference_mode():
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
            out[~ok] = _fallback_many(self, users, movies, user_ok, movie_ok, ~ok)
        return out, ~ok

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
            if p is not None and self.has_biases:
                out = torch.addmv(self.BM, self.Q, p)
            else:
                out = self.BM.clone()
            if p is not None and self.side is not None:
                out += self.side.all_movies(p, self._pool, self.threads)
            out += self.mu + bias
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
            note = f"user_id {user_id} is not known: {_fallback_name(self, None, 0)}"
        else:
            raise self._unknown("user", user_id)
        return _top_n(
            self, p, bias, rated, n, include_rated, explain, user_id=int(user_id),
            estimate=estimate, note=note,
        )  # fmt: skip

    def prepare_top_n(self) -> None:
        """Build what makes repeated top-N queries fast (:class:`SideBounds`).

        Happens by itself once a few top-N queries have been answered; the
        server calls it at start. Does nothing for models whose side branch
        has no usable bound (none, linear, or not one activation and one
        output layer).
        """
        _prepare_top_n(self)

    def _useful_slack(self, anchor: int, n: int) -> float:
        """The most slack with which the bounds are likely to spare a top-``n`` query work.

        See :func:`resrec.inference.topn._useful_slack`.
        """
        return _useful_slack(self, anchor, n)

    # -- similar movies -----------------------------------------------------------------

    def similar(self, movie_id: int, n: int = 10) -> SimilarMovies:
        """The ``n`` trained movies whose embeddings have the highest cosine with this one.

        Ignores biases and the side branch (see Limitations in the module
        docstring). Ties are broken by ascending ``movie_id``.
        """
        _check_n(n)
        return _similar(self, movie_id, n)

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
        return _fold_in(self, ratings, unknown, prior_weight, factors)

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
        note = f"folded in from {counted(user.movie_index.size, 'rating')}"
        if user.ignored:
            note += f"; ignored unknown movie_ids {user.ignored}"
        return _top_n(
            self, torch.from_numpy(user.factors), user.bias, user.movie_index, n, include_rated,
            explain, user_id=None, estimate="folded-in", note=note,
        )  # fmt: skip

    def predict_folded(self, user: FoldedUser, movie_ids: np.ndarray) -> np.ndarray:
        """Clipped predictions of a folded-in user for known ``movie_ids``."""
        return _predict_folded(self, user, movie_ids)

    def bias_estimate(self, movie_ids: np.ndarray) -> np.ndarray:
        """The fallback for an unknown user: ``mu + movie_bias``, clipped (known movies only)."""
        return _bias_estimate(self, movie_ids)

    # -- files ----------------------------------------------------------------------------

    def score_file(
        self,
        pairs_path: str | Path,
        out_path: str | Path,
        *,
        fallback: bool = False,
        max_reported: int = 100,
        fail_on_bad: bool = False,
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
        in the returned report. With ``fail_on_bad``, one bad row means no
        output file at all (``report.written`` is False).
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
        report = _score_csv(self, source, target, fallback, max_reported, fail_on_bad)
        report.seconds = time.perf_counter() - started
        return report


# --------------------------------------------------------------------------- helpers


def _index_in(id_map: IdMap, raw_id: int) -> int:
    """The index of one raw id, or -1 (also for ids beyond int64, which no map holds)."""
    raw_id = int(raw_id)
    if not -(2**63) <= raw_id < 2**63:
        return -1
    raw_ids = id_map.raw_ids  # sorted: one binary search, without IdMap.index_of's arrays
    pos = int(np.searchsorted(raw_ids, raw_id))
    return pos if pos < raw_ids.size and int(raw_ids[pos]) == raw_id else -1


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError(f"n must be at least 1; got {n}")
