"""Top-N: one user's rough scores for every movie, narrowed to the best ``n`` and rescored exactly.

Until :meth:`Recommender.prepare_top_n` has built the :class:`SideBounds`
(by itself after :data:`_PREPARE_AFTER` queries), every movie is scored in one
full pass; afterwards the side branch may come from the nearest anchor user,
within a known slack (:func:`_rough_scores`). Either way the candidates near
the ``n``-th best are rescored exactly in one batch, and those that can be in
the top ``n`` one pair at a time, as :meth:`Recommender.predict` scores them
(:func:`_select`): a movie's score is the same in every list and in predict.
They are ordered by the unclipped score, highest first, ties broken by
ascending ``movie_id``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from resrec.errors import counted
from resrec.inference.explain import _explanation, _PairTerms, _user_terms
from resrec.inference.results import TERMS, Estimate, Recommendation, Recommendations
from resrec.inference.side import SideBounds

if TYPE_CHECKING:
    from resrec.inference.recommender import Recommender

_PREPARE_AFTER = 16  # top-N queries answered by scoring every movie before bounds are built
_GAP_FACTOR = 1.5  # the bounds are tried up to this times the anchor's gap (_useful_slack)

# --------------------------------------------------------------------------- top-N


def _top_n(
    rec: Recommender,
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
    """The ``n`` best movies for a user embedding ``p`` (``None``: bias-only fallback) and bias."""
    scores, slack = _rough_scores(rec, p, bias, n)
    left_out = rated if not include_rated else rated[:0]
    excluded = int(left_out.size)
    candidates = rec._n_trained_movies - _distinct(left_out)  # rated movies are trained
    if candidates == 0:
        empty_reason = (
            "the user has rated every movie the model knows; "
            "ask to include rated movies to rank them anyway"
            if excluded
            else "the model knows no movies"
        )
        return Recommendations(user_id, [], estimate, excluded, 0, note, empty_reason)

    chosen, terms = _select(rec, scores, left_out, min(n, candidates), p, bias, slack)
    items = []
    for rank, (movie, values) in enumerate(zip(chosen, terms, strict=True), start=1):
        explanation = _explanation(rec, values)
        items.append(
            Recommendation(
                rank=rank,
                movie=rec._movie_of_index(int(movie)),
                prediction=explanation.prediction,
                raw=explanation.raw,
                explanation=explanation if explain else None,
            )
        )
    reason = None
    if len(items) < n:
        reason = f"only {counted(candidates, 'movie')} could be recommended"
    return Recommendations(user_id, items, estimate, excluded, candidates, note, reason)


def _prepare_top_n(rec: Recommender) -> None:
    """Build the recommender's :class:`SideBounds` (see :meth:`Recommender.prepare_top_n`)."""
    if not rec._use_bounds or rec.side is None or rec.side.lipschitz() is None:
        return
    with rec._bounds_lock:
        if rec._bounds is None:
            rows = torch.from_numpy(np.flatnonzero(rec.trained_users))
            bounds = SideBounds(rec.side, rec.P[rows])
            rec._anchor_tops = _best_at_anchors(rec, bounds)
            rec._bounds = bounds


def _best_at_anchors(rec: Recommender, bounds: SideBounds) -> Tensor:
    """Each anchor's best scores over the trained movies, best first, an eighth of them."""
    trained = rec._trained_movie_index
    with torch.inference_mode():
        scores = bounds.table[:, trained] + rec.BM[trained]  # (anchors, trained movies)
        if rec.has_biases:
            scores += bounds.anchors @ rec.Q[trained].t()
        return torch.topk(scores, trained.numel() // 8, dim=1).values


def _useful_slack(rec: Recommender, anchor: int, n: int) -> float:
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
    tops = rec._anchor_tops
    last = tops.shape[1] - 1
    if n > last:  # the fallback is then bounded by 4 n, not by an eighth of the movies
        return math.inf
    return _GAP_FACTOR * float(tops[anchor, n - 1] - tops[anchor, last])


def _rough_scores(
    rec: Recommender, p: Tensor | None, bias: float, n: int
) -> tuple[np.ndarray, float]:
    """Scores for every movie, and how far (at most) each may be from the exact score.

    Exact up to float rounding (slack 0) until :meth:`Recommender.prepare_top_n`
    has run; then the side branch comes from the nearest anchor user
    (:meth:`SideBounds.nearest`) and the slack is twice its radius, unless
    that is more than the bounds are likely to use for a top-``n``
    (:func:`_useful_slack`): every movie is then scored at once.
    """
    if p is not None and rec._bounds is None and rec.side is not None:
        rec._top_n_calls += 1  # a lost update under threads only delays the build
        if rec._top_n_calls > _PREPARE_AFTER:
            rec.prepare_top_n()
    bounds = rec._bounds
    if p is None or bounds is None:
        return rec._all_scores(p, bias), 0.0
    anchor, shift, radius = bounds.nearest(p)
    if 2.0 * radius > rec._useful_slack(anchor, n):
        return rec._all_scores(p, bias), 0.0
    with torch.inference_mode():
        out = torch.addmv(rec.BM, rec.Q, p) if rec.has_biases else rec.BM.clone()
        out += bounds.table[anchor]
        out += rec.mu + bias + shift
    return out.numpy(), 2.0 * radius


def _select(
    rec: Recommender,
    scores: np.ndarray,
    left_out: np.ndarray,
    k: int,
    p: Tensor | None,
    bias: float,
    slack: float = 0.0,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The top ``k`` movie indices by their predictions (ties by movie_id), and their terms.

    Untrained movies and those in ``left_out`` are not ranked; at least
    ``k`` others must be. ``scores`` are within ``slack`` of the exact
    scores (and the fast all-movies scores may differ from the exact ones
    in the last float32 digits), so every movie within that margin of the
    k-th best is rescored in one batch. When the margin lets in too many
    movies, every movie is scored instead. The batch may still round
    differently from one pair at a time, so the movies that can be in the
    top ``k`` are scored as :meth:`Recommender.predict` scores them
    (:class:`_PairTerms`), and those values settle the order and are shown.
    """
    masked = scores + rec._untrained_penalty  # -inf for untrained movies
    masked[left_out] = -np.inf
    kth = float(torch.topk(torch.from_numpy(masked), k, sorted=False).values.min())
    pool = np.flatnonzero(masked >= kth - (_rounding_margin(kth) + slack))
    if slack > 0 and pool.size > max(4 * k, masked.size // 8):
        return _select(rec, rec._all_scores(p, bias), left_out, k, p, bias)
    batch = _raw(rec, _terms_arrays(rec, p, bias, pool))
    kth = float(np.partition(batch, batch.size - k)[batch.size - k])
    near = pool[batch >= kth - _rounding_margin(kth)]
    pair = _PairTerms(rec, p, bias)
    terms = [pair.movie(int(movie)) for movie in near]
    exact = _raw(rec, {name: np.array([t[name] for t in terms]) for name in TERMS[1:]})
    order = np.lexsort((near, -exact))[:k]  # score descending, then movie_id ascending
    return near[order], [terms[i] for i in order]


def _rounding_margin(score: float) -> float:
    """More than float32 rounding can move a score near ``score`` (summation orders differ)."""
    return 1e-3 + 1e-5 * abs(score)


def _raw(rec: Recommender, terms: dict[str, np.ndarray]) -> np.ndarray:
    """``mu`` plus the terms in the order and float64 precision of ``Explanation.raw``."""
    raw = np.full(len(terms["user_bias"]), rec.mu)
    for name in TERMS[1:]:
        raw = raw + np.asarray(terms[name]).astype(np.float64)
    return raw


def _terms_arrays(
    rec: Recommender, p: Tensor | None, bias: float, movies: np.ndarray
) -> dict[str, np.ndarray]:
    """float32 terms (minus mu) of one user embedding (``None``: bias-only fallback)."""
    index = torch.from_numpy(np.asarray(movies, dtype=np.int64))
    n = index.shape[0]
    if p is None:
        zero = np.zeros(n, dtype=np.float32)
        bm = rec.BM[index].numpy()
        return {"user_bias": zero, "movie_bias": bm, "dot": zero, "side": zero}
    return _user_terms(rec, p, bias, index)


def _distinct(index: np.ndarray) -> int:
    """How many different values ``index`` holds (a user's rated movies come sorted)."""
    if index.size < 2 or bool((index[1:] > index[:-1]).all()):
        return int(index.size)
    return int(np.unique(index).size)
