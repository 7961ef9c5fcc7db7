"""``compare``: every model on the same seeded splits, tables, plot and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.compare import compare
from resrec.config import TrainConfig, preset
from resrec.errors import ConfigError
from resrec.split import Split
from tests.conftest import planted_ratings, real_data_dir, write_udata

KINDS = ["global-mean", "biases", "mf", "deep", "residual"]
CONFIG = TrainConfig(
    embedding_dim=4,
    hidden=(8,),
    optimizer="adam",
    lr=0.02,
    batch_size=128,
    epochs=3,
    early_stopping=2,
    valid_fraction=0.1,
    threads=1,
)

runner = CliRunner()


def test_compare_writes_tables_and_plot_for_every_model(tmp_path: Path) -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    out = tmp_path / "cmp"
    result = compare(ratings, KINDS, repeats=2, seed=5, config=CONFIG, out_dir=out)

    assert [row["model"] for row in result.table] == KINDS
    assert len(result.runs) == 2 * len(KINDS)
    assert {r["seed"] for r in result.runs} == {5, 6}
    for name in ("table_csv", "table_md", "runs_csv", "history_csv", "plot", "json"):
        assert result.files[name].is_file(), name

    with open(result.files["table_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == KINDS
    for row in rows:
        assert float(row["test_rmse_std"]) >= 0
        for column in ("test_mae_mean", "ndcg_mean", "coverage_mean", "best_epoch_mean"):
            assert row[column] != ""
    markdown = result.files["table_md"].read_text()
    assert "±" in markdown and "| residual |" in markdown
    info = json.loads(result.files["json"].read_text())
    assert info["repeats"] == 2 and info["configs"]["mf"]["model"] == "mf"


def test_summary_is_the_mean_and_sample_std_of_the_runs() -> None:
    ratings = planted_ratings(n_users=40, n_movies=30, n=700)
    result = compare(ratings, ["biases"], repeats=3, config=CONFIG)
    values = [r["test_rmse"] for r in result.runs]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert result.row("biases")["test_rmse_mean"] == pytest.approx(mean)
    assert result.row("biases")["test_rmse_std"] == pytest.approx(std)


def test_every_model_of_a_repeat_sees_the_same_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import resrec.compare as module

    seen: list[tuple[str, int, Split]] = []
    real_fit = module.fit

    def spy(ratings: object, config: TrainConfig, *, split: Split) -> object:
        seen.append((config.model, config.seed, split))
        return real_fit(ratings, config, split=split)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "fit", spy)
    compare(
        planted_ratings(n_users=40, n_movies=30, n=700),
        ["biases", "mf"],
        repeats=2,
        seed=4,
        config=CONFIG,
    )
    assert [(m, s) for m, s, _ in seen] == [("biases", 4), ("mf", 4), ("biases", 5), ("mf", 5)]
    for first, second in ((seen[0][2], seen[1][2]), (seen[2][2], seen[3][2])):
        for part in ("train", "valid", "test"):
            assert np.array_equal(getattr(first, part), getattr(second, part))
    assert not np.array_equal(seen[0][2].test, seen[2][2].test)


def test_compare_rejects_unknown_models_and_split_overrides() -> None:
    ratings = planted_ratings(n_users=20, n_movies=10, n=100)
    with pytest.raises(ConfigError, match="models must be"):
        compare(ratings, ["svd"], config=CONFIG)
    with pytest.raises(ConfigError, match="same split"):
        compare(ratings, ["mf"], config=CONFIG, model_overrides={"mf": {"valid_fraction": 0.2}})


def test_the_cli_prints_the_table_and_writes_the_files(tmp_path: Path) -> None:
    udata = write_udata(tmp_path / "u.data", planted_ratings(n_users=40, n_movies=30, n=700))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {**CONFIG.to_dict(), "epochs": 2}}))
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare",
            "--ratings",
            str(udata),
            "--models",
            "biases,mf",
            "--repeats",
            "2",
            "--config",
            str(config),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| mf |" in result.output
    assert (out / "compare.csv").is_file() and (out / "test_rmse.png").is_file()


def test_the_cli_takes_a_config_file_for_one_model(tmp_path: Path) -> None:
    udata = write_udata(tmp_path / "u.data", planted_ratings(n_users=30, n_movies=20, n=400))
    base = tmp_path / "base.json"
    base.write_text(json.dumps({**CONFIG.to_dict(), "epochs": 1}))
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({"config": {"model": "residual", "hidden": [12], "dropout": 0.1}}))
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        [
            "compare",
            "--ratings",
            str(udata),
            "--models",
            "mf,deep",
            "--config",
            str(base),
            "--model-config",
            f"deep={deep}",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    configs = json.loads((out / "compare.json").read_text())["configs"]
    assert configs["deep"]["hidden"] == [12] and configs["deep"]["model"] == "deep"
    assert configs["mf"]["hidden"] == list(CONFIG.hidden)


def test_the_cli_names_an_unknown_model(tmp_path: Path) -> None:
    udata = write_udata(tmp_path / "u.data", planted_ratings(n_users=20, n_movies=10, n=100))
    result = runner.invoke(app, ["compare", "--ratings", str(udata), "--models", "svd"])
    assert result.exit_code == 1
    assert "models must be" in result.output


def test_tune_writes_a_config_that_train_accepts(tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="optuna is the optional extra resrec[tune]")
    udata = write_udata(tmp_path / "u.data", planted_ratings(n_users=40, n_movies=30, n=700))
    base = tmp_path / "base.json"
    base.write_text(json.dumps({**CONFIG.to_dict(), "epochs": 2, "batch_size": 256}))
    best = tmp_path / "best.json"
    result = runner.invoke(
        app,
        [
            "tune",
            "--ratings",
            str(udata),
            "--config",
            str(base),
            "--trials",
            "2",
            "--out",
            str(best),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(best.read_text())
    assert document["valid_rmse"] > 0 and len(document["trials"]) == 2

    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--ratings", str(udata), "--config", str(best), "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["embedding_dim"] == document["config"]["embedding_dim"]


def test_tune_without_optuna_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_optuna(name: str, *args: object, **kwargs: object) -> object:
        if name == "optuna":
            raise ImportError("No module named 'optuna'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    from resrec.tune import tune

    with pytest.raises(ConfigError, match="needs Optuna") as info:
        tune(planted_ratings(n_users=20, n_movies=10, n=100), config=CONFIG)
    assert "resrec[tune]" in (info.value.hint or "")


@pytest.mark.realdata
@pytest.mark.slow
def test_accurate_residual_beats_the_baselines_on_ml100k(tmp_path: Path) -> None:
    path = real_data_dir() / "ml-100k" / "u.data"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    from resrec.data import read_ratings

    ratings = read_ratings(path, cache=False)
    out = tmp_path / "cmp"
    result = compare(ratings, ["biases", "residual"], config=preset("accurate"), out_dir=out)
    residual, biases = result.row("residual"), result.row("biases")
    # Surprise's baseline reaches 0.942 on such splits; ours must be near it.
    assert biases["test_rmse_mean"] < 0.955
    assert residual["test_rmse_mean"] < biases["test_rmse_mean"] - 0.02
