from __future__ import annotations

import math

import numpy as np
import pytest

from resrec.errors import ResrecError
from resrec.metrics import mae, mse, rating_metrics, rmse


def test_metrics_by_hand() -> None:
    # errors: +1, -2, 0 -> squared 1, 4, 0 -> MSE 5/3; absolute 1, 2, 0 -> MAE 1
    pred, true = np.array([4.0, 1.0, 3.0]), np.array([3.0, 3.0, 3.0])
    assert mse(pred, true) == pytest.approx(5 / 3)
    assert rmse(pred, true) == pytest.approx(math.sqrt(5 / 3))
    assert mae(pred, true) == pytest.approx(1.0)
    assert rating_metrics(pred, true)["n"] == 3


def test_metrics_refuse_nan_predictions() -> None:
    with pytest.raises(ResrecError, match="prediction 1 is nan"):
        rmse(np.array([3.0, np.nan]), np.array([3.0, 3.0]))


def test_metrics_refuse_length_mismatch_and_empty() -> None:
    with pytest.raises(ValueError, match="2 predictions for 3 ratings"):
        mse(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="no ratings"):
        mse(np.zeros(0), np.zeros(0))
