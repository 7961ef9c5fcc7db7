"""The :class:`Recommender`: a trained run turned into predictions and recommendations."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from resrec.data.ratings import RatingScale
from resrec.errors import (
    ConfigError,
    DataError,
    ModelFileError,
    UnknownIdError,
    counted,
    quoted,
    shorten,
)
from resrec.ids import IdMap
from resrec.inference.pairs import PairScorer
from resrec.inference.results import (
    TERMS,
    Estimate,
    Explanation,
    FoldedUser,
    Movie,
    Prediction,
    Recommendation,
    Recommendations,
    ScoreReport,
    SimilarMovie,
    SimilarMovies,
)
from resrec.inference.scoring import _bounded_int, _score_csv
from resrec.inference.side import SideBounds, _SideBranch

if TYPE_CHECKING:
    from resrec.data.movies import Movies
    from resrec.models.base import RatingModel
    from resrec.run import Run

log = logging.getLogger(__name__)

_PREPARE_AFTER = 16  # top-N queries answered by scoring every movie before bounds are built
_GAP_FACTOR = 1.5  # the bounds are tried up to this times the anchor's gap (_useful_slack)
MIN_MOVIE_COVERAGE = 0.9  # share of trained movies a movies file must list to look right

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
        threads: int = 1,
        bounds: bool = True,
    ) -> None:
        check_inference_model(model, name)
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
        )
        if movies is not None:
            trained = recommender.movie_map.raw_ids[recommender.trained_movies]
            warn_if_foreign_movies(movies, str(run.info.get("data", {}).get("layout")), trained)
        return recommender

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
            # A side branch that reads movie ratings is a dot product of its own tables
            # (MovieRatingsSide.tables): served as columns after the first main_dim ones.
            self.main_dim = self.P.shape[1]
            ratings_side = getattr(model, "ratings_side", None)
            if ratings_side is not None:
                side_users, side_movies = ratings_side.tables()
                self.P = torch.cat([self.P, side_users], 1).contiguous()
                self.Q = torch.cat([self.Q, side_movies], 1).contiguous()
        self.side = _SideBranch(model.side, self.Q) if has_side else None  # type: ignore[arg-type]
        self._pairs = PairScorer(self.P, self.BU, self.Q, self.BM, self.side, self.has_biases)
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
        self._n_trained_movies = int(self._trained_movie_index.numel())
        self._untrained_penalty = np.where(self.trained_movies, 0.0, -np.inf).astype(np.float32)
        self._untrained_penalty.flags.writeable = False
        with torch.no_grad():
            q = self.Q[self._trained_movie_index, : self.main_dim]
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
            terms = self._user_terms(self.P[user], float(self.BU[user]), torch.tensor([movie]))
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

    def _user_terms(self, p: Tensor, bias: float, movies: Tensor) -> dict[str, np.ndarray]:
        """float32 terms (minus mu) of one user embedding ``p`` and bias for movie indices.

        The exact scores: explanations, and the rescoring that settles a top-N.
        """
        with torch.inference_mode():
            n = movies.shape[0]
            q = self.Q[movies]
            zero = np.zeros(n, dtype=np.float32)
            k = self.main_dim
            terms = {
                "user_bias": np.full(n, bias, dtype=np.float32),
                "movie_bias": self.BM[movies].numpy(),
                "dot": torch.mv(q[:, :k], p[:k]).numpy() if self.has_biases else zero,
                "side": self.side.one_user(p, q).numpy() if self.side is not None else zero,
            }
            if k < q.shape[1]:  # the movie_ratings side branch's columns
                terms["side"] = torch.mv(q[:, k:], p[k:]).numpy()
            return terms

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
        scores, slack = self._rough_scores(p, bias, n)
        left_out = rated if not include_rated else rated[:0]
        excluded = int(left_out.size)
        candidates = self._n_trained_movies - _distinct(left_out)  # rated movies are trained
        if candidates == 0:
            empty_reason = (
                "the user has rated every movie the model knows; "
                "ask to include rated movies to rank them anyway"
                if excluded
                else "the model knows no movies"
            )
            return Recommendations(user_id, [], estimate, excluded, 0, note, empty_reason)

        chosen, terms = self._select(scores, left_out, min(n, candidates), p, bias, slack)
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
            reason = f"only {counted(candidates, 'movie')} could be recommended"
        return Recommendations(user_id, items, estimate, excluded, candidates, note, reason)

    def prepare_top_n(self) -> None:
        """Build what makes repeated top-N queries fast (:class:`SideBounds`).

        Happens by itself once a few top-N queries have been answered; the
        server calls it at start. Does nothing for models whose side branch
        has no usable bound (none, linear, or not one activation and one
        output layer).
        """
        if not self._use_bounds or self.side is None or self.side.lipschitz() is None:
            return
        with self._bounds_lock:
            if self._bounds is None:
                rows = torch.from_numpy(np.flatnonzero(self.trained_users))
                bounds = SideBounds(self.side, self.P[rows])
                self._anchor_tops = self._best_at_anchors(bounds)
                self._bounds = bounds

    def _best_at_anchors(self, bounds: SideBounds) -> Tensor:
        """Each anchor's best scores over the trained movies, best first, an eighth of them."""
        trained = self._trained_movie_index
        with torch.inference_mode():
            scores = bounds.table[:, trained] + self.BM[trained]  # (anchors, trained movies)
            if self.has_biases:
                scores += bounds.anchors @ self.Q[trained].t()
            return torch.topk(scores, trained.numel() // 8, dim=1).values

    def _useful_slack(self, anchor: int, n: int) -> float:
        """The most slack with which the bounds are likely to spare a top-``n`` query work.

        A query whose rough scores are off by ``slack`` rescores every movie
        within ``slack`` of its n-th best, and falls back to scoring every
        movie when that is more than an eighth of them. At the anchor itself
        that happens when ``slack`` exceeds the gap between its n-th best
        score and its eighth-of-the-movies one. A user's own gap is most often
        somewhat wider than its anchor's, and a rough pass that fails costs
        about a quarter of a full one, so up to :data:`_GAP_FACTOR` times the
        anchor's gap is tried (measured on models trained on MovieLens-shaped
        and on uniformly random synthetic ratings).
        """
        tops = self._anchor_tops
        last = tops.shape[1] - 1
        if n > last:  # the fallback is then bounded by 4 n, not by an eighth of the movies
            return math.inf
        return _GAP_FACTOR * float(tops[anchor, n - 1] - tops[anchor, last])

    def _rough_scores(self, p: Tensor | None, bias: float, n: int) -> tuple[np.ndarray, float]:
        """Scores for every movie, and how far (at most) each may be from the exact score.

        Exact up to float rounding (slack 0) until :meth:`prepare_top_n` has
        run; then the side branch comes from the nearest anchor user
        (:meth:`SideBounds.nearest`) and the slack is twice its radius, unless
        that is more than the bounds are likely to use for a top-``n``
        (:meth:`_useful_slack`): every movie is then scored at once.
        """
        if p is not None and self._bounds is None and self.side is not None:
            self._top_n_calls += 1  # a lost update under threads only delays the build
            if self._top_n_calls > _PREPARE_AFTER:
                self.prepare_top_n()
        bounds = self._bounds
        if p is None or bounds is None:
            return self._all_scores(p, bias), 0.0
        anchor, shift, radius = bounds.nearest(p)
        if 2.0 * radius > self._useful_slack(anchor, n):
            return self._all_scores(p, bias), 0.0
        with torch.inference_mode():
            out = torch.addmv(self.BM, self.Q, p) if self.has_biases else self.BM.clone()
            out += bounds.table[anchor]
            out += self.mu + bias + shift
        return out.numpy(), 2.0 * radius

    def _select(
        self,
        scores: np.ndarray,
        left_out: np.ndarray,
        k: int,
        p: Tensor | None,
        bias: float,
        slack: float = 0.0,
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """The top ``k`` movie indices by exact score (ties by movie_id), and their terms.

        Untrained movies and those in ``left_out`` are not ranked; at least
        ``k`` others must be. ``scores`` are within ``slack`` of the exact
        scores (and the fast all-movies scores may differ from the exact pair
        scores in the last float32 digits), so every movie within that margin
        of the k-th best is rescored exactly before the final order is taken.
        When the margin lets in too many movies, every movie is scored instead.
        """
        masked = scores + self._untrained_penalty  # -inf for untrained movies
        masked[left_out] = -np.inf
        kth = float(torch.topk(torch.from_numpy(masked), k, sorted=False).values.min())
        margin = 1e-3 + 1e-5 * abs(kth) + slack
        pool = np.flatnonzero(masked >= kth - margin)
        if slack > 0 and pool.size > max(4 * k, masked.size // 8):
            return self._select(self._all_scores(p, bias), left_out, k, p, bias)
        arrays = self._terms_arrays(p, bias, pool)
        exact = np.full(pool.size, self.mu)
        for name in TERMS[1:]:  # the order and precision of Explanation.raw
            exact = exact + arrays[name].astype(np.float64)
        order = np.lexsort((pool, -exact))[:k]  # score descending, then movie_id ascending
        terms = [{name: float(values[i]) for name, values in arrays.items()} for i in order]
        return pool[order], terms

    def _terms_arrays(
        self, p: Tensor | None, bias: float, movies: np.ndarray
    ) -> dict[str, np.ndarray]:
        """float32 terms (minus mu) of one user embedding (``None``: bias-only fallback)."""
        index = torch.from_numpy(np.asarray(movies, dtype=np.int64))
        n = index.shape[0]
        if p is None:
            zero = np.zeros(n, dtype=np.float32)
            bm = self.BM[index].numpy()
            return {"user_bias": zero, "movie_bias": bm, "dot": zero, "side": zero}
        return self._user_terms(p, bias, index)

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
            q = self.Q[index, : self.main_dim]
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
            terms = self._user_terms(p, bias, torch.from_numpy(index))
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
                hint="rate movies the model was trained on, or skip unknown ones "
                "(--ignore-unknown; 'unknown': 'ignore' in the HTTP API)",
            )
        return index[known], known, ignored

    def _check_ratings(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
            raise ConfigError(
                f"rating {float(values[~finite][0])} is not a finite number, so not on the "
                f"rating scale ({self.scale.describe()})"
            )
        bad = ~self.scale.on_scale(values)
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
        note = f"folded in from {counted(user.movie_index.size, 'rating')}"
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
        terms = self._user_terms(p, user.bias, torch.from_numpy(index))
        raw = self.mu + sum(terms[k].astype(np.float64) for k in TERMS[1:])
        return np.clip(raw, self.scale.low, self.scale.high)

    def bias_estimate(self, movie_ids: np.ndarray) -> np.ndarray:
        """The fallback for an unknown user: ``mu + movie_bias``, clipped (known movies only)."""
        index = self.movie_map.index_of(movie_ids)
        if not self.has_biases:
            terms = self._user_terms(self._prior_mean, 0.0, torch.from_numpy(index))
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


_KIND_OF = {"Biases": "biases", "GlobalMean": "global-mean"}


def check_inference_model(model: RatingModel, name: str) -> None:
    """Refuse a model without embeddings (``biases``, ``global-mean``), naming the run."""
    if hasattr(model, "user_factors") and hasattr(model, "movie_factors"):
        return
    kind = _KIND_OF.get(type(model).__name__, type(model).__name__)
    raise ModelFileError(
        f"{name} holds a {kind} model, which has no embeddings; predict, recommend, score, "
        "explain, similar and serve need a residual, mf or deep run: train one with "
        "'resrec train --model residual' (or mf, deep)"
    )


def _index_in(id_map: IdMap, raw_id: int) -> int:
    """The index of one raw id, or -1 (also for ids beyond int64, which no map holds)."""
    raw_id = int(raw_id)
    if not -(2**63) <= raw_id < 2**63:
        return -1
    raw_ids = id_map.raw_ids  # sorted: one binary search, without IdMap.index_of's arrays
    pos = int(np.searchsorted(raw_ids, raw_id))
    return pos if pos < raw_ids.size and int(raw_ids[pos]) == raw_id else -1


def _distinct(index: np.ndarray) -> int:
    """How many different values ``index`` holds (a user's rated movies come sorted)."""
    if index.size < 2 or bool((index[1:] > index[:-1]).all()):
        return int(index.size)
    return int(np.unique(index).size)


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
        shown = shorten(str(too_big[0]))
        raise UnknownIdError(f"unknown movie_id {shown}: it does not occur in the model")
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
        movie, sep, rating = (part.strip() for part in item.strip().partition(":"))
        if not (sep and re.fullmatch(r"[+-]?[0-9]+", movie) and _is_number(rating)):
            raise ConfigError(
                f"--rated item {number} is {quoted(item.strip())}; expected MOVIE_ID:RATING, "
                "e.g. '50:5,172:4.5'"
            )
        if _bounded_int(movie) >= 2**63 or _bounded_int(movie) < -(2**63):
            raise ConfigError(
                f"--rated item {number}: movie_id {quoted(movie)} is out of range: "
                "ids are 64-bit integers"
            )
        if not math.isfinite(float(rating)):
            raise ConfigError(
                f"--rated item {number}: rating {quoted(rating)} is not a finite number; "
                "expected a rating such as 4 or 4.5"
            )
        pairs.append((int(movie), float(rating)))
    return pairs


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def warn_if_foreign_movies(movies: Movies, layout: str, trained_ids: np.ndarray) -> None:
    """Log a warning when ``movies`` looks like another release's file than the ratings'.

    It does when its layout is not the one that ships with ``layout`` (the
    ratings layout of the run), or when it lists fewer than
    :data:`MIN_MOVIE_COVERAGE` of ``trained_ids``: its titles would then be
    put on the wrong movies.
    """
    from resrec.data.movies import MOVIES_FAMILY_OF_LAYOUT

    reasons = []
    expected = MOVIES_FAMILY_OF_LAYOUT.get(layout)
    if expected and movies.family and movies.family != expected:
        reasons.append(
            f"a {movies.family} file, but the run's {layout} ratings come with {expected}"
        )
    listed = int(np.isin(trained_ids, movies.movie_id).sum())
    coverage = listed / trained_ids.size if trained_ids.size else 1.0
    if coverage < MIN_MOVIE_COVERAGE:
        reasons.append(f"fewer than {MIN_MOVIE_COVERAGE:.0%} of the trained movies listed")
    if reasons:
        log.warning(
            "movies file %s may belong to another MovieLens release (%s): it lists %s of the "
            "model's %s (%.1f%%); titles and genres may be wrong",
            movies.source, "; ".join(reasons), f"{listed:,}",
            counted(trained_ids.size, "trained movie"),
            100 * coverage,
        )  # fmt: skip


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
    log.info("movie metadata from %s (%s)", found, counted(len(movies), "movie"))
    return movies
