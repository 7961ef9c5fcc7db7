"""Loading a run for inference: the model check, the widened factor tables and movie metadata.

:func:`check_inference_model` refuses models without embeddings and
:func:`check_weight_sizes` those with absurd values;
:func:`_factor_tables` copies a model's tables to float32, with a movie_ratings
side branch's tables as extra factor columns; :func:`_load_movies` finds the
movies file of a run and :func:`warn_if_foreign_movies` checks that it fits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from resrec.errors import DataError, ModelFileError, counted
from resrec.ids import IdMap

if TYPE_CHECKING:
    from resrec.data.movies import Movies
    from resrec.models.base import RatingModel
    from resrec.run import Run

log = logging.getLogger(__name__)

MIN_MOVIE_COVERAGE = 0.9  # share of trained movies a movies file must list to look right

# --------------------------------------------------------------------------- the model


_KIND_OF = {"Biases": "biases", "GlobalMean": "global-mean"}


def check_inference_model(model: RatingModel, name: str) -> None:
    """Refuse a model without embeddings (``biases``, ``global-mean``), naming the run."""
    if hasattr(model, "user_factors") and hasattr(model, "movie_factors"):
        return
    kind = _KIND_OF.get(type(model).__name__, type(model).__name__)
    raise ModelFileError(
        f"{name} holds a {kind} model, which has no embeddings; predict, recommend, score, "
        "explain, similar and serve need a residual, mf or deep run: train one with "
        "'resrec train --model residual' (or mf, deep)"
    )


MAX_WEIGHT = 1e4
"""The largest magnitude a served model's tensor may hold.

Trained embeddings, biases and layer weights stay near 1 (a few units at
most); anything beyond this is a damaged or edited file. Under it, every
term of a prediction (a dot product of at most tens of thousands of factors,
a hidden layer, an output layer) stays far inside float32's range, so no
prediction or cosine can overflow to infinity or lose all precision.
"""


def check_weight_sizes(model: RatingModel, source: str) -> None:
    """Refuse a model holding a NaN, infinite or absurdly large value, naming the tensor.

    ``source`` names the weights file (or ``<memory>``); the limit is :data:`MAX_WEIGHT`.
    """
    from resrec.run_checks import DAMAGED_HINT

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            largest = float(tensor.detach().abs().max())
            if math.isnan(largest) or math.isinf(largest):
                problem = "NaN or infinite values"
            elif largest > MAX_WEIGHT:
                problem = (
                    f"a value of magnitude {largest:.3g}, over the limit of {MAX_WEIGHT:,.0f} "
                    "(trained weights stay near 1), so its predictions would be meaningless"
                )
            else:
                continue
            raise ModelFileError(f"{source}: tensor {name} holds {problem}", hint=DAMAGED_HINT)


def _factor_tables(
    model: RatingModel, has_biases: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """float32 copies ``(P, BU, Q, BM, main_dim)`` of the model's user and movie tables.

    ``P`` and ``Q`` hold the embeddings in their first ``main_dim`` columns;
    the biases are zeros when the model has none (``has_biases`` false).
    """
    with torch.no_grad():
        # The user vectors the model uses (with implicit feedback, p_u plus its term).
        user_factors: Tensor = model.user_table()  # type: ignore[operator]
        movie_factors: Tensor = model.movie_factors.weight  # type: ignore[union-attr,assignment]
        P = user_factors.detach().float().clone().contiguous()
        Q = movie_factors.detach().float().clone().contiguous()
        n_users, n_movies = P.shape[0], Q.shape[0]
        BU = torch.zeros(n_users)
        BM = torch.zeros(n_movies)
        if has_biases:
            BU = model.user_bias.weight.detach().float().reshape(-1).clone()  # type: ignore[union-attr,operator]
            BM = model.movie_bias.weight.detach().float().reshape(-1).clone()  # type: ignore[union-attr,operator]
        # A side branch that reads movie ratings is a dot product of its own tables
        # (MovieRatingsSide.tables): served as columns after the first main_dim ones.
        main_dim = P.shape[1]
        ratings_side = getattr(model, "ratings_side", None)
        if ratings_side is not None:
            side_users, side_movies = ratings_side.tables()
            P = torch.cat([P, side_users], 1).contiguous()
            Q = torch.cat([Q, side_movies], 1).contiguous()
    return P, BU, Q, BM, main_dim


def _noise_variance(metrics: Mapping[str, Any]) -> float | None:
    for split in ("valid", "test"):
        value = metrics.get(split, {}).get("mse") if isinstance(metrics.get(split), dict) else None
        if value is not None and math.isfinite(value) and value > 0:
            return float(value)
    return None


# --------------------------------------------------------------------------- movie metadata


def _metadata_rows(movie_map: IdMap, movies: Movies | None) -> np.ndarray:
    """Row of each movie index in the metadata table (-1 where it is not listed)."""
    rows = np.full(len(movie_map), -1, dtype=np.int64)
    if movies is not None and len(movies):
        ids = np.asarray(movies.movie_id, dtype=np.int64)
        index = movie_map.index_of(ids, missing="negative")
        listed = index >= 0
        rows[index[listed]] = np.flatnonzero(listed)
    rows.flags.writeable = False
    return rows


def warn_if_foreign_movies(movies: Movies, layout: str, trained_ids: np.ndarray) -> None:
    """Log a warning when ``movies`` looks like another release's file than the ratings'.

    It does when its layout is not the one that ships with ``layout`` (the
    ratings layout of the run), or when it lists fewer than
    :data:`MIN_MOVIE_COVERAGE` of ``trained_ids``: its titles would then be
    put on the wrong movies.
    """
    from resrec.data.movies import MOVIES_FAMILY_OF_LAYOUT

    reasons = []
    expected = MOVIES_FAMILY_OF_LAYOUT.get(layout)
    if expected and movies.family and movies.family != expected:
        reasons.append(
            f"a {movies.family} file, but the run's {layout} ratings come with {expected}"
        )
    listed = int(np.isin(trained_ids, movies.movie_id).sum())
    coverage = listed / trained_ids.size if trained_ids.size else 1.0
    if coverage < MIN_MOVIE_COVERAGE:
        reasons.append(f"fewer than {MIN_MOVIE_COVERAGE:.0%} of the trained movies listed")
    if reasons:
        log.warning(
            "movies file %s may belong to another MovieLens release (%s): it lists %s of the "
            "model's %s (%.1f%%); titles and genres may be wrong",
            movies.source, "; ".join(reasons), f"{listed:,}",
            counted(trained_ids.size, "trained movie"),
            100 * coverage,
        )  # fmt: skip


def _load_movies(run: Run, movies_path: str | Path | None) -> Movies | None:
    from resrec.data.movies import find_movies_file, read_movies

    if movies_path is not None:
        return read_movies(movies_path)
    source = str(run.info.get("data", {}).get("source") or "")
    if not source or source.startswith("<"):
        log.info("the run's ratings came from memory; no movie metadata to look for")
        return None
    found = find_movies_file(source)
    if found is None:
        log.info("no movies file beside %s; results will have no titles", source)
        return None
    try:
        movies = read_movies(found)
    except DataError as exc:
        log.warning("ignoring movie metadata in %s: %s", found, exc)
        return None
    log.info("movie metadata from %s (%s)", found, counted(len(movies), "movie"))
    return movies
