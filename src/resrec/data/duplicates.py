"""Repeated (user_id, movie_id) pairs in parsed ratings: refuse them, or merge them."""

from __future__ import annotations

import logging

import numpy as np

from resrec.data.line_checks import _INT64_MAX, _LineChecker
from resrec.data.ratings import RatingScale
from resrec.errors import DataError

logger = logging.getLogger(__name__)

_BLOCK = 1 << 16  # elements per block in vectorised checks


def _resolve_duplicates(
    columns: dict[str, np.ndarray],
    policy: str,
    scale: RatingScale,
    checker: _LineChecker,
    first_line: int,
    notes: list[str],
) -> dict[str, np.ndarray]:
    """Raise on a repeated (user_id, movie_id) pair, or merge repeats by ``policy``."""
    user, movie = columns["user_id"], columns["movie_id"]
    grouped = _group_pairs(user, movie)
    if grouped is None:
        return columns
    order, starts = grouped

    if policy == "error":
        repeats = order[~starts]
        row = int(repeats.min())
        position = int(np.flatnonzero(order == row)[0])
        previous = int(order[position - 1])
        spec = checker.spec
        column = spec.index("movie_id")
        raise DataError(
            f"user_id {user[row]} rated movie_id {movie[row]} again "
            f"(first on line {first_line + previous})",
            path=checker.path,
            line=first_line + row,
            column=column + 1,
            column_name=spec.names[column],
            hint="pass duplicates='last' to keep the later rating or duplicates='mean' to "
            "average them (--duplicates on the command line)",
        )

    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = True
    kept = order[ends]  # the last line of each pair, in pair order
    merged = int(len(order) - len(kept))
    placement = np.argsort(kept, kind="stable")
    result = {role: values[kept[placement]] for role, values in columns.items()}

    if policy == "mean":
        group = np.cumsum(starts) - 1
        result["rating"] = _mean_on_scale(columns["rating"][order], group, scale)[placement]
    notes.append(
        f"{merged} repeated ratings of the same (user_id, movie_id) pair merged "
        f"(duplicates={policy!r})"
    )
    logger.info("%s: merged %d repeated ratings (duplicates=%r)", checker.path, merged, policy)
    return result


def _mean_on_scale(rating: np.ndarray, group: np.ndarray, scale: RatingScale) -> np.ndarray:
    """Each group's mean rating, rounded to the nearest step of ``scale``, ties upwards.

    Ratings are counted in whole steps above ``scale.low``, so the sums and
    the rounding are exact integer arithmetic: for a group of ``n`` ratings
    with ``k`` steps in total, the mean is ``k / n`` steps and the nearest
    step, ties up, is ``floor((2k + n) / 2n)``.
    """
    steps = np.rint((rating - scale.low) / scale.step).astype(np.int64)
    total = np.bincount(group, weights=steps).astype(np.int64)  # exact below 2**53
    count = np.bincount(group).astype(np.int64)
    nearest = (2 * total + count) // (2 * count)
    return scale.low + nearest * scale.step


def _group_pairs(user: np.ndarray, movie: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows stably sorted by pair, and where each pair's group starts; None if none repeats."""
    n = len(user)
    if n < 2:
        return None

    span = int(movie.max()) + 1
    if int(user.max()) >= _INT64_MAX // span:
        return _group_pairs_lexsort(user, movie)  # ids too large to combine into one key
    if _pairs_increasing(user, movie, span):
        return None  # sorted by (user_id, movie_id) without repeats: the usual case

    key = user * span + movie
    ordered = np.sort(key)
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    if starts.all():
        return None
    return np.argsort(key, kind="stable"), starts


def _pairs_increasing(user: np.ndarray, movie: np.ndarray, span: int) -> bool:
    """Whether ``user * span + movie`` strictly increases, a block at a time."""
    key = np.empty(min(_BLOCK, len(user)) + 1, dtype=np.int64)
    for start in range(0, len(user) - 1, _BLOCK):
        stop = min(start + _BLOCK + 1, len(user))  # one past the block: blocks overlap by one
        k = key[: stop - start]
        np.multiply(user[start:stop], span, out=k)
        k += movie[start:stop]
        if not (k[1:] > k[:-1]).all():
            return False
    return True


def _group_pairs_lexsort(
    user: np.ndarray, movie: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    order = np.lexsort((movie, user))
    u, m = user[order], movie[order]
    starts = np.empty(len(user), dtype=bool)
    starts[0] = True
    starts[1:] = (u[1:] != u[:-1]) | (m[1:] != m[:-1])
    return None if starts.all() else (order, starts)
