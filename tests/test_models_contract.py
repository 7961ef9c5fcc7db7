"""One behaviour suite, run over every model kind.

Each model kind must: return one float32 prediction per (user, movie) pair;
split its prediction into components that sum to it; raise ``IndexError`` for
a user or movie index outside its range (raw ids unknown to the id map raise
``UnknownIdError`` one level up, in ``TrainResult.predict``); give identical
predictions after a save and load of its run; and give identical results for
the same seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resrec.config import TrainConfig
from resrec.errors import UnknownIdError
from resrec.models import RatingModel, build_model
from resrec.run import load_run, save_run
from resrec.workflow import TrainResult, fit, predict_indices
from tests.conftest import planted_ratings

# Model kinds, and variants of one kind named "kind+variant".
KINDS = ["global-mean", "biases", "mf", "deep", "residual", "residual+movie_ratings"]
VARIANTS = {"movie_ratings": {"side_input": "movie_ratings", "side_units": 6, "side_epochs": 4}}

# Small and quick, with every regularising option switched on where it applies.
CONFIG = TrainConfig(
    embedding_dim=4,
    hidden=(8,),
    dropout=0.2,
    batch_norm=True,
    optimizer="adam",
    lr=0.01,
    l2=0.01,
    batch_size=64,
    epochs=3,
    early_stopping=2,
    valid_fraction=0.1,
    threads=1,
)


def _config(kind: str, **changes: object) -> TrainConfig:
    model, _, variant = kind.partition("+")
    return CONFIG.replace(model=model, **VARIANTS.get(variant, {}), **changes)


@pytest.fixture(scope="module")
def trained() -> dict[str, TrainResult]:
    ratings = planted_ratings(n_users=30, n_movies=20, n=400)
    return {kind: fit(ratings, _config(kind)) for kind in KINDS}


def _pairs(model: RatingModel, n: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, model.n_users, (n,), generator=gen)
    movies = torch.randint(0, model.n_movies, (n,), generator=gen)
    return users, movies


@pytest.mark.parametrize("kind", KINDS)
def test_forward_returns_one_float32_per_pair(kind: str, trained: dict[str, TrainResult]) -> None:
    model = trained[kind].model.eval()
    users, movies = _pairs(model)
    with torch.no_grad():
        out = model(users, movies)
        empty = model(users[:0], movies[:0])
    assert out.shape == (25,)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert empty.shape == (0,)


@pytest.mark.parametrize("kind", KINDS)
def test_components_sum_to_forward(kind: str, trained: dict[str, TrainResult]) -> None:
    model = trained[kind].model.eval()
    users, movies = _pairs(model)
    with torch.no_grad():
        parts = model.components(users, movies)  # type: ignore[operator]
        total = model(users, movies)
    assert set(parts) == {"dot", "user_bias", "movie_bias", "side"}
    assert torch.allclose(sum(parts.values()), total, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", ["user", "movie"])
def test_an_index_out_of_range_raises_index_error(
    kind: str, side: str, trained: dict[str, TrainResult]
) -> None:
    model = trained[kind].model.eval()
    users, movies = _pairs(model, 3)
    bad = torch.tensor([model.n_users if side == "user" else model.n_movies])
    args = (bad, movies[:1]) if side == "user" else (users[:1], bad)
    with torch.no_grad(), pytest.raises(IndexError):
        model(*args)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_raw_id_raises_unknown_id_error(
    kind: str, trained: dict[str, TrainResult]
) -> None:
    result = trained[kind]
    known_user, known_movie = result.user_map.raw_ids[0], result.movie_map.raw_ids[0]
    with pytest.raises(UnknownIdError, match="unknown user_id 99999"):
        result.predict(np.array([99999]), np.array([known_movie]))
    with pytest.raises(UnknownIdError, match="unknown movie_id 99999"):
        result.predict(np.array([known_user]), np.array([99999]))


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_gives_identical_predictions(
    kind: str, trained: dict[str, TrainResult], tmp_path: Path
) -> None:
    result = trained[kind]
    path = save_run(result, tmp_path / kind)
    loaded = load_run(path)
    users = np.arange(len(result.user_map)).repeat(len(result.movie_map))
    movies = np.tile(np.arange(len(result.movie_map)), len(result.user_map))
    before = predict_indices(result.model, result.mu, result.scale, users, movies)
    after = predict_indices(loaded.model, loaded.mu, loaded.scale, users, movies)
    assert np.array_equal(before, after)
    assert loaded.config == result.config
    assert (path / "history.csv").is_file()
    assert (path / "metrics.json").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_gives_identical_results(kind: str) -> None:
    ratings = planted_ratings(n_users=30, n_movies=20, n=400)
    first = fit(ratings, _config(kind, seed=7))
    second = fit(ratings, _config(kind, seed=7))
    drop = {"train_seconds", "elapsed_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in first.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in second.history
    ]
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", KINDS)
def test_build_model_knows_every_kind(kind: str) -> None:
    model = build_model(_config(kind), 5, 7, seed=0)
    assert isinstance(model, RatingModel)
    assert (model.n_users, model.n_movies) == (5, 7)
