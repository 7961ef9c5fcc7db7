"""Rating metrics (MSE, RMSE, MAE) and ranking metrics on a test split.

Rating metrics refuse to be silently wrong: a NaN or infinite prediction, or
arrays of different lengths, raise instead of giving a number.
"""

from __future__ import annotations

import math

import numpy as np

from resrec.errors import ResrecError


def _errors(predictions: np.ndarray, ratings: np.ndarray) -> np.ndarray:
    pred = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(ratings, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {true.shape[0]} ratings")
    if pred.size == 0:
        raise ValueError("no ratings to score")
    if not np.all(np.isfinite(pred)):
        bad = int(np.flatnonzero(~np.isfinite(pred))[0])
        raise ResrecError(f"prediction {bad} is {pred[bad]}: refusing to score non-finite values")
    return pred - true


def mse(predictions: np.ndarray, ratings: np.ndarray) -> float:
    """Mean squared error."""
    err = _errors(predictions, ratings)
    return float(np.mean(err * err))


def rmse(predictions: np.ndarray, ratings: np.ndarray) -> float:
    """Root mean squared error."""
    return math.sqrt(mse(predictions, ratings))


def mae(predictions: np.ndarray, ratings: np.ndarray) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(_errors(predictions, ratings))))


def rating_metrics(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """``{"mse", "rmse", "mae", "n"}`` of the given predictions."""
    value = mse(predictions, ratings)
    return {
        "mse": value,
        "rmse": math.sqrt(value),
        "mae": mae(predictions, ratings),
        "n": int(np.asarray(ratings).size),
    }
