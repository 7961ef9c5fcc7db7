"""Nothing the training decides may depend on the test ratings.

Early stopping, the restored best epoch, every preset or tuning choice look
only at the validation split carved from the training split. These tests
permute the *values* of the test ratings (same rows, same users and movies)
and check that every choice, and every weight, comes out the same.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from resrec.compare import compare
from resrec.config import TrainConfig
from resrec.data.ratings import Ratings
from resrec.split import split_ratings
from resrec.workflow import fit
from tests.conftest import planted_ratings

CONFIG = TrainConfig(
    embedding_dim=4,
    hidden=(8,),
    dropout=0.2,
    optimizer="adam",
    lr=0.02,
    batch_size=64,
    epochs=8,
    early_stopping=2,
    valid_fraction=0.15,
    threads=1,
    seed=3,
)


def _with_test_values_permuted(ratings: Ratings, config: TrainConfig) -> Ratings:
    split = split_ratings(
        len(ratings),
        test_fraction=config.test_fraction,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
    )
    values = ratings.rating.copy()
    shuffled = np.random.default_rng(99).permutation(split.test)
    values[split.test] = ratings.rating[shuffled]
    assert not np.array_equal(values, ratings.rating)
    return replace(ratings, rating=values)


def _choices(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [
        {k: v for k, v in r.items() if not k.startswith("test_") and "seconds" not in k}
        for r in history
    ]


@pytest.mark.parametrize("kind", ["residual", "mf", "biases"])
def test_permuting_test_ratings_changes_no_training_choice(kind: str) -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    config = CONFIG.replace(model=kind)
    original = fit(ratings, config)
    permuted = fit(_with_test_values_permuted(ratings, config), config)

    assert permuted.metrics["best_epoch"] == original.metrics["best_epoch"]
    assert permuted.metrics["epochs_run"] == original.metrics["epochs_run"]
    assert _choices(permuted.history) == _choices(original.history)
    for name, tensor in original.model.state_dict().items():
        assert torch.equal(tensor, permuted.model.state_dict()[name]), name
    # The test figures themselves do change: the permutation did reach the test split.
    assert permuted.metrics["test"]["rmse"] != original.metrics["test"]["rmse"]


def test_early_stopping_restores_the_best_validation_epoch() -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    config = CONFIG.replace(lr=0.05, epochs=30, early_stopping=2)
    result = fit(ratings, config)
    valid = [r["valid_rmse"] for r in result.history]
    best = int(np.argmin(valid)) + 1
    assert result.metrics["best_epoch"] == best
    assert result.metrics["epochs_run"] < config.epochs  # it did stop early
    assert result.metrics["valid"]["rmse"] == pytest.approx(min(valid), rel=1e-5)
    # The history keeps validation and test side by side for every epoch.
    assert all("valid_rmse" in r and "test_rmse" in r for r in result.history)


def test_compare_choices_ignore_the_test_ratings() -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    config = CONFIG.replace(epochs=4)
    original = compare(ratings, ["mf", "biases"], config=config, seed=3)
    permuted = compare(
        _with_test_values_permuted(ratings, config), ["mf", "biases"], config=config, seed=3
    )
    for a, b in zip(original.runs, permuted.runs, strict=True):
        assert (a["best_epoch"], a["valid_rmse"]) == (b["best_epoch"], b["valid_rmse"])


def test_tune_never_scores_the_test_split() -> None:
    pytest.importorskip("optuna", reason="optuna is the optional extra resrec[tune]")
    from resrec.tune import tune, validation_only_split

    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    config = CONFIG.replace(epochs=3)
    assert validation_only_split(len(ratings), config).test.size == 0

    space = {"lr": ("log", (0.005, 0.05)), "embedding_dim": ("choice", (2, 4))}
    first = tune(ratings, config=config, trials=3, space=space)
    second = tune(_with_test_values_permuted(ratings, config), config=config, trials=3, space=space)
    assert first.best_config == second.best_config
    assert first.best_valid_rmse == second.best_valid_rmse
