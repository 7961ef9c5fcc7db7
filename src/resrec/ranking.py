"""Ranking metrics on a test split: precision@k, recall@k, NDCG@k, catalogue coverage.

Protocol (the usual one for explicit ratings):

* **Candidates.** Each user's test ratings are that user's candidate list. The
  list is ordered by prediction, highest first; ties are broken by movie
  index, lowest first, so the order (and every metric) is deterministic even
  for a model that predicts the same value everywhere.
* **Relevance.** A test rating is relevant when ``rating >= threshold``
  (default 4.0, on both the 1-5 and the 0.5-5 scales). Relevance is binary.
* **Users with no relevant test rating** have no defined recall or NDCG (both
  are 0/0). They are left out of *all three* averages, so precision, recall
  and NDCG are averaged over the same users, and are counted in
  ``users_without_relevant``; ``users`` is the number of users averaged over.
  A test split where no user has a relevant rating raises ``ValueError``.
* **precision@k** of a user is ``hits / min(k, n)``, where ``n`` is the length
  of the user's candidate list and ``hits`` the relevant ratings among its
  first ``min(k, n)``: a user with three test ratings is judged on a list of
  three, not penalised for the seven missing slots.
* **recall@k** is ``hits / R``, with ``R`` the user's relevant test ratings.
* **NDCG@k** is ``DCG / IDCG`` with ``DCG = sum over the first k positions of
  rel_i / log2(i + 1)`` (position i counted from 1) and IDCG the DCG of the
  ideal order, which puts ``min(k, R)`` relevant ratings first.
* **Catalogue coverage@k** is the share of the catalogue (every movie index
  ``0..n_movies-1``) that appears in at least one user's top-k list. Over
  test candidates (:func:`ranking_metrics`) it is bounded by the movies that
  have test ratings at all; over full-catalogue lists (:func:`top_k_movies`)
  it measures how much of the catalogue a recommender ever suggests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from resrec.errors import ConfigError

if TYPE_CHECKING:
    from resrec.data.ratings import Ratings

ScoreFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_threshold(threshold: float, ratings: Ratings | None = None) -> None:
    """Refuse a relevance threshold that is not finite or that no rating can reach.

    With ``ratings``, the threshold must lie within their rating scale and at
    least one rating must reach it; without, it must only be finite.
    """
    if not math.isfinite(threshold):
        raise ConfigError(f"--threshold must be a finite rating; got {threshold}")
    if ratings is None:
        return
    scale = ratings.scale
    if not scale.low <= threshold <= scale.high:
        raise ConfigError(
            f"--threshold must be within the rating scale of {ratings.source} "
            f"({scale.describe()}); got {threshold:g}"
        )
    if len(ratings) and not np.any(ratings.rating >= threshold):
        raise ConfigError(
            f"--threshold {threshold:g}: no rating in {ratings.source} reaches it, so no "
            "movie would count as relevant",
            hint=f"choose a threshold up to {float(ratings.rating.max()):g}",
        )


def rank_within_users(users: np.ndarray, movies: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its user's list (by score desc, then movie asc)."""
    users = np.asarray(users, dtype=np.int64)
    order = np.lexsort((np.asarray(movies, dtype=np.int64), -np.asarray(scores), users))
    sorted_users = users[order]

    # Position of each sorted row minus the position where its user's block starts.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    block_start = np.repeat(starts, np.diff(np.r_[starts, sorted_users.size]))
    ranks = np.empty(users.size, dtype=np.int64)
    ranks[order] = np.arange(users.size) - block_start
    return ranks


def ranking_metrics(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    predictions: np.ndarray,
    *,
    k: int = 10,
    threshold: float = 4.0,
    n_movies: int | None = None,
) -> dict[str, float]:
    """Precision, recall and NDCG at ``k`` over each user's test ratings (see the module doc).

    Parameters
    ----------
    users, movies
        User and movie index of each test rating.
    ratings, predictions
        The observed rating and the model's prediction of each test rating.
    k
        Length of the top list.
    threshold
        A rating at or above it is relevant.
    n_movies
        Size of the catalogue; when given, ``coverage`` (of the catalogue by
        the users' top-k test candidates) is included.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``ndcg``, ``users`` (averaged over),
        ``users_without_relevant`` (left out), and ``coverage`` if ``n_movies``
        is given.
    """
    users = np.asarray(users, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    _check_inputs(users, movies, ratings, predictions, k)

    ranks = rank_within_users(users, movies, predictions)
    in_top = ranks < k
    relevant = ratings >= threshold

    # Per user (bincount over a compact user code): list length, relevant count, hits, DCG.
    user_codes, code = np.unique(users, return_inverse=True)
    n_users = user_codes.size
    length = np.bincount(code, minlength=n_users)
    n_relevant = np.bincount(code, weights=relevant, minlength=n_users)
    hit = in_top & relevant
    hits = np.bincount(code, weights=hit, minlength=n_users)
    gains = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    dcg = np.bincount(code, weights=gains, minlength=n_users)

    keep = n_relevant > 0
    if not np.any(keep):
        raise ValueError(
            f"no user has a test rating >= {threshold}: ranking metrics are undefined; "
            "lower the relevance threshold"
        )
    ideal = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]
    idcg = ideal[np.minimum(n_relevant[keep], k).astype(np.int64)]

    out = {
        "precision": float(np.mean(hits[keep] / np.minimum(length[keep], k))),
        "recall": float(np.mean(hits[keep] / n_relevant[keep])),
        "ndcg": float(np.mean(dcg[keep] / idcg)),
        "users": int(keep.sum()),
        "users_without_relevant": int(n_users - keep.sum()),
    }
    if n_movies is not None:
        out["coverage"] = catalogue_coverage(movies[in_top], n_movies)
    return out


def catalogue_coverage(recommended: np.ndarray, n_movies: int) -> float:
    """Share of movie indices ``0..n_movies-1`` present in ``recommended``.

    ``recommended`` holds movie indices of any shape; negative entries are
    padding (a list shorter than k) and are ignored.
    """
    if n_movies < 1:
        raise ValueError(f"n_movies must be >= 1; got {n_movies}")
    flat = np.asarray(recommended, dtype=np.int64).ravel()
    flat = flat[flat >= 0]
    if flat.size and int(flat.max()) >= n_movies:
        raise ValueError(f"movie index {int(flat.max())} is outside 0..{n_movies - 1}")
    return float(np.unique(flat).size / n_movies)


def top_k_movies(
    score: ScoreFunction,
    users: np.ndarray,
    n_movies: int,
    k: int,
    *,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    pairs_per_chunk: int = 1 << 21,
) -> np.ndarray:
    """Each user's k highest-scored movies over the whole catalogue.

    Parameters
    ----------
    score
        ``score(user_indices, movie_indices) -> predictions`` for equal-length
        int64 arrays (for example a partial of
        :func:`resrec.workflow.predict_indices`).
    users
        The user indices to recommend to.
    n_movies
        The catalogue: movie indices ``0..n_movies-1``.
    k
        Length of each list.
    exclude
        (user indices, movie indices) never to recommend, typically the
        training ratings.
    pairs_per_chunk
        Upper bound on the (user, movie) pairs scored at once.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(len(users), k)``; rows are ordered by score
        (ties by movie index) and padded with -1 where fewer than k movies are
        left after exclusion.
    """
    users = np.asarray(users, dtype=np.int64)
    k_eff = min(k, n_movies)
    excluded = _excluded_lookup(exclude, users)
    out = np.full((users.size, k), -1, dtype=np.int64)
    rows_per_chunk = max(1, pairs_per_chunk // n_movies)
    catalogue = np.arange(n_movies, dtype=np.int64)

    for lo in range(0, users.size, rows_per_chunk):
        chunk = users[lo : lo + rows_per_chunk]
        scores = np.asarray(
            score(np.repeat(chunk, n_movies), np.tile(catalogue, chunk.size)), dtype=np.float64
        ).reshape(chunk.size, n_movies)
        for row, user in enumerate(chunk):
            scores[row, excluded.get(int(user), [])] = -np.inf

        # Stable sort of -score keeps the lower movie index first among ties.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k_eff]
        top_scores = np.take_along_axis(scores, top, axis=1)
        out[lo : lo + chunk.size, :k_eff] = np.where(np.isfinite(top_scores), top, -1)
    return out


def _excluded_lookup(
    exclude: tuple[np.ndarray, np.ndarray] | None, users: np.ndarray
) -> dict[int, np.ndarray]:
    if exclude is None:
        return {}
    ex_users = np.asarray(exclude[0], dtype=np.int64)
    ex_movies = np.asarray(exclude[1], dtype=np.int64)
    wanted = np.isin(ex_users, users)
    ex_users, ex_movies = ex_users[wanted], ex_movies[wanted]
    order = np.argsort(ex_users, kind="stable")
    ex_users, ex_movies = ex_users[order], ex_movies[order]
    cuts = np.flatnonzero(np.diff(ex_users)) + 1
    return {
        int(group_users[0]): group_movies
        for group_users, group_movies in zip(
            np.split(ex_users, cuts), np.split(ex_movies, cuts), strict=True
        )
        if group_users.size
    }


def _check_inputs(
    users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, predictions: np.ndarray, k: int
) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    sizes = {users.size, movies.size, ratings.size, predictions.size}
    if len(sizes) != 1:
        raise ValueError(
            f"users, movies, ratings and predictions must have equal lengths; got "
            f"{users.size}, {movies.size}, {ratings.size}, {predictions.size}"
        )
    if users.size == 0:
        raise ValueError("no test ratings to rank")
    if not np.all(np.isfinite(predictions)):
        raise ValueError("refusing to rank non-finite predictions")
