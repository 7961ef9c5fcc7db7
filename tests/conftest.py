"""Shared fixtures: small rating tables the tests make themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from resrec.data.ratings import WHOLE_STARS, Ratings


def planted_ratings(n_users: int = 60, n_movies: int = 40, n: int = 1500, seed: int = 0) -> Ratings:
    """Whole-star ratings from a rank-2 structure plus noise: learnable, tiny."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(n_users * n_movies, size=n, replace=False)
    users, movies = pairs // n_movies, pairs % n_movies
    u_f, m_f = rng.normal(size=(n_users, 2)), rng.normal(size=(n_movies, 2))
    score = 3.5 + 0.8 * (u_f[users] * m_f[movies]).sum(1) + rng.normal(0, 0.3, n)
    ratings = np.clip(np.round(score), 1, 5)
    return Ratings.from_arrays(users + 1, movies * 3 + 2, ratings, scale=WHOLE_STARS)


@pytest.fixture
def small_ratings() -> Ratings:
    return planted_ratings()


def write_udata(path: Path, ratings: Ratings) -> Path:
    """Write a table in ML-100K's u.data layout (tab separated, no header)."""
    ts = 880000000 + np.arange(len(ratings))
    lines = [
        f"{u}\t{m}\t{int(r)}\t{t}"
        for u, m, r, t in zip(ratings.user_id, ratings.movie_id, ratings.rating, ts, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def udata_file(tmp_path: Path, small_ratings: Ratings) -> Path:
    return write_udata(tmp_path / "u.data", small_ratings)


def real_data_dir() -> Path:
    """$RESREC_DATA_DIR, or skip the test saying why."""
    value = os.environ.get("RESREC_DATA_DIR")
    if not value:
        pytest.skip("real MovieLens data: set RESREC_DATA_DIR to the folder holding ml-100k/")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"real MovieLens data: RESREC_DATA_DIR={value} is not a folder")
    return path
