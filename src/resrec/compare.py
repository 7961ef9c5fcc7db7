"""The accuracy race: train several models on the same splits and tabulate them.

:func:`compare` trains every chosen model on the same seeded split, repeats
that for ``repeats`` seeds (split ``i`` and every model's initial weights use
``seed + i``), and writes into ``out_dir``::

    compare.csv          one row per model: mean and standard deviation over repeats
    compare.md           the same table in Markdown ("mean ± std")
    compare_runs.csv     one row per (model, repeat)
    compare_history.csv  validation and test curves of every run, per epoch
    test_rmse.png        every model's test RMSE per epoch, overlaid
    compare.json         the configs used, the data source and the ranking settings

``out_dir`` must not exist yet; ``overwrite`` replaces an earlier comparison
(a folder holding ``compare.json`` and ``compare.csv``) and nothing else. The
folder is written under a temporary name beside it and renamed when complete,
so a failed or interrupted comparison leaves nothing behind.

Every model is trained by :func:`resrec.workflow.fit`, so the trainer,
early stopping (on validation only) and the metrics are those of ``resrec
train``; with ``save_runs`` each run is also written as a run directory.

Standard deviations are sample standard deviations (``ddof=1``) over the
repeats; with one repeat they are undefined and left empty.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resrec.config import TrainConfig, preset
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError
from resrec.files import make_staging_folder
from resrec.ranking import catalogue_coverage, check_threshold, ranking_metrics, top_k_movies
from resrec.run import COMPARISON_OUTPUT, check_output_folder
from resrec.split import Split, split_ratings
from resrec.train.checkpoint import storage_error
from resrec.workflow import Encoded, TrainResult, encode_ratings, fit, predict_indices

log = logging.getLogger(__name__)

MODEL_KINDS = ("global-mean", "biases", "mf", "deep", "residual")


# Columns averaged over repeats, in table order, with their Markdown headings.
SUMMARY_COLUMNS: dict[str, str] = {
    "test_rmse": "test RMSE",
    "test_mae": "test MAE",
    "valid_rmse": "valid RMSE",
    "precision": "P@{k}",
    "recall": "R@{k}",
    "ndcg": "NDCG@{k}",
    "coverage": "coverage@{k}",
    "best_epoch": "best epoch",
    "train_seconds": "train s",
}

RunCallback = Callable[[dict[str, Any]], None]


@dataclass
class CompareResult:
    """What :func:`compare` measured.

    ``runs`` has one dict per (model, repeat); ``table`` one dict per model with
    ``<column>_mean`` and ``<column>_std`` for each of :data:`SUMMARY_COLUMNS`;
    ``histories[model]`` the per-epoch history of each repeat; ``files`` the
    paths written (empty without ``out_dir``).
    """

    models: list[str]
    runs: list[dict[str, Any]]
    table: list[dict[str, Any]]
    histories: dict[str, list[list[dict[str, float]]]]
    configs: dict[str, TrainConfig]
    k: int
    threshold: float
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, model: str) -> dict[str, Any]:
        """The summary row of ``model``."""
        for row in self.table:
            if row["model"] == model:
                return row
        raise KeyError(f"model {model!r} was not compared; compared: {self.models}")


def compare(
    ratings: Ratings | Encoded,
    models: Sequence[str],
    *,
    repeats: int = 1,
    seed: int = 0,
    config: TrainConfig | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    k: int = 10,
    threshold: float = 4.0,
    coverage_users: int | None = None,
    out_dir: str | Path | None = None,
    save_runs: bool = False,
    overwrite: bool = False,
    on_run: RunCallback | None = None,
) -> CompareResult:
    """Train ``models`` on ``repeats`` seeded splits and summarise their test figures.

    Parameters
    ----------
    ratings
        The ratings table (or an already encoded one).
    models
        Model kinds from :data:`MODEL_KINDS`, in the order of the table.
    repeats
        Number of seeded splits; repeat ``i`` uses seed ``seed + i``.
    seed
        Seed of the first repeat.
    config
        Settings shared by every model (default: the ``accurate`` preset).
        Its ``test_fraction`` and ``valid_fraction`` define the split.
    model_overrides
        Per model kind, config fields to change for that model only (they may
        not change the split fractions: every model sees the same split; a
        ``model`` field among them is ignored).
    k, threshold
        Ranking metrics: list length and relevance threshold (rating >= it).
    coverage_users
        Catalogue coverage is measured on full-catalogue top-k lists (training
        movies excluded) of this many users drawn with the repeat's seed;
        ``None`` uses every user.
    out_dir
        A new folder for the tables and the plot, checked before training;
        nothing is written if ``None``.
    save_runs
        Also write each run as a run directory under ``out_dir/runs``.
    overwrite
        Replace ``out_dir`` if it holds an earlier comparison.
    on_run
        Called with each run's row as soon as it is measured.
    """
    models = _check_models(models)
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1; got {repeats}")
    if save_runs and out_dir is None:
        raise ConfigError("save_runs needs an out_dir to write the runs into")
    target = None if out_dir is None else Path(out_dir)
    if target is not None:
        check_output_folder(target, overwrite=overwrite, kind=COMPARISON_OUTPUT)
    check_threshold(threshold, ratings.ratings if isinstance(ratings, Encoded) else ratings)
    base = config or preset("accurate")
    configs = _model_configs(base, models, model_overrides or {})
    encoded = ratings if isinstance(ratings, Encoded) else encode_ratings(ratings)
    race = _Race(encoded, base, configs, k, threshold, coverage_users, on_run)
    if target is None:
        return race.run(models, repeats, seed, runs_dir=None)

    staging = _staging_folder(target)
    try:
        outcome = race.run(models, repeats, seed, runs_dir=staging / "runs" if save_runs else None)
        write_outputs(outcome, staging, encoded)
        outcome.files = _publish(staging, target, overwrite=overwrite)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise storage_error(exc, target) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return outcome


@dataclass
class _Race:
    """Trains and measures every model on the same seeded splits."""

    encoded: Encoded
    base: TrainConfig
    configs: dict[str, TrainConfig]
    k: int
    threshold: float
    coverage_users: int | None
    on_run: RunCallback | None

    def run(
        self, models: list[str], repeats: int, seed: int, *, runs_dir: Path | None
    ) -> CompareResult:
        runs: list[dict[str, Any]] = []
        histories: dict[str, list[list[dict[str, float]]]] = {m: [] for m in models}
        for repeat in range(repeats):
            run_seed = seed + repeat
            split = split_ratings(
                len(self.encoded.ratings),
                test_fraction=self.base.test_fraction,
                valid_fraction=self.base.valid_fraction,
                seed=run_seed,
            )
            for model in models:
                result, row = self._one(model, repeat, run_seed, split)
                runs.append(row)
                histories[model].append(result.history)
                if runs_dir is not None:
                    _save(result, runs_dir / f"{model}-seed{run_seed}")
        return CompareResult(
            models=models,
            runs=runs,
            table=summarise(runs, models),
            histories=histories,
            configs=self.configs,
            k=self.k,
            threshold=self.threshold,
        )

    def _one(
        self, model: str, repeat: int, run_seed: int, split: Split
    ) -> tuple[TrainResult, dict[str, Any]]:
        config = self.configs[model].replace(seed=run_seed)
        result = fit(self.encoded, config, split=split)
        row = _measure(
            result, self.encoded, split.test, model, repeat, run_seed, self.k, self.threshold
        )
        row["coverage"] = _catalogue_coverage(result, self.k, self.coverage_users, run_seed)
        log.info(
            "%s seed %d: test RMSE %.4f, best epoch %d, %.1fs",
            model,
            run_seed,
            row["test_rmse"],
            row["best_epoch"],
            row["train_seconds"],
        )
        if self.on_run is not None:
            self.on_run(row)
        return result, row


def _staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target`` to write the comparison into."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, target) from None
    return make_staging_folder(target)


def _publish(staging: Path, target: Path, *, overwrite: bool) -> dict[str, Path]:
    """Rename the finished ``staging`` folder to ``target``; returns the files by key."""
    if target.exists() or target.is_symlink():
        check_output_folder(target, overwrite=overwrite, kind=COMPARISON_OUTPUT)
        shutil.rmtree(target)
    os.replace(staging, target)
    return {key: target / name for key, name in OUTPUT_FILES.items()}


def _check_models(models: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(models))
    unknown = [m for m in chosen if m not in MODEL_KINDS]
    if unknown or not chosen:
        raise ConfigError(
            f"models must be a non-empty list from {', '.join(MODEL_KINDS)}; got {list(models)}"
        )
    return chosen


def _model_configs(
    base: TrainConfig, models: list[str], overrides: dict[str, dict[str, Any]]
) -> dict[str, TrainConfig]:
    stray = sorted(set(overrides) - set(models))
    if stray:
        raise ConfigError(f"overrides given for models not compared: {stray}")
    configs = {}
    for model in models:
        changes = {**overrides.get(model, {}), "model": model}
        config = base.replace(**changes)
        moved = [
            f for f in ("test_fraction", "valid_fraction") if getattr(config, f) != getattr(base, f)
        ]
        if moved:
            raise ConfigError(
                f"{model}: {moved} cannot differ between models; every model "
                "is compared on the same split"
            )
        configs[model] = config
    return configs


def _measure(
    result: TrainResult,
    encoded: Encoded,
    test_rows: np.ndarray,
    model: str,
    repeat: int,
    run_seed: int,
    k: int,
    threshold: float,
) -> dict[str, Any]:
    """One run's row: rating metrics, ranking metrics on the test split, epochs, time."""
    users, movies = encoded.users[test_rows], encoded.movies[test_rows]
    truth = encoded.ratings.rating[test_rows]
    pred = predict_indices(result.model, result.mu, result.scale, users, movies)
    ranking = ranking_metrics(users, movies, truth, pred, k=k, threshold=threshold)
    metrics = result.metrics
    return {
        "model": model,
        "repeat": repeat,
        "seed": run_seed,
        "test_rmse": metrics["test"]["rmse"],
        "test_mae": metrics["test"]["mae"],
        "valid_rmse": metrics["valid"]["rmse"] if "valid" in metrics else math.nan,
        "precision": ranking["precision"],
        "recall": ranking["recall"],
        "ndcg": ranking["ndcg"],
        "ranked_users": ranking["users"],
        "users_without_relevant": ranking["users_without_relevant"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "train_seconds": metrics["train_seconds"],
    }


def _catalogue_coverage(
    result: TrainResult, k: int, coverage_users: int | None, run_seed: int
) -> float:
    n_users, n_movies = len(result.user_map), len(result.movie_map)
    users = np.arange(n_users, dtype=np.int64)
    if coverage_users is not None and coverage_users < n_users:
        rng = np.random.default_rng(run_seed)
        users = np.sort(rng.choice(n_users, size=coverage_users, replace=False))

    def score(u: np.ndarray, m: np.ndarray) -> np.ndarray:
        return predict_indices(result.model, result.mu, result.scale, u, m)

    exclude = (result.train_users, result.train_movies)
    top = top_k_movies(score, users, n_movies, k, exclude=exclude)
    return catalogue_coverage(top, n_movies)


def _save(result: TrainResult, path: Path) -> None:
    from resrec.run import save_run

    save_run(result, path, overwrite=True)


def summarise(runs: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each summary column, per model."""
    table = []
    for model in models:
        rows = [r for r in runs if r["model"] == model]
        out: dict[str, Any] = {"model": model, "runs": len(rows)}
        for column in SUMMARY_COLUMNS:
            values = np.array([r[column] for r in rows], dtype=np.float64)
            out[f"{column}_mean"] = float(np.mean(values))
            out[f"{column}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        table.append(out)
    return table


# -- output files ------------------------------------------------------------------


OUTPUT_FILES = {
    "table_csv": "compare.csv",
    "table_md": "compare.md",
    "runs_csv": "compare_runs.csv",
    "history_csv": "compare_history.csv",
    "plot": "test_rmse.png",
    "json": "compare.json",
}


def write_outputs(result: CompareResult, out_dir: Path, encoded: Encoded) -> dict[str, Path]:
    """Write the tables, the curves and the plot of ``result`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {key: out_dir / name for key, name in OUTPUT_FILES.items()}
    _write_csv(files["table_csv"], result.table)
    _write_csv(files["runs_csv"], result.runs)
    _write_csv(files["history_csv"], _history_rows(result))
    files["table_md"].write_text(markdown_table(result))
    plot_test_rmse(result, files["plot"])
    info = {
        "models": result.models,
        "repeats": len(result.runs) // len(result.models),
        "k": result.k,
        "threshold": result.threshold,
        "data": {"source": encoded.ratings.source, "sha256": encoded.ratings.sha256},
        "configs": {m: c.to_dict() for m, c in result.configs.items()},
    }
    files["json"].write_text(json.dumps(info, indent=2) + "\n")
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return files


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_value(row.get(c)) for c in columns})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _history_rows(result: CompareResult) -> list[dict[str, Any]]:
    wanted = ("train_loss", "valid_rmse", "test_rmse", "valid_mae", "test_mae")
    rows = []
    for model, histories in result.histories.items():
        for repeat, history in enumerate(histories):
            for record in history:
                row: dict[str, Any] = {"model": model, "repeat": repeat, "epoch": record["epoch"]}
                row.update({key: record[key] for key in wanted if key in record})
                rows.append(row)
    return rows


def markdown_table(result: CompareResult) -> str:
    """The summary table as Markdown, each cell ``mean ± std``."""
    headings = [h.format(k=result.k) for h in SUMMARY_COLUMNS.values()]
    lines = [
        "| model | runs | " + " | ".join(headings) + " |",
        "|---|---:|" + "---:|" * len(headings),
    ]
    for row in result.table:
        cells = [_cell(row, column) for column in SUMMARY_COLUMNS]
        lines.append(f"| {row['model']} | {row['runs']} | " + " | ".join(cells) + " |")
    note = (
        f"\nMean ± sample standard deviation over {result.table[0]['runs']} seeded split(s). "
        f"Ranking metrics rank each user's test ratings; relevant means rating >= "
        f"{result.threshold:g}. Coverage: share of the catalogue in at least one user's "
        f"top-{result.k} over all movies not rated in training.\n"
    )
    return "\n".join(lines) + "\n" + note


def _cell(row: dict[str, Any], column: str) -> str:
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    if math.isnan(mean):
        return ""
    digits = 1 if column in ("best_epoch", "train_seconds") else 4
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def plot_test_rmse(result: CompareResult, path: Path) -> Path:
    """One figure: each model's test RMSE per epoch (mean over repeats, repeats faint).

    A baseline fitted in one step is drawn as a dashed horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=100)
    last_epoch = max(len(h) for runs in result.histories.values() for h in runs)
    for i, (model, runs) in enumerate(result.histories.items()):
        color = f"C{i}"
        curves = [[rec["test_rmse"] for rec in history] for history in runs]
        if max(len(c) for c in curves) == 1:
            level = float(np.mean([c[0] for c in curves]))
            ax.axhline(level, color=color, ls="--", lw=1.2, label=f"{model} ({level:.4f})")
            continue
        for curve in curves:
            ax.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.25, lw=0.8)
        mean = _ragged_mean(curves)
        ax.plot(range(1, len(mean) + 1), mean, color=color, marker="o", ms=2.5, label=model)
    ax.set_xlim(0.5, max(last_epoch, 2) + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test RMSE (predictions clipped to the scale)")
    ax.set_title("test RMSE per epoch (mean over repeats; faint lines: single repeats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _ragged_mean(curves: list[list[float]]) -> list[float]:
    """Per epoch, the mean over the runs that reached that epoch."""
    longest = max(len(c) for c in curves)
    return [float(np.mean([c[e] for c in curves if len(c) > e])) for e in range(longest)]
