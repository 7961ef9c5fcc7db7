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

from resrec.inference.recommender import Recommender, parse_rated
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

__all__ = [
    "TERMS",
    "Estimate",
    "Explanation",
    "FoldedUser",
    "Movie",
    "Prediction",
    "Recommendation",
    "Recommendations",
    "Recommender",
    "ScoreReport",
    "SimilarMovie",
    "SimilarMovies",
    "parse_rated",
]
