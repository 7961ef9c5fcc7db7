"""The fused training step gives the autograd path's results, up to float32 rounding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from resrec.config import TrainConfig, preset
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError, DivergenceError
from resrec.models import build_model
from resrec.train.fused import (
    _distinct_rows,
    _momentum_decay_table,
    predict_offsets,
    unsupported_reason,
)
from resrec.train.optim import LazyMomentumSGD
from resrec.train.trainer import Examples, Trainer
from resrec.workflow import encode_ratings

# Each case trains a few batches both ways. The weights may differ by float32
# rounding grown over the steps; Adagrad's first steps (about lr * sign(g))
# grow it most, so its cases get a wider tolerance.
CASES: dict[str, dict[str, Any]] = {
    "tutorial": {},
    "plain-sgd": {"momentum": 0.0},
    "adam": {"optimizer": "adam", "lr": 0.01},
    "adagrad": {"optimizer": "adagrad", "lr": 0.05},
    "mf": {"model": "mf"},
    "mf-adam": {"model": "mf", "optimizer": "adam", "lr": 0.01},
    "deep": {"model": "deep"},
    "deep-adagrad": {"model": "deep", "optimizer": "adagrad", "lr": 0.05},
    "relu": {"activation": "relu"},
    "tanh": {"activation": "tanh"},
    "identity": {"activation": "identity"},
    "no-hidden-layer": {"hidden": ()},
    "l2": {"l2": 0.01, "l2_dense": 0.01},
    "adam-l2": {"optimizer": "adam", "lr": 0.01, "l2": 0.01, "l2_dense": 0.01},
    # With l2 some gradients cancel to about eps, where Adagrad's step g / (|g| + eps)
    # turns their rounding into visible differences; a larger eps tests the same path.
    "adagrad-l2": {"optimizer": "adagrad", "lr": 0.05, "eps": 1e-4, "l2": 0.01, "l2_dense": 0.01},
    "wide": {"embedding_dim": 7, "hidden": (33,), "optimizer": "adam", "lr": 0.01},
}


def _examples(ratings: Ratings, n: int) -> tuple[Examples, int, int]:
    encoded = encode_ratings(ratings)
    rows = np.arange(n)
    return encoded.examples(rows), len(encoded.user_map), len(encoded.movie_map)


def _trainer(ratings: Ratings, config: TrainConfig, *, fused: bool | None, n: int = 400) -> Trainer:
    train, n_users, n_movies = _examples(ratings, n)
    model = build_model(config, n_users, n_movies, seed=config.seed)
    return Trainer(
        model, config, train, mu=3.5, scale=ratings.scale, eval_sets={"test": train}, fused=fused
    )


def _assert_same_state(a: Trainer, b: Trainer, atol: float) -> None:
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=0, atol=atol, msg=name)
    rows_a, rows_b = a.row_optimizer.state_dict(), b.row_optimizer.state_dict()
    for key, tables in rows_a.items():
        if isinstance(tables, dict):
            for name, value in tables.items():
                torch.testing.assert_close(rows_b[key][name], value, rtol=0, atol=atol)
    if a.dense_optimizer is not None:
        assert b.dense_optimizer is not None
        for param_a, param_b in zip(
            a.model.dense_parameters(), b.model.dense_parameters(), strict=True
        ):
            state_a = a.dense_optimizer.state[param_a]
            state_b = b.dense_optimizer.state[param_b]
            assert set(state_a) == set(state_b)
            for key, value in state_a.items():
                torch.testing.assert_close(state_b[key], value, rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_epoch_matches_the_autograd_epoch(small_ratings: Ratings, case: str) -> None:
    # 400 ratings in batches of 64: six full batches and a short one.
    config = preset("tutorial").replace(batch_size=64, **CASES[case])
    reference = _trainer(small_ratings, config, fused=False)
    fused = _trainer(small_ratings, config, fused=True)
    assert reference.fused is None and fused.fused is not None

    expected, got = reference.run_epoch(), fused.run_epoch()
    assert got["epoch"] == expected["epoch"] == 1
    assert fused.step == reference.step == 7
    for key in ("train_loss", "train_mse", "test_mse", "test_rmse", "test_mae"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    atol = 1e-4 if config.optimizer == "adagrad" else 2e-6
    _assert_same_state(reference, fused, atol=atol)


def test_several_epochs_and_a_learning_rate_schedule_stay_together(
    small_ratings: Ratings,
) -> None:
    config = preset("tutorial").replace(batch_size=100, epochs=3, schedule="step", schedule_step=1)
    reference = _trainer(small_ratings, config, fused=False, n=1200)
    fused = _trainer(small_ratings, config, fused=True, n=1200)
    history_a, history_b = reference.fit(), fused.fit()
    for row_a, row_b in zip(history_a, history_b, strict=True):
        assert row_b["lr"] == row_a["lr"]
        assert row_b["train_mse"] == pytest.approx(row_a["train_mse"], rel=1e-4)
        assert row_b["test_rmse"] == pytest.approx(row_a["test_rmse"], rel=1e-4)
    _assert_same_state(reference, fused, atol=2e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_a_fused_epoch_can_be_continued_by_the_autograd_path(
    small_ratings: Ratings, optimizer: str
) -> None:
    # The fused pass leaves complete optimiser state behind, as checkpoints need.
    config = preset("tutorial").replace(batch_size=64, optimizer=optimizer, lr=0.02)
    reference = _trainer(small_ratings, config, fused=False)
    mixed = _trainer(small_ratings, config, fused=True)
    reference.run_epoch()
    mixed.run_epoch()
    mixed.fused = None
    reference.run_epoch()
    mixed.run_epoch()
    _assert_same_state(reference, mixed, atol=1e-4 if optimizer == "adagrad" else 5e-6)


def test_momentum_decay_table_has_the_lazy_optimizer_values() -> None:
    momentum = 0.9
    table = _momentum_decay_table(momentum)
    optimizer = LazyMomentumSGD({"t": torch.zeros(1, 1)}, lr=0.1, momentum=momentum)
    idle = torch.arange(table.shape[0] + 50)
    power, geometric = optimizer._decay(idle)
    clamped = idle.clamp(max=table.shape[0] - 1)
    assert torch.equal(table[clamped, 0], momentum * power[:, 0])
    assert torch.equal(table[clamped, 1], geometric[:, 0])
    assert table[-1, 0] == 0 and table[-1, 1] == np.float32(momentum / (1 - momentum))


def test_distinct_rows_lists_each_row_once_and_maps_every_occurrence() -> None:
    packed = np.array([[5, 3, 5, 9, 3, 3], [1, 2, 3, 4, 5, 6]])
    distinct, inverse = _distinct_rows(packed, spare=99)
    assert distinct.tolist() == [[3, 5, 9, 99, 99, 99], [1, 2, 3, 4, 5, 6]]
    for line in range(2):
        assert distinct[line][inverse[line]].tolist() == packed[line].tolist()


def test_distinct_rows_on_random_batches() -> None:
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 40, size=(50, 64))
    distinct, inverse = _distinct_rows(packed, spare=40)
    for line in range(50):
        rows = distinct[line]
        used = int((rows < 40).sum())
        assert used == len(np.unique(packed[line]))
        assert torch.all(rows[:used].diff() > 0) and torch.all(rows[used:] == 40)
        assert rows[inverse[line]].tolist() == packed[line].tolist()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"dropout": 0.2}, "dropout"),
        ({"batch_norm": True}, "batch norm"),
        ({"hidden": (16, 8)}, "more than one hidden layer"),
        ({"activation": "gelu"}, "GELU"),
    ],
)
def test_unsupported_models_train_on_the_autograd_path(
    small_ratings: Ratings, changes: dict[str, Any], reason: str
) -> None:
    config = preset("tutorial").replace(batch_size=64, lr=0.01, **changes)
    trainer = _trainer(small_ratings, config, fused=None)
    assert trainer.fused is None
    found = unsupported_reason(trainer.model, trainer.row_optimizer, trainer.dense_optimizer)
    assert found is not None and reason in found
    assert np.isfinite(trainer.run_epoch()["train_loss"])
    with pytest.raises(ConfigError, match="fused training step"):
        _trainer(small_ratings, config, fused=True)


def test_a_synchronizer_sends_training_down_the_autograd_path(small_ratings: Ratings) -> None:
    class Local:
        def grads(self, index: Any, grads: Any) -> Any:
            return index, grads

        def total(self, value: torch.Tensor) -> torch.Tensor:
            return value

    train, n_users, n_movies = _examples(small_ratings, 200)
    config = preset("tutorial").replace(batch_size=64)
    model = build_model(config, n_users, n_movies, seed=0)
    trainer = Trainer(model, config, train, mu=3.5, scale=small_ratings.scale, sync=Local())
    assert trainer.fused is None


@pytest.mark.parametrize("kind", ["residual", "mf", "deep", "biases"])
def test_predict_offsets_equals_the_model_forward(kind: str) -> None:
    config = preset("tutorial").replace(model=kind)
    model = build_model(config, 30, 20, seed=4)
    users = torch.randint(0, 30, (3000,), generator=torch.Generator().manual_seed(1))
    movies = torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(users, movies)
    got = predict_offsets(model, users, movies, block_rows=256)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_divergence_is_reported_by_the_fused_path(small_ratings: Ratings) -> None:
    config = preset("tutorial").replace(batch_size=64, lr=1e6, momentum=0.99)
    trainer = _trainer(small_ratings, config, fused=True)
    with pytest.raises(DivergenceError, match=r"epoch 1, step \d+"):
        trainer.run_epoch()
