from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from resrec.config import TrainConfig, preset
from resrec.data.ratings import WHOLE_STARS, Ratings
from resrec.errors import ConfigError, DivergenceError
from resrec.models import build_model
from resrec.train.trainer import Examples, Trainer
from resrec.workflow import fit


def _quick(**changes: object) -> TrainConfig:
    return preset("tutorial").replace(**{"epochs": 3, "batch_size": 64, **changes})


def test_same_seed_gives_identical_history(small_ratings: Ratings) -> None:
    first = fit(small_ratings, _quick(seed=5)).history
    second = fit(small_ratings, _quick(seed=5)).history
    drop = ("train_seconds", "elapsed_seconds")
    strip = [{k: v for k, v in row.items() if k not in drop} for row in first]
    assert strip == [{k: v for k, v in row.items() if k not in drop} for row in second]
    third = fit(small_ratings, _quick(seed=6)).history
    assert third[-1]["test_mse"] != first[-1]["test_mse"]


def test_history_records_the_tutorial_columns(small_ratings: Ratings) -> None:
    history = fit(small_ratings, _quick()).history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for key in ("train_loss", "train_mse", "test_loss", "test_mse", "elapsed_seconds"):
        assert all(math.isfinite(row[key]) for row in history), key


def test_training_beats_the_global_mean(small_ratings: Ratings) -> None:
    result = fit(small_ratings, preset("fast").replace(batch_size=128, epochs=30, lr=0.01))
    test = result.metrics["test"]
    split_mu = result.mu
    # RMSE of always predicting mu on the same test ratings:
    test_rows = result.metrics["split"]["sizes"]["test"]
    assert test_rows == 300
    baseline = float(np.sqrt(np.mean((small_ratings.rating - split_mu) ** 2)))
    assert test["rmse"] < 0.85 * baseline


def test_predictions_are_clipped_to_the_scale(small_ratings: Ratings) -> None:
    result = fit(small_ratings, _quick())
    pred = result.predict(small_ratings.user_id, small_ratings.movie_id)
    assert pred.min() >= 1.0 and pred.max() <= 5.0


def test_mu_is_the_mean_training_rating(small_ratings: Ratings) -> None:
    from resrec.split import split_ratings

    result = fit(small_ratings, _quick())
    split = split_ratings(len(small_ratings), test_fraction=0.2, seed=0)
    assert result.mu == pytest.approx(float(small_ratings.rating[split.train].mean()))


def test_divergence_names_epoch_and_step(small_ratings: Ratings) -> None:
    with pytest.raises(DivergenceError, match=r"epoch 1, step \d+") as info:
        fit(small_ratings, _quick(lr=1e6, momentum=0.99))
    assert "learning rate" in str(info.value)


def test_early_stopping_restores_the_best_validation_epoch(small_ratings: Ratings) -> None:
    config = _quick(epochs=40, lr=0.05, valid_fraction=0.1, early_stopping=2)
    result = fit(small_ratings, config)
    best = min(result.history, key=lambda row: row["valid_rmse"])
    assert result.metrics["best_epoch"] == best["epoch"]
    assert result.metrics["epochs_run"] <= 40
    assert result.metrics["valid"]["rmse"] == pytest.approx(best["valid_rmse"], rel=1e-6)


def _one_full_batch_step(power: float, l2: float) -> torch.Tensor:
    """User factors after one plain-SGD step on a single batch of every rating."""
    users = np.array([0, 0, 0, 0, 1, 2, 2])
    movies = np.array([0, 1, 2, 3, 0, 1, 3])
    train = Examples.from_numpy(users, movies, np.full(7, 4.0))
    config = TrainConfig(
        model="mf",
        embedding_dim=3,
        optimizer="sgd",
        momentum=0.0,
        lr=0.1,
        l2=l2,
        l2_count_power=power,
        batch_size=7,
        epochs=1,
        threads=1,
    )
    model = build_model(config, 3, 4, seed=0)
    trainer = Trainer(model, config, train, mu=3.5, scale=WHOLE_STARS, fused=False)
    trainer.run_epoch()
    return model.user_factors.weight.detach().clone()


@pytest.mark.parametrize("power", [1.0, 0.5, 0.0])
def test_l2_count_power_scales_each_row_by_its_rating_count(power: float) -> None:
    model = build_model(TrainConfig(model="mf", embedding_dim=3), 3, 4, seed=0)
    start = model.user_factors.weight.detach()
    plain = _one_full_batch_step(power, 0.0)
    penalised = _one_full_batch_step(power, 0.3)

    # d/dp_u of l2 * (sum over u's n_u occurrences of n_u^(power-1) |p_u|^2) / 7
    counts = torch.tensor([4.0, 1.0, 2.0])
    expected = -0.1 * 2 * 0.3 * counts[:, None] ** power * start / 7
    torch.testing.assert_close(penalised - plain, expected)


def test_l2_count_power_must_lie_in_zero_to_one() -> None:
    with pytest.raises(ConfigError, match="l2_count_power"):
        TrainConfig(l2_count_power=1.5)


def test_the_fused_step_is_left_out_when_l2_is_scaled_by_counts(small_ratings: Ratings) -> None:
    config = preset("fast").replace(epochs=1, l2_count_power=0.5)
    scaled = fit(small_ratings, config).trainer
    plain = fit(small_ratings, config.replace(l2_count_power=1.0)).trainer
    assert scaled is not None and scaled.fused is None
    assert plain is not None and plain.fused is not None


def _order(users: list[int], **changes: object) -> tuple[Tensor, Tensor]:
    config = _quick(**changes)
    n_users = max(users) + 1
    u = torch.tensor(users, dtype=torch.int64)
    examples = Examples(u, torch.zeros_like(u), torch.full((len(users),), 3.0))
    model = build_model(config, n_users, 1, seed=0)
    trainer = Trainer(model, config, examples, mu=3.0, scale=WHOLE_STARS)
    return trainer.epoch_order(), u


def test_plain_order_is_the_seeded_shuffle() -> None:
    order, _ = _order([0, 1, 1, 2, 2, 2, 3])
    assert torch.equal(order, torch.randperm(7, generator=torch.Generator().manual_seed(0)))


def test_user_chunks_visit_every_rating_once_in_runs_of_one_user() -> None:
    users = [u for u in range(6) for _ in range(1 + 4 * u)]  # 1, 5, 9, ... ratings
    order, u = _order(users, user_chunk=4)
    assert sorted(order.tolist()) == list(range(len(users)))
    runs = torch.unique_consecutive(u[order], return_counts=True)[1]
    # Each chunk is contiguous, so there are at most as many runs as chunks
    # (fewer where two chunks of one user fall side by side).
    chunks_per_user = [math.ceil((1 + 4 * k) / 4) for k in range(6)]
    assert len(runs) <= sum(chunks_per_user)
    assert len(runs) >= 6
    # Another epoch draws another order.
    second = _order(users, user_chunk=4, seed=1)[0]
    assert not torch.equal(order, second)
