"""Train / validation / test splits of a ratings table.

A split is three disjoint arrays of row numbers whose union is every row of
the table. Validation rows are carved from what would otherwise be training
rows, so the test rows of a split do not depend on the validation fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resrec.errors import ConfigError, counted


@dataclass(frozen=True)
class Split:
    """Row numbers (int64, each sorted ascending) of the three partitions."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.size, "valid": self.valid.size, "test": self.test.size}


def split_ratings(
    n_rows: int,
    *,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Shuffle rows with ``seed`` and cut them into train, validation and test.

    The first ``round(test_fraction * n_rows)`` shuffled rows are the test
    split; ``valid_fraction`` is a fraction of *all* rows, taken next. The rest
    is the training split. The same arguments always give the same split.

    Raises
    ------
    ConfigError
        When a fraction is out of range, or a part is empty: the training
        part always, the test or validation part when its fraction is above 0.
    """
    _check_fraction("test_fraction", test_fraction, allow_zero=True)
    _check_fraction("valid_fraction", valid_fraction, allow_zero=True)
    if test_fraction + valid_fraction >= 1.0:
        raise ConfigError(
            f"test_fraction + valid_fraction must be below 1; got "
            f"{test_fraction} + {valid_fraction}"
        )

    order = np.random.default_rng(seed).permutation(n_rows)
    n_test = round(test_fraction * n_rows)
    n_valid = round(valid_fraction * n_rows)
    _check_sizes(n_rows, n_test, n_valid, test_fraction, valid_fraction)

    test = np.sort(order[:n_test])
    valid = np.sort(order[n_test : n_test + n_valid])
    train = np.sort(order[n_test + n_valid :])
    return Split(train=train, valid=valid, test=test)


def _check_sizes(
    n_rows: int, n_test: int, n_valid: int, test_fraction: float, valid_fraction: float
) -> None:
    """Refuse a split with an empty part that its fractions ask for."""
    n_train = n_rows - n_test - n_valid
    sizes = f"train {n_train:,}, validation {n_valid:,}, test {n_test:,}"
    fractions = f"test_fraction {test_fraction:g} and valid_fraction {valid_fraction:g}"
    for name, size, wanted in (
        ("training", n_train, True),
        ("test", n_test, test_fraction > 0),
        ("validation", n_valid, valid_fraction > 0),
    ):
        if wanted and size == 0:
            raise ConfigError(
                f"the {name} split is empty: {counted(n_rows, 'rating')} with {fractions} "
                f"give {sizes}",
                hint=_EMPTY_HINTS[name],
            )


_EMPTY_HINTS = {
    "training": "use more ratings or a smaller --test-fraction / --valid-fraction",
    "test": "use more ratings or a larger --test-fraction (--test-fraction 0 trains "
    "without a test split)",
    "validation": "use more ratings or a larger --valid-fraction (--valid-fraction 0 "
    "trains without a validation split)",
}


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ConfigError(f"{name} must be in [0, 1); got {value}")


def cold_counts(
    train_users: np.ndarray,
    train_movies: np.ndarray,
    users: np.ndarray,
    movies: np.ndarray,
    n_users: int,
    n_movies: int,
) -> dict[str, int]:
    """How many of the given (user index, movie index) rows are cold.

    A row is cold when its user or its movie has no rating in training.
    """
    seen_user = np.zeros(n_users, dtype=bool)
    seen_user[train_users] = True
    seen_movie = np.zeros(n_movies, dtype=bool)
    seen_movie[train_movies] = True
    new_user = ~seen_user[users]
    new_movie = ~seen_movie[movies]
    return {
        "new_user": int(new_user.sum()),
        "new_movie": int(new_movie.sum()),
        "either": int((new_user | new_movie).sum()),
    }
