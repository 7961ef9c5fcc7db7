from __future__ import annotations

import math

import pytest
import torch

from resrec.config import TrainConfig, preset
from resrec.models import DeepNet, MFNet, ResidualNet, build_model


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([0, 3, 7, 3]), torch.tensor([1, 1, 4, 0])


def test_residual_shapes_and_parameter_count() -> None:
    model = build_model(preset("tutorial"), 10, 5, seed=0)
    assert isinstance(model, ResidualNet)
    users, movies = _pairs()
    assert model(users, movies).shape == (4,)
    # K=10: 2 factor tables, 2 bias tables, Dense(20->400), Dense(400->1)
    expected = 10 * 10 + 5 * 10 + 10 + 5 + (20 * 400 + 400) + (400 + 1)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_prediction_is_main_plus_side() -> None:
    model = build_model(preset("tutorial"), 10, 5, seed=1)
    users, movies = _pairs()
    p, q = model.user_factors(users), model.movie_factors(movies)
    main = (p * q).sum(-1) + model.user_bias(users)[:, 0] + model.movie_bias(movies)[:, 0]
    side = model.side(torch.cat([p, q], -1))
    torch.testing.assert_close(model(users, movies), main + side)
    parts = model.components(users, movies)
    torch.testing.assert_close(sum(parts.values()), model(users, movies))


def test_side_branch_is_dense_elu_dense() -> None:
    model = build_model(preset("tutorial"), 10, 5, seed=2)
    first, act, last = model.side.layers
    assert (first.in_features, first.out_features) == (20, 400)
    assert isinstance(act, torch.nn.ELU)
    assert (last.in_features, last.out_features) == (400, 1)


def test_keras_initialisation() -> None:
    model = build_model(preset("tutorial"), 1000, 500, seed=0)
    assert model.user_factors.weight.abs().max() <= 0.05
    assert model.user_factors.weight.abs().max() > 0.045
    limit = math.sqrt(6 / (20 + 400))
    assert model.side.layers[0].weight.abs().max() <= limit
    assert torch.all(model.side.layers[0].bias == 0)


def test_siblings() -> None:
    users, movies = _pairs()
    mf = build_model(TrainConfig(model="mf"), 10, 5, seed=0)
    deep = build_model(TrainConfig(model="deep"), 10, 5, seed=0)
    assert isinstance(mf, MFNet) and not hasattr(mf, "side")
    assert isinstance(deep, DeepNet) and not hasattr(deep, "user_bias")
    assert isinstance(deep.side.layers[1], torch.nn.ReLU)
    torch.testing.assert_close(
        mf(users, movies),
        (mf.user_factors(users) * mf.movie_factors(movies)).sum(-1)
        + mf.user_bias(users)[:, 0]
        + mf.movie_bias(movies)[:, 0],
    )


def test_same_seed_same_weights() -> None:
    a = build_model(preset("tutorial"), 10, 5, seed=3).state_dict()
    b = build_model(preset("tutorial"), 10, 5, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("field,value", [("embedding_dim", 0), ("dropout", 1.0), ("lr", 0.0)])
def test_config_rejects_bad_values(field: str, value: float) -> None:
    from resrec.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        TrainConfig().replace(**{field: value})
