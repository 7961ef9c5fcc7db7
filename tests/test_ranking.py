"""Ranking metrics, each against an answer worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resrec.ranking import (
    catalogue_coverage,
    rank_within_users,
    ranking_metrics,
    top_k_movies,
)

# Three users' test ratings:
#   user 0: movies 0, 1, 2, 3  ratings 5, 3, 4, 1  predictions 4.0, 4.5, 3.0, 2.0
#           order by prediction: 1 (3), 0 (5), 2 (4), 3 (1); relevant (>= 4): movies 0, 2
#   user 1: movies 0, 4        ratings 4, 2        predictions 3.5, 3.5 (a tie: movie 0 first)
#   user 2: movie 5            rating 2            no relevant rating: left out
USERS = np.array([0, 0, 0, 0, 1, 1, 2])
MOVIES = np.array([0, 1, 2, 3, 0, 4, 5])
RATINGS = np.array([5, 3, 4, 1, 4, 2, 2], dtype=float)
PREDICTIONS = np.array([4.0, 4.5, 3.0, 2.0, 3.5, 3.5, 3.0])


def test_ranks_order_by_prediction_then_movie_index() -> None:
    ranks = rank_within_users(USERS, MOVIES, PREDICTIONS)
    assert ranks.tolist() == [1, 0, 2, 3, 0, 1, 0]


def test_metrics_at_two_match_the_hand_computation() -> None:
    out = ranking_metrics(USERS, MOVIES, RATINGS, PREDICTIONS, k=2, n_movies=10)

    # user 0: top 2 = movies 1, 0 -> 1 hit; precision 1/2, recall 1/2,
    #         DCG = 1/log2(3), IDCG = 1 + 1/log2(3).
    # user 1: top 2 = movies 0, 4 -> 1 hit; precision 1/2, recall 1/1, NDCG 1.
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert out["precision"] == pytest.approx((0.5 + 0.5) / 2)
    assert out["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["ndcg"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert out["users"] == 2
    assert out["users_without_relevant"] == 1
    # Top-2 lists: {1, 0}, {0, 4}, {5} -> 4 of 10 movies.
    assert out["coverage"] == pytest.approx(0.4)


def test_metrics_at_one_match_the_hand_computation() -> None:
    out = ranking_metrics(USERS, MOVIES, RATINGS, PREDICTIONS, k=1)
    # user 0's first item is movie 1 (rating 3): no hit. user 1's is movie 0 (rating 4): hit.
    assert out["precision"] == pytest.approx(0.5)
    assert out["recall"] == pytest.approx((0 + 1) / 2)
    assert out["ndcg"] == pytest.approx(0.5)
    assert "coverage" not in out


def test_precision_divides_by_the_list_length_when_it_is_shorter_than_k() -> None:
    out = ranking_metrics(np.array([0]), np.array([7]), np.array([5.0]), np.array([1.0]), k=10)
    assert out["precision"] == 1.0
    assert out["recall"] == 1.0
    assert out["ndcg"] == 1.0


def test_the_relevance_threshold_is_configurable() -> None:
    # With threshold 3, user 0's top-1 (movie 1, rating 3) is relevant, and user 2 is still out.
    out = ranking_metrics(USERS, MOVIES, RATINGS, PREDICTIONS, k=1, threshold=3.0)
    assert out["precision"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx((1 / 3 + 1 / 1) / 2)
    assert out["users_without_relevant"] == 1


def test_raises_when_no_user_has_a_relevant_rating() -> None:
    with pytest.raises(ValueError, match="lower the relevance threshold"):
        ranking_metrics(np.array([0, 1]), np.array([0, 1]), np.array([1.0, 2.0]), np.ones(2))


def test_raises_for_unequal_lengths_and_non_finite_predictions() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        ranking_metrics(USERS, MOVIES, RATINGS, PREDICTIONS[:-1])
    bad = PREDICTIONS.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ranking_metrics(USERS, MOVIES, RATINGS, bad)


def test_catalogue_coverage_counts_distinct_movies_and_ignores_padding() -> None:
    assert catalogue_coverage(np.array([[0, 1], [1, -1]]), 4) == 0.5
    with pytest.raises(ValueError, match="outside"):
        catalogue_coverage(np.array([4]), 4)


def test_top_k_movies_excludes_training_pairs_and_pads_short_lists() -> None:
    def score(users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        return movies.astype(float) + 10 * users  # higher movie index scores higher

    exclude = (np.array([0, 0, 1, 1, 1]), np.array([2, 1, 0, 1, 2]))
    top = top_k_movies(score, np.array([0, 1]), n_movies=3, k=2, exclude=exclude)
    # user 0 may get movie 0 only; user 1 has rated everything.
    assert top.tolist() == [[0, -1], [-1, -1]]

    top = top_k_movies(score, np.array([0, 1]), n_movies=3, k=2, pairs_per_chunk=1)
    assert top.tolist() == [[2, 1], [2, 1]]
    assert catalogue_coverage(top, 3) == pytest.approx(2 / 3)
