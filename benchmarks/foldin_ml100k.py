"""How well does fold-in serve a new user? A measurement on ML-100K.

Protocol (each seed):

1. Hold out 20% of the users entirely (chosen at random with the seed).
2. Train a model on every rating of the other users (a preset, 5% of those
   ratings carved out as validation for the error variance that weighs
   fold-in's prior; no test split).
3. For each held-out user, shuffle their ratings with the seed, drop those of
   movies the model never saw in training (counted), fold the user in from the
   first 10 and predict the rest.
4. Report the RMSE over all those other ratings (pooled), and the mean of the
   per-user RMSEs, for: the bias-only fallback an unknown user gets
   (``mu + movie bias``), the full model for the average trained user (the
   prior mean, which is what fold-in starts from), fold-in of the bias alone,
   and fold-in of embedding and bias (the default), plus the default with a
   weaker and a stronger prior.

    RESREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/foldin_ml100k.py
    .venv/bin/python benchmarks/foldin_ml100k.py --data path/to/ml-100k/u.data --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from resrec.config import preset
from resrec.data import read_ratings
from resrec.data.ratings import Ratings
from resrec.inference import Recommender
from resrec.split import Split
from resrec.workflow import fit

FOLD_IN = 10
HELD_OUT_USERS = 0.2
METHODS = {
    "bias-only fallback (mu + movie bias)": None,
    "average user (prior mean, ratings unused)": {"prior_weight": 1e12},
    "fold-in, bias only": {"factors": False},
    "fold-in, embedding + bias (default)": {},
    "fold-in, prior x0.1": {"prior_weight": 0.1},
    "fold-in, prior x10": {"prior_weight": 10.0},
}


def ratings_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    folder = os.environ.get("RESREC_DATA_DIR")
    if not folder:
        sys.exit("give --data PATH/u.data or set RESREC_DATA_DIR to the folder holding ml-100k/")
    return Path(folder) / "ml-100k" / "u.data"


def train_without(ratings: Ratings, held_out: np.ndarray, preset_name: str, seed: int) -> Any:
    rows = np.flatnonzero(~np.isin(ratings.user_id, held_out))
    rng = np.random.default_rng(seed)
    valid = np.zeros(rows.size, dtype=bool)
    valid[rng.permutation(rows.size)[: rows.size // 20]] = True
    table = ratings.take(rows)
    split = Split(
        train=np.flatnonzero(~valid), valid=np.flatnonzero(valid), test=np.empty(0, np.int64)
    )
    config = preset(preset_name).replace(seed=seed, threads=1)
    return fit(table, config, split=split)


def evaluate(rec: Recommender, ratings: Ratings, held_out: np.ndarray, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1000)
    errors: dict[str, list[np.ndarray]] = {name: [] for name in METHODS}
    dropped = users = 0
    seconds = []
    for user_id in held_out:
        rows = np.flatnonzero(ratings.user_id == user_id)
        rows = rows[rng.permutation(rows.size)]
        movies, values = ratings.movie_id[rows], ratings.rating[rows].astype(np.float64)
        known = np.isin(movies, rec.movie_map.raw_ids[rec.trained_movies])
        dropped += int((~known).sum())
        movies, values = movies[known], values[known]
        if movies.size <= FOLD_IN:
            continue
        users += 1
        given = list(zip(movies[:FOLD_IN].tolist(), values[:FOLD_IN].tolist(), strict=True))
        rest, truth = movies[FOLD_IN:], values[FOLD_IN:]
        for name, options in METHODS.items():
            if options is None:
                predicted = rec.bias_estimate(rest)
            else:
                started = time.perf_counter()
                folded = rec.fold_in(given, **options)
                if not options:
                    seconds.append(time.perf_counter() - started)
                predicted = rec.predict_folded(folded, rest)
            errors[name].append(predicted - truth)
    result: dict[str, Any] = {
        "users": users,
        "eval_ratings": int(sum(e.size for e in errors[next(iter(METHODS))])),
        "dropped_unknown_movie_ratings": dropped,
        "fold_in_ms_median": 1e3 * statistics.median(seconds),
    }
    for name, per_user in errors.items():
        pooled = np.concatenate(per_user)
        result[name] = {
            "rmse": float(np.sqrt(np.mean(pooled**2))),
            "mean_user_rmse": float(np.mean([np.sqrt(np.mean(e**2)) for e in per_user])),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="ML-100K u.data (default: $RESREC_DATA_DIR/ml-100k)")
    parser.add_argument("--preset", default="tutorial", help="training preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()

    ratings = read_ratings(ratings_path(args.data))
    users = np.unique(ratings.user_id)
    report: dict[str, Any] = {"preset": args.preset, "fold_in_ratings": FOLD_IN, "seeds": {}}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        held_out = np.sort(
            rng.choice(users, size=round(HELD_OUT_USERS * users.size), replace=False)
        )
        started = time.perf_counter()
        result = train_without(ratings, held_out, args.preset, seed)
        rec = Recommender(
            result.model,
            result.user_map,
            result.movie_map,
            result.mu,
            result.scale,
            result.train_users,
            result.train_movies,
            noise_variance=result.metrics["valid"]["mse"],
        )
        figures = evaluate(rec, ratings, held_out, seed)
        figures["train_seconds"] = time.perf_counter() - started
        figures["valid_rmse"] = result.metrics["valid"]["rmse"]
        report["seeds"][seed] = figures
        print(
            f"seed {seed}: {figures['users']} held-out users, {figures['eval_ratings']:,} "
            f"ratings predicted ({figures['dropped_unknown_movie_ratings']} of movies unknown "
            f"to the model dropped); model valid RMSE {figures['valid_rmse']:.4f}; "
            f"fold-in {figures['fold_in_ms_median']:.1f} ms per user",
            flush=True,
        )
        for name in METHODS:
            print(
                f"  {name:<40} RMSE {figures[name]['rmse']:.4f}  "
                f"(mean per-user {figures[name]['mean_user_rmse']:.4f})",
                flush=True,
            )

    print(f"\nmean over seeds {args.seeds} (preset {args.preset}, fold-in from {FOLD_IN} ratings):")
    for name in METHODS:
        values = [report["seeds"][s][name]["rmse"] for s in args.seeds]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        print(f"  {name:<40} RMSE {statistics.mean(values):.4f}{spread}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
