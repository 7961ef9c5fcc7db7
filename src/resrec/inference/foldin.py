"""Fold-in: a new user's embedding and bias fitted to their ratings against the frozen model.

:func:`_fold_in` is :meth:`Recommender.fold_in`: the given ratings are checked
(:func:`_rating_arrays`, :func:`_rated_movies`, :func:`_check_ratings`), then
:func:`_fit_user` finds the MAP estimate under the prior of the trained
users. :func:`parse_rated` reads such ratings from the CLI's ``--rated``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from resrec.errors import ConfigError, UnknownIdError, quoted, shorten
from resrec.inference.explain import _user_terms
from resrec.inference.results import TERMS, FoldedUser
from resrec.inference.scoring import _bounded_int

if TYPE_CHECKING:
    from resrec.inference.recommender import Recommender

# --------------------------------------------------------------------------- new users


def _fold_in(
    rec: Recommender,
    ratings: Mapping[int, float] | Iterable[tuple[int, float]],
    unknown: str,
    prior_weight: float,
    factors: bool,
) -> FoldedUser:
    """Fit a new user to ``{movie_id: rating}`` (see :meth:`Recommender.fold_in`)."""
    movie_ids, values = _rating_arrays(ratings)
    index, kept, ignored = _rated_movies(rec, movie_ids, unknown)
    values = values[kept]
    _check_ratings(rec, values)
    if index.size == 0:
        raise ConfigError(
            "none of the rated movies is known to the model; rate movies it was trained on"
        )

    p, bias = _fit_user(rec, index, values, prior_weight, factors)
    with torch.inference_mode():
        terms = _user_terms(rec, p, bias, torch.from_numpy(index))
    fitted = rec.mu + sum(terms[k].astype(np.float64) for k in TERMS[1:])
    rmse = float(np.sqrt(np.mean((fitted - values) ** 2)))
    return FoldedUser(
        factors=p.numpy().copy(),
        bias=bias,
        movie_index=index,
        movie_id=rec.movie_map.raw_ids[index],
        rating=values,
        fit_rmse=rmse,
        ignored=ignored,
    )


def _rated_movies(
    rec: Recommender, movie_ids: np.ndarray, unknown: str
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    if unknown not in ("error", "ignore"):
        raise ConfigError(f"unknown must be 'error' or 'ignore'; got {unknown!r}")
    index = rec.movie_map.index_of(movie_ids, missing="negative")
    known = index >= 0
    known[known] = rec.trained_movies[index[known]]
    ignored = [int(m) for m in movie_ids[~known]]
    if ignored and unknown == "error":
        raise UnknownIdError(
            str(rec._unknown("movie", ignored[0]).message),
            hint="rate movies the model was trained on, or skip unknown ones "
            "(--ignore-unknown; 'unknown': 'ignore' in the HTTP API)",
        )
    return index[known], known, ignored


def _check_ratings(rec: Recommender, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        raise ConfigError(
            f"rating {float(values[~finite][0])} is not a finite number, so not on the "
            f"rating scale ({rec.scale.describe()})"
        )
    bad = ~rec.scale.on_scale(values)
    if bad.any():
        raise ConfigError(
            f"rating {float(values[bad][0]):g} is not on the rating scale ({rec.scale.describe()})"
        )


def _fit_user(
    rec: Recommender, movies: np.ndarray, values: np.ndarray, prior_weight: float, factors: bool
) -> tuple[Tensor, float]:
    """Minimise squared error + prior over (embedding, bias) with L-BFGS."""
    if not prior_weight >= 0:
        raise ConfigError(f"prior_weight must be >= 0; got {prior_weight}")
    m = torch.from_numpy(movies.astype(np.int64))
    target = torch.from_numpy(values.astype(np.float32)) - rec.mu
    q = rec.Q[m]
    bm = rec.BM[m]
    weight = rec.noise_variance * prior_weight

    p = rec._prior_mean.clone().requires_grad_(factors)
    b = torch.tensor(rec._prior_bias if rec.has_biases else 0.0)
    b.requires_grad_(rec.has_biases)
    params = [t for t in (p, b) if t.requires_grad]
    if not params:
        return p.detach(), float(b)

    def loss() -> Tensor:
        pred = bm + b
        pp = p.expand(q.shape[0], -1)
        if rec.has_biases:
            pred = pred + (pp * q).sum(1)
        if rec.side is not None:
            pred = pred + rec.side.pairs(pp, q)
        penalty = ((p - rec._prior_mean) ** 2 / rec._prior_var).sum()
        penalty = penalty + (b - rec._prior_bias) ** 2 / rec._prior_bias_var
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


def _predict_folded(rec: Recommender, user: FoldedUser, movie_ids: np.ndarray) -> np.ndarray:
    """Clipped predictions of a folded-in user (see :meth:`Recommender.predict_folded`)."""
    index = rec.movie_map.index_of(movie_ids)
    if not rec.trained_movies[index].all():
        bad = int(np.asarray(movie_ids)[~rec.trained_movies[index]][0])
        raise rec._unknown("movie", bad)
    p = torch.from_numpy(user.factors)
    terms = _user_terms(rec, p, user.bias, torch.from_numpy(index))
    raw = rec.mu + sum(terms[k].astype(np.float64) for k in TERMS[1:])
    return np.clip(raw, rec.scale.low, rec.scale.high)


# --------------------------------------------------------------------------- ratings given


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
