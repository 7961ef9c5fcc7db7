"""Implicit feedback (SVD++-style user vectors) as an option of the factor models.

With ``implicit_feedback`` the user vector is p_u + |N(u)|^-1/2 * sum of y_j
over the movies j that u rated in the training split. These tests check the
term against a hand computation, that training and the saved run agree, and
that inference serves the model through its full user vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resrec.config import TrainConfig, preset
from resrec.errors import ConfigError, ModelFileError
from resrec.inference import Recommender
from resrec.models import ResidualNet, build_model
from resrec.run import load_run, save_run
from resrec.train.fused import unsupported_reason
from resrec.train.trainer import Trainer
from resrec.workflow import TrainResult, fit, predict_indices
from tests.conftest import planted_ratings

CONFIG = TrainConfig(
    embedding_dim=4,
    hidden=(8,),
    implicit_feedback=True,
    l2_implicit=0.003,
    optimizer="adam",
    lr=0.01,
    l2=0.01,
    batch_size=64,
    epochs=3,
    valid_fraction=0.1,
    early_stopping=2,
    threads=1,
)


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    return fit(planted_ratings(n_users=30, n_movies=20, n=400), CONFIG)


def _model_with_known_y() -> ResidualNet:
    model = build_model(CONFIG, 5, 7, seed=0)
    assert isinstance(model, ResidualNet)
    model.set_rated(np.array([0, 0, 1, 3, 3, 3]), np.array([1, 2, 0, 4, 5, 6]))
    with torch.no_grad():
        model.implicit_factors.weight.copy_(torch.arange(28.0).reshape(7, 4))
    return model


def test_implicit_term_is_the_scaled_sum_of_rated_movies() -> None:
    model = _model_with_known_y()
    y = model.implicit_factors.weight.detach()
    users = torch.tensor([3, 0, 2, 3, 1])
    got = model.derived_rows(users, torch.zeros(5, dtype=torch.int64))["user_implicit"]
    expected = torch.stack(
        [
            (y[4] + y[5] + y[6]) / 3**0.5,
            (y[1] + y[2]) / 2**0.5,
            torch.zeros(4),  # user 2 rated nothing in training
            (y[4] + y[5] + y[6]) / 3**0.5,
            y[0],
        ]
    )
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, expected)


def test_prediction_uses_p_plus_implicit_in_both_branches() -> None:
    model = _model_with_known_y()
    users, movies = torch.tensor([3, 0, 2]), torch.tensor([1, 4, 6])
    p = model.user_factors(users) + model.derived_rows(users, movies)["user_implicit"]
    q = model.movie_factors(movies)
    main = (p * q).sum(-1) + model.user_bias(users)[:, 0] + model.movie_bias(movies)[:, 0]
    side = model.side(torch.cat([p, q], -1))
    with torch.no_grad():
        torch.testing.assert_close(model(users, movies), main + side)
        parts = model.components(users, movies)
        torch.testing.assert_close(sum(parts.values()), model(users, movies))
        torch.testing.assert_close(model.user_table()[users], p)


def test_without_the_option_nothing_changes() -> None:
    plain = build_model(CONFIG.replace(implicit_feedback=False), 5, 7, seed=0)
    implicit = build_model(CONFIG, 5, 7, seed=0)
    users, movies = torch.tensor([0, 4]), torch.tensor([6, 2])
    assert not hasattr(plain, "implicit_factors")
    # y starts at zero, so the initial predictions are those of the plain model.
    with torch.no_grad():
        torch.testing.assert_close(plain(users, movies), implicit(users, movies))
    extra = 7 * 4
    count = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in implicit.parameters()) == count + extra


def test_training_moves_y_and_only_trained_movies(trained: TrainResult) -> None:
    y = trained.model.implicit_factors.weight.detach()  # type: ignore[union-attr]
    rated = np.unique(trained.train_movies)
    assert float(y[torch.from_numpy(rated)].abs().sum()) > 0
    unrated = np.setdiff1d(np.arange(y.shape[0]), rated)
    assert float(y[torch.from_numpy(unrated)].abs().sum()) == 0


def test_save_then_load_gives_identical_predictions(trained: TrainResult, tmp_path: Path) -> None:
    path = save_run(trained, tmp_path / "run")
    loaded = load_run(path)
    n_users, n_movies = len(trained.user_map), len(trained.movie_map)
    users = np.arange(n_users).repeat(n_movies)
    movies = np.tile(np.arange(n_movies), n_users)
    before = predict_indices(trained.model, trained.mu, trained.scale, users, movies)
    after = predict_indices(loaded.model, loaded.mu, loaded.scale, users, movies)
    assert np.array_equal(before, after)
    assert json.loads((path / "config.json").read_text())["config"]["implicit_feedback"]


def test_loading_without_the_training_pairs_is_refused(
    trained: TrainResult, tmp_path: Path
) -> None:
    path = save_run(trained, tmp_path / "run")
    (path / "train_pairs.npz").unlink()
    checksums = json.loads((path / "checksums.json").read_text())
    del checksums["train_pairs.npz"]
    (path / "checksums.json").write_text(json.dumps(checksums))
    with pytest.raises(ModelFileError, match="implicit feedback"):
        load_run(path)


def test_the_same_seed_gives_identical_results() -> None:
    ratings = planted_ratings(n_users=30, n_movies=20, n=400)
    first = fit(ratings, CONFIG.replace(seed=3))
    second = fit(ratings, CONFIG.replace(seed=3))
    assert [r["valid_rmse"] for r in first.history] == [r["valid_rmse"] for r in second.history]
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_recommender_serves_the_trained_predictions(trained: TrainResult) -> None:
    rec = Recommender(
        trained.model,
        trained.user_map,
        trained.movie_map,
        trained.mu,
        trained.scale,
        trained.train_users,
        trained.train_movies,
    )
    user_id = trained.user_map.raw_ids[int(trained.train_users[0])]
    movie_id = trained.movie_map.raw_ids[3]
    expected = trained.predict(np.array([user_id]), np.array([movie_id]))[0]
    explanation = rec.explain(user_id, movie_id)
    assert explanation.prediction == pytest.approx(float(expected), abs=1e-5)


def test_the_fused_step_refuses_implicit_feedback(trained: TrainResult) -> None:
    trainer = trained.trainer
    assert isinstance(trainer, Trainer)
    reason = unsupported_reason(trainer.model, trainer.row_optimizer, trainer.dense_optimizer)
    assert reason == "the model has implicit feedback"
    assert trainer.fused is None


def test_l2_implicit_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="l2_implicit"):
        CONFIG.replace(l2_implicit=-0.1)


def test_only_the_accurate_preset_turns_it_on() -> None:
    assert preset("accurate").implicit_feedback
    assert not preset("tutorial").implicit_feedback
    assert not preset("fast").implicit_feedback
    assert not hasattr(build_model(preset("tutorial"), 5, 7, seed=0), "implicit_factors")
