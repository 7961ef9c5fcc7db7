"""What inference returns: plain, frozen result records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Estimate = Literal["model", "folded-in", "fallback"]
TERMS = ("mu", "user_bias", "movie_bias", "dot", "side")


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
    written: bool = True  # False: a bad row with fail_on_bad, so no output file was left
    seconds: float = 0.0
