from __future__ import annotations

import numpy as np
import pytest

from resrec.errors import ConfigError
from resrec.split import cold_counts, split_ratings


@pytest.mark.parametrize("n", [7, 1000, 12345])
def test_split_conserves_every_row_exactly_once(n: int) -> None:
    split = split_ratings(n, test_fraction=0.2, valid_fraction=0.1, seed=3)
    everything = np.concatenate([split.train, split.valid, split.test])
    assert everything.size == n
    assert np.array_equal(np.sort(everything), np.arange(n))


def test_split_sizes_follow_the_fractions() -> None:
    split = split_ratings(1000, test_fraction=0.2, valid_fraction=0.05, seed=0)
    assert split.sizes() == {"train": 750, "valid": 50, "test": 200}


def test_split_is_seeded() -> None:
    a = split_ratings(500, seed=1)
    assert np.array_equal(a.test, split_ratings(500, seed=1).test)
    assert not np.array_equal(a.test, split_ratings(500, seed=2).test)


def test_test_rows_do_not_depend_on_validation_fraction() -> None:
    a = split_ratings(500, test_fraction=0.2, valid_fraction=0.0, seed=4)
    b = split_ratings(500, test_fraction=0.2, valid_fraction=0.1, seed=4)
    assert np.array_equal(a.test, b.test)
    assert set(b.valid) <= set(a.train)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_split_rejects_fractions_out_of_range(bad: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        split_ratings(10, test_fraction=bad)


def test_cold_counts() -> None:
    counts = cold_counts(
        train_users=np.array([0, 1]),
        train_movies=np.array([0, 0]),
        users=np.array([0, 2, 2, 1]),
        movies=np.array([1, 0, 1, 0]),
        n_users=3,
        n_movies=2,
    )
    assert counts == {"new_user": 2, "new_movie": 2, "either": 3}
