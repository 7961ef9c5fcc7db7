"""Tests for resrec.data.synth, the MovieLens-shaped synthetic ratings generator."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pyarrow.csv as pa_csv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resrec.data.synth as synth
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, Ratings
from resrec.data.synth import (
    FIRST_TIMESTAMP,
    GENRES,
    LAST_TIMESTAMP,
    _allocate,
    synthesize,
    synthesize_with_truth,
    write_synthetic_csv,
)
from resrec.errors import ConfigError

# 400 users rating 100 of 3,000 movies on average: some users are sampled by
# rejection and the most active (over 5% of the movies) by the exact sampler.
N_USERS, N_MOVIES, N_RATINGS = SMALL = (400, 3_000, 40_000)


@pytest.fixture(scope="module")
def small() -> Ratings:
    return synthesize(*SMALL, seed=7)


def pair_keys(ratings: Ratings) -> np.ndarray:
    return ratings.user_id * (int(ratings.movie_id.max()) + 1) + ratings.movie_id


def test_row_count_is_exact(small: Ratings) -> None:
    assert len(small) == N_RATINGS
    assert small.timestamp is not None
    assert {len(small.movie_id), len(small.rating), len(small.timestamp)} == {len(small)}


def test_rows_are_sorted_by_user_then_movie_without_duplicates(small: Ratings) -> None:
    keys = pair_keys(small)
    assert np.all(np.diff(keys) > 0)


def test_every_user_has_min_ratings_and_every_movie_is_rated(small: Ratings) -> None:
    per_user = np.bincount(small.user_id)[1:]
    assert len(per_user) == N_USERS
    assert per_user.min() >= 20
    assert small.n_movies == N_MOVIES


def test_activity_is_long_tailed(small: Ratings) -> None:
    per_user = np.bincount(small.user_id)[1:]
    _, per_movie = np.unique(small.movie_id, return_counts=True)
    assert per_user.max() > 5 * np.median(per_user)
    assert per_movie.max() > 20 * np.median(per_movie)


def test_ratings_are_on_the_scale_with_a_movielens_like_mean(small: Ratings) -> None:
    assert small.scale == HALF_STARS
    assert small.rating.dtype == np.float32
    assert HALF_STARS.on_scale(small.rating).all()
    assert 3.45 < small.rating.mean() < 3.6
    assert 0.85 < small.rating.std() < 1.2
    # Whole stars are more common than their half-star neighbours, as in MovieLens.
    counts = {v: int((small.rating == v).sum()) for v in (3.0, 3.5, 4.0)}
    assert counts[4.0] > counts[3.5] < counts[3.0]


def test_whole_star_scale() -> None:
    ratings = synthesize(*SMALL, seed=1, scale=WHOLE_STARS)
    assert ratings.scale == WHOLE_STARS
    assert WHOLE_STARS.on_scale(ratings.rating).all()
    assert set(np.unique(ratings.rating).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_ids_look_like_movielens(small: Ratings) -> None:
    assert small.user_id.dtype == np.int64
    assert small.movie_id.dtype == np.int64
    assert set(np.unique(small.user_id).tolist()) == set(range(1, N_USERS + 1))
    movie_ids = np.unique(small.movie_id)
    assert movie_ids.min() >= 1
    assert movie_ids.max() <= 4.9 * N_MOVIES
    assert movie_ids.max() > 2 * N_MOVIES  # gaps, as in MovieLens


def test_timestamps_lie_in_movielens_period(small: Ratings) -> None:
    assert small.timestamp is not None
    assert small.timestamp.dtype == np.int64
    assert small.timestamp.min() >= FIRST_TIMESTAMP
    assert small.timestamp.max() <= LAST_TIMESTAMP


def test_same_seed_gives_same_ratings(small: Ratings) -> None:
    again = synthesize(*SMALL, seed=7)
    for column in ("user_id", "movie_id", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(again, column), getattr(small, column))


def test_different_seed_gives_different_ratings(small: Ratings) -> None:
    other = synthesize(*SMALL, seed=8)
    assert len(other) == len(small)
    assert not np.array_equal(other.movie_id, small.movie_id)
    assert not np.array_equal(other.rating, small.rating)


def test_ratings_follow_the_planted_low_rank_score() -> None:
    ratings, truth = synthesize_with_truth(*SMALL, seed=3)
    user_index = ratings.user_id - 1
    movie_index = np.searchsorted(truth.movie_ids, ratings.movie_id)
    np.testing.assert_array_equal(truth.movie_ids[movie_index], ratings.movie_id)

    low_rank = truth.low_rank_score(user_index, movie_index)
    expected = truth.expected_rating(user_index, movie_index)
    assert np.corrcoef(ratings.rating, low_rank)[0, 1] > 0.5
    assert np.corrcoef(ratings.rating, expected)[0, 1] > np.corrcoef(ratings.rating, low_rank)[0, 1]
    # The side term is small but really there.
    side = truth.side_score(user_index, movie_index)
    assert 0.15 < side.std() < 0.35
    assert abs(side.mean()) < 0.05


def test_noise_zero_leaves_only_rounding_error() -> None:
    ratings, truth = synthesize_with_truth(*SMALL, seed=3, noise=0.0)
    expected = truth.expected_rating(
        ratings.user_id - 1, np.searchsorted(truth.movie_ids, ratings.movie_id)
    )
    inside = (expected > 1.0) & (expected < 4.5)
    # Half-star rounding or whole-star rounding: never more than half a star off.
    assert np.abs(ratings.rating[inside] - expected[inside]).max() <= 0.5 + 1e-5


@pytest.mark.parametrize(("handoff", "max_rounds"), [(0, 1000), (10**9, 1), (0, 2)])
def test_rejection_rounds_and_exact_sampler_agree_on_invariants(
    monkeypatch: pytest.MonkeyPatch, handoff: int, max_rounds: int
) -> None:
    # Default sizes hand most work to one path; force each mix of the two.
    monkeypatch.setattr(synth, "_EXACT_HANDOFF", handoff)
    monkeypatch.setattr(synth, "_MAX_ROUNDS", max_rounds)
    ratings = synthesize(*SMALL, seed=11)

    assert len(ratings) == N_RATINGS
    assert np.all(np.diff(pair_keys(ratings)) > 0)
    assert ratings.n_movies == N_MOVIES
    assert np.bincount(ratings.user_id)[1:].min() >= 20


def test_every_user_rating_every_movie() -> None:
    ratings = synthesize(5, 30, 150, seed=0, min_user_ratings=20)
    assert len(ratings) == 150
    assert np.all(np.bincount(ratings.user_id)[1:] == 30)


def test_tiny_catalogue_and_few_ratings() -> None:
    ratings = synthesize(3, 50, 60, seed=0, min_user_ratings=5)
    assert len(ratings) == 60
    assert ratings.n_movies == 50
    assert np.all(np.diff(pair_keys(ratings)) > 0)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((10, 100, 150), "n_ratings must lie between"),  # fewer than 10 users x 20
        ((10, 500, 300), "n_ratings must lie between"),  # cannot rate all 500 movies
        ((2, 30, 61), "n_ratings must lie between"),  # more than every pair
        ((10, 10, 100), "min_user_ratings"),  # 20 ratings from 10 movies
        ((0, 10, 100), "at least 1"),
    ],
)
def test_impossible_sizes_raise_config_error(sizes: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        synthesize(*sizes)


def test_negative_noise_is_rejected() -> None:
    with pytest.raises(ConfigError, match="noise"):
        synthesize(*SMALL, noise=-1.0)


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=40),
    floor=st.integers(0, 5),
    extra=st.integers(0, 500),
    cap_slack=st.integers(0, 50),
)
def test_allocate_respects_total_floor_and_cap(
    weights: list[float], floor: int, extra: int, cap_slack: int
) -> None:
    n = len(weights)
    total = n * floor + extra
    cap = max(floor, -(-total // n)) + cap_slack
    counts = _allocate(np.array(weights), total, floor, cap)
    assert counts.sum() == total
    assert counts.min() >= floor
    assert counts.max() <= cap


def read_ratings_csv(path: Path) -> dict[str, np.ndarray]:
    table = pa_csv.read_csv(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def test_written_csv_round_trips(tmp_path: Path, small: Ratings) -> None:
    files = write_synthetic_csv(tmp_path / "ml" / "ratings.csv", *SMALL, seed=7)

    assert files.ratings == tmp_path / "ml" / "ratings.csv"
    assert files.movies == tmp_path / "ml" / "movies.csv"
    assert files.n_ratings == N_RATINGS
    with open(files.ratings, encoding="utf-8") as handle:
        assert handle.readline() == "userId,movieId,rating,timestamp\n"
        assert re.fullmatch(r"1,\d+,[0-5]\.[05],\d{9,10}\n", handle.readline())

    columns = read_ratings_csv(files.ratings)
    np.testing.assert_array_equal(columns["userId"], small.user_id)
    np.testing.assert_array_equal(columns["movieId"], small.movie_id)
    np.testing.assert_array_equal(columns["rating"].astype(np.float32), small.rating)
    np.testing.assert_array_equal(columns["timestamp"], small.timestamp)
    assert sorted(p.name for p in files.ratings.parent.iterdir()) == ["movies.csv", "ratings.csv"]


def test_written_movies_csv_describes_every_rated_movie(tmp_path: Path) -> None:
    files = write_synthetic_csv(tmp_path, *SMALL, seed=7)
    assert files.ratings == tmp_path / "ratings.csv"

    with open(files.movies, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["movieId", "title", "genres"]
    movie_ids = [int(row["movieId"]) for row in rows]
    rated = np.unique(read_ratings_csv(files.ratings)["movieId"])
    assert movie_ids == rated.tolist()
    for row in rows:
        assert re.fullmatch(rf"Synthetic movie {row['movieId']} \((19|20)\d\d\)", row["title"])
        genres = row["genres"].split("|")
        assert 1 <= len(genres) <= 3
        assert set(genres) <= set(GENRES)


def test_written_files_are_deterministic(tmp_path: Path) -> None:
    first = write_synthetic_csv(tmp_path / "a" / "ratings.csv", 50, 300, 2_000, seed=5)
    second = write_synthetic_csv(tmp_path / "b" / "ratings.csv", 50, 300, 2_000, seed=5)
    assert first.movies != second.movies
    assert first.ratings.read_bytes() == second.ratings.read_bytes()
    assert first.movies.read_bytes() == second.movies.read_bytes()


def test_existing_files_are_kept_unless_overwrite(tmp_path: Path) -> None:
    first = write_synthetic_csv(tmp_path, 50, 300, 2_000, seed=5)
    before = first.ratings.read_bytes()

    with pytest.raises(ConfigError, match="already exists"):
        write_synthetic_csv(tmp_path, 50, 300, 2_000, seed=6)
    assert first.ratings.read_bytes() == before

    write_synthetic_csv(tmp_path, 50, 300, 2_000, seed=6, overwrite=True)
    assert first.ratings.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movies.csv", "ratings.csv"]


def test_sizes_are_checked_before_any_folder_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_ratings must lie between"):
        write_synthetic_csv(tmp_path / "new" / "ratings.csv", 50, 300, 10)
    assert list(tmp_path.iterdir()) == []


def test_ratings_file_cannot_be_named_movies_csv(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"movies\.csv"):
        write_synthetic_csv(tmp_path / "movies.csv", *SMALL)


@pytest.mark.slow
def test_full_ml20m_sized_table() -> None:
    ratings = synthesize(seed=0)
    assert len(ratings) == 20_000_263
    assert np.all(np.diff(ratings.user_id) >= 0)
    per_user = np.bincount(ratings.user_id)[1:]
    assert len(per_user) == 138_493
    assert per_user.min() >= 20
    assert np.unique(ratings.movie_id).size == 26_744
    assert 3.45 < ratings.rating.mean() < 3.6
