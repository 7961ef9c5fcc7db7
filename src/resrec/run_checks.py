"""Checks of a run directory's files before a model is built from them.

A run's files are guarded by ``checksums.json``, but a hand-edited run can
re-hash them. Everything :func:`resrec.run.load_run` uses is therefore
checked for its type, finiteness and range, and every mismatch between
``config.json``, the id maps and the weights is a :class:`ModelFileError`
that names the file and what was expected, in one line.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resrec.config import TrainConfig
from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, ModelFileError, echoed

MAX_ROWS = 2**31 - 1
"""The most users or movies a run may declare (an embedding row index is int32)."""

DAMAGED_HINT = "retrain, or restore the run from a copy"


@dataclass(frozen=True)
class RunInfo:
    """The checked fields of ``config.json`` that loading a run uses."""

    config: TrainConfig
    kind: str
    n_users: int
    n_movies: int
    mu: float
    scale: RatingScale


def damaged(path: Path, problem: str) -> ModelFileError:
    """A :class:`ModelFileError` for ``path``: ``PATH: problem``, with the usual hint."""
    return ModelFileError(f"{path}: {problem}", hint=DAMAGED_HINT)


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; refuses a file that is not UTF-8 JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(path, "is not valid JSON") from None
    except OSError as exc:
        raise damaged(path, f"cannot be read ({exc.strerror or exc})") from None


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; refuses any other JSON value."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise damaged(path, f"expected a JSON object, found {type(value).__name__}")
    return value


def check_info(info: Mapping[str, Any], path: Path) -> RunInfo:
    """Check the fields of ``config.json`` (read from ``path``) that loading uses."""
    config = _check_config(_field(info, "config", dict, path), path)
    model = _field(info, "model", dict, path)
    kind = _field(model, "kind", str, path, "model.kind")
    if kind != config.model:
        raise damaged(path, f"model.kind is {echoed(kind)} but config.model is {config.model!r}")
    n_users = _count(model, "n_users", path)
    n_movies = _count(model, "n_movies", path)
    scale = _check_scale(info.get("scale"), path)
    mu = _check_mu(info.get("mu"), scale, path)
    data = info.get("data", {})
    if not isinstance(data, dict):
        raise damaged(path, f"data must be a JSON object; got {echoed(data)}")
    return RunInfo(config, kind, n_users, n_movies, mu, scale)


def _field(
    info: Mapping[str, Any], name: str, kind: type, path: Path, label: str | None = None
) -> Any:
    value = info.get(name)
    if not isinstance(value, kind):
        expected = "a JSON object" if kind is dict else "text"
        raise damaged(path, f"{label or name} must be {expected}; got {echoed(value)}")
    return value


def _check_config(fields: dict[str, Any], path: Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(fields)
    except ConfigError as exc:
        raise damaged(path, f"config: {exc.message}") from None


def _count(model: Mapping[str, Any], name: str, path: Path) -> int:
    value = model.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ROWS:
        raise damaged(
            path, f"model.{name} must be a whole number from 1 to {MAX_ROWS:,}; got {echoed(value)}"
        )
    return int(value)


def _check_scale(value: object, path: Path) -> RatingScale:
    expected = "scale must be {low, high, step} with finite numbers"
    if not isinstance(value, dict) or set(value) != {"low", "high", "step"}:
        raise damaged(path, f"{expected}; got {echoed(value)}")
    if not all(_is_finite(v) for v in value.values()):
        raise damaged(path, f"{expected}; got {echoed(value)}")
    try:
        return RatingScale(float(value["low"]), float(value["high"]), float(value["step"]))
    except ConfigError as exc:
        raise damaged(path, exc.message) from None


def _check_mu(value: object, scale: RatingScale, path: Path) -> float:
    if not _is_finite(value) or not scale.low <= float(value) <= scale.high:  # type: ignore[arg-type]
        raise damaged(
            path,
            f"mu must be a finite number within the rating scale ({scale.describe()}); "
            f"got {echoed(value)}",
        )
    return float(value)  # type: ignore[arg-type]


def _is_finite(value: object) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- arrays


def read_id_maps(path: Path, info: RunInfo, config_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The raw user and movie ids of ``id_maps.npz``, checked against ``config.json``."""
    users, movies = _read_arrays(path, ("user_id", "movie_id"))
    for name, ids, declared in (("user", users, info.n_users), ("movie", movies, info.n_movies)):
        if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
            raise damaged(path, f"{name}_id must hold distinct ids in ascending order")
        if ids.size != declared:
            raise ModelFileError(
                f"{path.name} and {config_path.name} disagree: {ids.size:,} {name}_ids "
                f"but model.n_{name}s is {declared:,} in {config_path}",
                hint=DAMAGED_HINT,
            )
    return users, movies


def check_train_pairs(path: Path, n_users: int, n_movies: int) -> tuple[np.ndarray, np.ndarray]:
    """User and movie indices of ``train_pairs.npz``, each within the model's tables."""
    users, movies = _read_arrays(path, ("users", "movies"))
    if users.size != movies.size:
        raise damaged(path, f"users has {users.size:,} entries but movies {movies.size:,}")
    for name, index, size in (("users", users, n_users), ("movies", movies, n_movies)):
        if index.size and (index.min() < 0 or index.max() >= size):
            raise damaged(path, f"{name} must be indices from 0 to {size - 1:,}")
    return users, movies


def _read_arrays(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """The named one-dimensional integer arrays of an ``.npz`` file."""
    if not path.is_file():
        raise ModelFileError(f"{path} is missing", hint=DAMAGED_HINT)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[name] for name in names]
    except KeyError as exc:
        raise damaged(path, f"has no array {exc.args[0]!r}; expected {', '.join(names)}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise damaged(path, f"cannot be read as a numpy .npz file ({exc})") from None
    for name, array in zip(names, arrays, strict=True):
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise damaged(
                path, f"{name} must be a one-dimensional integer array; got {array.dtype} "
                f"of shape {list(array.shape)}"
            )  # fmt: skip
    return [a.astype(np.int64, copy=False) for a in arrays]


# --------------------------------------------------------------------------- weights


def check_state(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    weights: Path,
    config_path: Path,
) -> None:
    """Refuse weights whose tensors, shapes or values do not fit the model ``config.json`` builds.

    ``expected`` is the state dict of the model built from ``config.json``.
    """
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        problem = f"lacks {', '.join(missing)}" if missing else f"has extra {', '.join(extra)}"
        raise _mismatch(weights, config_path, f"the weights file {problem}")
    for name, tensor in expected.items():
        found = state[name]
        if tuple(found.shape) != tuple(tensor.shape):
            raise _mismatch(
                weights,
                config_path,
                f"{name} has shape {list(found.shape)} in the weights but "
                f"{list(tensor.shape)} from the config",
            )
        if found.is_floating_point() and not bool(torch.isfinite(found).all()):
            raise damaged(weights, f"{name} holds NaN or infinite values")


def _mismatch(weights: Path, config_path: Path, problem: str) -> ModelFileError:
    return ModelFileError(
        f"{weights.name} does not fit {config_path}: {problem} "
        "(embedding_dim, hidden, n_users and n_movies must match the weights)",
        hint=DAMAGED_HINT,
    )
