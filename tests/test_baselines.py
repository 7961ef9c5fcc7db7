"""The closed-form baselines: global mean and regularised user and movie biases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resrec.config import TrainConfig
from resrec.models import Biases, GlobalMean, build_model
from resrec.workflow import fit
from tests.conftest import planted_ratings


def _t(values: list[float] | list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def test_biases_one_pass_matches_the_hand_computed_closed_form() -> None:
    # Ratings minus mu: (user 0, movie 0) = 2, (user 0, movie 1) = 0, (user 1, movie 0) = 4.
    model = Biases(2, 2, reg_user=1.0, reg_movie=1.0, passes=1)
    model.fit_direct(_t([0, 0, 1]), _t([0, 1, 0]), _t([2.0, 0.0, 4.0], torch.float32))

    # Movies first, user biases still 0: b_m0 = (2 + 4) / (2 + 1) = 2, b_m1 = 0 / (1 + 1) = 0.
    assert model.movie_bias.tolist() == pytest.approx([2.0, 0.0])
    # Then users: b_u0 = ((2 - 2) + (0 - 0)) / (2 + 1) = 0, b_u1 = (4 - 2) / (1 + 1) = 1.
    assert model.user_bias.tolist() == pytest.approx([0.0, 1.0])
    # forward = b_u + b_m (mu is added by the caller).
    assert model(_t([1, 0]), _t([0, 1])).tolist() == pytest.approx([3.0, 0.0])


def test_biases_without_penalty_fit_an_additive_table_exactly() -> None:
    user_effect, movie_effect = np.array([0.5, -1.0, 0.25]), np.array([1.0, -0.5])
    grid_users, grid_movies = np.meshgrid(np.arange(3), np.arange(2), indexing="ij")
    users, movies = grid_users.ravel(), grid_movies.ravel()
    targets = user_effect[users] + movie_effect[movies]

    model = Biases(3, 2, reg_user=0.0, reg_movie=0.0, passes=50)
    u, m = torch.from_numpy(users), torch.from_numpy(movies)
    model.fit_direct(u, m, torch.from_numpy(targets).float())
    assert model(u, m).numpy() == pytest.approx(targets, abs=1e-5)


def test_biases_give_zero_to_an_index_without_training_ratings() -> None:
    model = Biases(3, 3, reg_user=0.0, reg_movie=0.0)
    model.fit_direct(_t([0, 1]), _t([0, 1]), _t([1.0, -1.0], torch.float32))
    assert float(model.user_bias[2]) == 0.0
    assert float(model.movie_bias[2]) == 0.0
    assert torch.isfinite(model(_t([2]), _t([2]))).all()


def test_stronger_penalty_shrinks_the_biases() -> None:
    users, movies = _t([0, 0, 1, 1]), _t([0, 1, 0, 1])
    targets = _t([1.0, 2.0, -1.0, 0.0], torch.float32)
    weak, strong = (
        Biases(2, 2, reg_user=0.1, reg_movie=0.1),
        Biases(2, 2, reg_user=50, reg_movie=50),
    )
    weak.fit_direct(users, movies, targets)
    strong.fit_direct(users, movies, targets)
    assert strong.user_bias.abs().sum() < weak.user_bias.abs().sum()
    assert strong.movie_bias.abs().sum() < weak.movie_bias.abs().sum()


def test_global_mean_predicts_zero_offset_and_has_no_trainable_rows() -> None:
    model = GlobalMean(4, 5)
    model.fit_direct(_t([0, 3]), _t([1, 4]), _t([1.0, -1.0], torch.float32))
    assert model(_t([0, 1, 3]), _t([0, 2, 4])).tolist() == [0.0, 0.0, 0.0]
    assert model.row_tables() == {}
    assert list(model.parameters()) == []


def test_build_model_reads_the_bias_penalties_from_the_config() -> None:
    config = TrainConfig(model="biases", bias_reg_user=3.0, bias_reg_movie=4.0, bias_passes=2)
    model = build_model(config, 5, 6, seed=0)
    assert isinstance(model, Biases)
    assert (model.reg_user, model.reg_movie, model.passes) == (3.0, 4.0, 2)
    assert isinstance(build_model(config.replace(model="global-mean"), 5, 6, seed=0), GlobalMean)


def test_biases_raise_for_a_negative_penalty() -> None:
    with pytest.raises(ValueError, match="reg_user"):
        Biases(2, 2, reg_user=-1.0)


def test_fit_records_a_baseline_as_one_epoch_with_valid_and_test_columns() -> None:
    ratings = planted_ratings()
    config = TrainConfig(model="biases", valid_fraction=0.1, threads=1)
    result = fit(ratings, config)
    assert len(result.history) == 1
    record = result.history[0]
    for key in ("train_loss", "train_mse", "valid_rmse", "valid_mae", "test_rmse", "test_mae"):
        assert key in record
    assert result.metrics["best_epoch"] == result.metrics["epochs_run"] == 1
    assert record["test_rmse"] == pytest.approx(result.metrics["test"]["rmse"], rel=1e-5)


def test_biases_beat_the_global_mean_on_ratings_with_user_and_movie_effects() -> None:
    rng = np.random.default_rng(3)
    n_users, n_movies, n = 80, 60, 3000
    pairs = rng.choice(n_users * n_movies, size=n, replace=False)
    users, movies = pairs // n_movies, pairs % n_movies
    score = 3 + rng.normal(0, 0.8, n_users)[users] + rng.normal(0, 0.8, n_movies)[movies]
    from resrec.data.ratings import WHOLE_STARS, Ratings

    table = Ratings.from_arrays(
        users, movies, np.clip(np.round(score + rng.normal(0, 0.3, n)), 1, 5), scale=WHOLE_STARS
    )
    config = TrainConfig(threads=1)
    mean_rmse = fit(table, config.replace(model="global-mean")).metrics["test"]["rmse"]
    bias_rmse = fit(table, config.replace(model="biases")).metrics["test"]["rmse"]
    assert bias_rmse < 0.8 * mean_rmse
