"""Explanations and similar movies: the terms that make up a prediction, and embedding cosines.

A prediction is ``mu + user_bias + movie_bias + dot + side``: :func:`_user_terms`
computes the four terms after ``mu`` exactly for one user and many movies,
:func:`_explanation` adds them up, and the fallback functions give the
estimate for an unknown user or movie (the bias estimate, or the mean trained
embedding for models without biases). :func:`_similar` ranks trained movies by
the cosine of their embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from resrec.errors import UnknownIdError
from resrec.inference.results import (
    TERMS,
    Estimate,
    Explanation,
    Prediction,
    SimilarMovie,
    SimilarMovies,
)

if TYPE_CHECKING:
    from resrec.inference.recommender import Recommender

# --------------------------------------------------------------------------- explanations


def _explain(rec: Recommender, user_id: int, movie_id: int, fallback: bool) -> Prediction:
    """One prediction with its terms (see :meth:`Recommender.explain`)."""
    user = rec._user_index(user_id)
    movie = rec._movie_index(movie_id)
    notes = []
    if user is None:
        if not fallback:
            raise rec._unknown("user", user_id)
        notes.append(f"user_id {user_id} is not known")
    if movie is None:
        if not fallback:
            raise rec._unknown("movie", movie_id)
        notes.append(f"movie_id {movie_id} is not known")

    if user is not None and movie is not None:
        terms = _PairTerms(rec, rec.P[user], float(rec.BU[user])).movie(movie)
        estimate: Estimate = "model"
        note = None
    else:
        terms = _fallback_terms(rec, user, movie)
        estimate = "fallback"
        note = "; ".join(notes) + f": {_fallback_name(rec, user, movie)}"
    explanation = _explanation(rec, terms)
    return Prediction(
        user_id=int(user_id),
        movie=rec.movie(movie_id),
        prediction=explanation.prediction,
        raw=explanation.raw,
        estimate=estimate,
        note=note,
        explanation=explanation,
    )


def _explanation(rec: Recommender, terms: Mapping[str, float]) -> Explanation:
    raw = rec.mu
    for name in TERMS[1:]:
        raw += float(terms[name])
    return Explanation(
        mu=rec.mu,
        user_bias=float(terms["user_bias"]),
        movie_bias=float(terms["movie_bias"]),
        dot=float(terms["dot"]),
        side=float(terms["side"]),
        raw=raw,
        prediction=float(min(max(raw, rec.scale.low), rec.scale.high)),
    )


class _PairTerms:
    """The terms (minus mu) of one user with one movie at a time: the predictions shown.

    Predict, explain and the items of a top-N all take their numbers from
    here. A batched product (:func:`_user_terms`, the all-movies pass) may
    round the last float32 digits differently for different numbers of
    movies; scored one pair at a time in the same shapes, a (user, movie)
    pair gets the same value wherever it appears. ``p=None`` is the bias
    estimate of an unknown user (no dot product, no side branch).
    """

    def __init__(self, rec: Recommender, p: Tensor | None, bias: float) -> None:
        self.Q = rec.Q
        self.BM = rec.BM.numpy()
        self.user_bias = float(np.float32(bias))
        self.k = k = rec.main_dim
        wide = p is not None and k < p.shape[0]  # the movie_ratings side branch's columns
        self.main = p[:k] if p is not None and rec.has_biases else None
        self.extra = p[k:] if p is not None and wide else None
        self.side = rec.side if p is not None and not wide else None
        self.user_part = self.side.user_part(p) if self.side is not None and p is not None else None

    def movie(self, index: int) -> dict[str, float]:
        """The terms for one movie index."""
        return self.terms(self.Q[index], float(self.BM[index]))

    def terms(self, q: Tensor, movie_bias: float) -> dict[str, float]:
        """The terms for a movie embedding ``q`` (a row of ``Q``, or the mean movie)."""
        dot = side = 0.0
        k = self.k
        if self.main is not None:
            dot = float(torch.dot(self.main, q[:k]))
        if self.extra is not None:
            side = float(torch.dot(self.extra, q[k:]))
        elif self.side is not None and self.user_part is not None:
            side = self.side.one_pair(self.user_part, q)
        return {"user_bias": self.user_bias, "movie_bias": movie_bias, "dot": dot, "side": side}


def _user_terms(rec: Recommender, p: Tensor, bias: float, movies: Tensor) -> dict[str, np.ndarray]:
    """float32 terms (minus mu) of one user embedding ``p`` and bias for many movie indices.

    Exact up to float32 rounding, which may differ in the last digits from
    :class:`_PairTerms`: it ranks the candidates of a top-N and fits fold-in.
    """
    with torch.inference_mode():
        n = movies.shape[0]
        q = rec.Q[movies]
        zero = np.zeros(n, dtype=np.float32)
        k = rec.main_dim
        terms = {
            "user_bias": np.full(n, bias, dtype=np.float32),
            "movie_bias": rec.BM[movies].numpy(),
            "dot": torch.mv(q[:, :k], p[:k]).numpy() if rec.has_biases else zero,
            "side": rec.side.one_user(p, q).numpy() if rec.side is not None else zero,
        }
        if k < q.shape[1]:  # the movie_ratings side branch's columns
            terms["side"] = torch.mv(q[:, k:], p[k:]).numpy()
        return terms


# --------------------------------------------------------------------------- fallback


def _fallback_name(rec: Recommender, user: int | None, movie: int | None) -> str:
    if not rec.has_biases:
        return "the model has no bias terms, so the mean trained embedding stands in"
    if user is None and movie is None:
        return "neither is known, so the estimate is mu, the mean training rating"
    if user is None:
        return "bias estimate mu + movie bias"
    return "bias estimate mu + user bias"


def _fallback_terms(rec: Recommender, user: int | None, movie: int | None) -> dict[str, float]:
    """Terms for a pair where the user, the movie or both are unknown.

    With biases: the bias estimate. Without: the mean trained user or movie
    embedding stands in, scored as :meth:`Recommender.recommend` scores it.
    """
    if rec.has_biases:
        return {
            "user_bias": float(rec.BU[user]) if user is not None else 0.0,
            "movie_bias": float(rec.BM[movie]) if movie is not None else 0.0,
            "dot": 0.0,
            "side": 0.0,
        }
    p = rec.P[user] if user is not None else rec._prior_mean
    pair = _PairTerms(rec, p, float(rec.BU[user]) if user is not None else 0.0)
    return pair.movie(movie) if movie is not None else pair.terms(rec._mean_movie, 0.0)


def _fallback_many(
    rec: Recommender,
    users: np.ndarray,
    movies: np.ndarray,
    user_ok: np.ndarray,
    movie_ok: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray:
    """Clipped fallback predictions of the pairs in ``rows`` (user and movie indices)."""
    if not rec.has_biases:
        values = [
            _explanation(
                rec,
                _fallback_terms(
                    rec,
                    int(users[r]) if user_ok[r] else None,
                    int(movies[r]) if movie_ok[r] else None,
                ),
            ).prediction
            for r in np.flatnonzero(rows)
        ]
        return np.asarray(values, dtype=np.float32)
    bu = np.where(user_ok, rec.BU.numpy()[np.maximum(users, 0)], 0.0)[rows]
    bm = np.where(movie_ok, rec.BM.numpy()[np.maximum(movies, 0)], 0.0)[rows]
    raw = np.float32(rec.mu) + bu.astype(np.float32) + bm.astype(np.float32)
    return np.clip(raw, rec.scale.low, rec.scale.high)


def _bias_estimate(rec: Recommender, movie_ids: np.ndarray) -> np.ndarray:
    """The fallback for an unknown user (see :meth:`Recommender.bias_estimate`)."""
    index = rec.movie_map.index_of(movie_ids)
    if not rec.has_biases:
        terms = _user_terms(rec, rec._prior_mean, 0.0, torch.from_numpy(index))
        raw = rec.mu + terms["side"].astype(np.float64)
    else:
        raw = rec.mu + rec.BM.numpy()[index].astype(np.float64)
    return np.clip(raw, rec.scale.low, rec.scale.high)


# --------------------------------------------------------------------------- similar movies


def _similar(rec: Recommender, movie_id: int, n: int) -> SimilarMovies:
    """The ``n`` trained movies nearest ``movie_id`` (see :meth:`Recommender.similar`)."""
    index = rec._movie_index(movie_id)
    if index is None:
        raise UnknownIdError(
            str(rec._unknown("movie", movie_id).message),
            hint="similar movies need a movie with training ratings",
        )
    with torch.inference_mode():
        cosine = (rec._unit_q @ _unit_rows(rec.Q[index, : rec.main_dim])).clamp_(-1, 1).numpy()
    pool = rec._trained_movie_index.numpy()
    keep = pool != index
    pool, cosine = pool[keep], cosine[keep]
    order = np.lexsort((pool, -cosine))[:n]
    items = [SimilarMovie(rec._movie_of_index(int(pool[i])), float(cosine[i])) for i in order]
    return SimilarMovies(rec.movie(movie_id), items)


def _unit_rows(vectors: Tensor) -> Tensor:
    """``vectors`` scaled to length 1 in float64 (a zero row stays zero), for cosines.

    float64 keeps the squares of large values from overflowing, which would
    make every cosine 0.
    """
    with torch.no_grad():
        wide = vectors.double()
        return wide / wide.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
