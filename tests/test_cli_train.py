"""End to end: ``resrec train`` on a small file the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.run import load_run

runner = CliRunner()


def _train(udata: Path, out: Path, *extra: str) -> object:
    args = ["train", "--ratings", str(udata), "--preset", "tutorial", "--epochs", "3"]
    return runner.invoke(app, [*args, "--batch-size", "64", "--out", str(out), *extra])


def test_train_writes_a_complete_run(udata_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(udata_file, out, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "test RMSE" in result.output

    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "history.csv",
        "timings.csv",
        "metrics.json",
        "loss.png",
        "mse.png",
        "weights.safetensors",
        "id_maps.npz",
        "checksums.json",
    } <= names
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["seed"] == 1
    assert config["config"]["lr"] == 0.08 and config["config"]["momentum"] == 0.9
    assert len(config["data"]["sha256"]) == 64
    assert config["data"]["layout"] == "udata"

    history = (out / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:4] == ["epoch", "lr", "train_loss", "train_mse"]
    assert "test_mse" in history[0] and len(history) == 4

    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.3 < metrics["test"]["rmse"] < 2.0
    assert metrics["split"]["sizes"]["test"] == 300
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"

    run = load_run(out)
    assert run.config.seed == 1 and len(run.user_map) == 60


def test_same_seed_gives_identical_history_files(udata_file: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert _train(udata_file, tmp_path / name, "--seed", "7").exit_code == 0
    assert (tmp_path / "a/history.csv").read_bytes() == (tmp_path / "b/history.csv").read_bytes()


def test_existing_run_is_not_overwritten(udata_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(udata_file, out).exit_code == 0
    result = _train(udata_file, out)
    assert result.exit_code == 1
    assert "already exists" in result.output


def test_bad_option_is_a_clean_error(udata_file: Path, tmp_path: Path) -> None:
    result = _train(udata_file, tmp_path / "run", "--lr", "-1")
    assert result.exit_code == 1
    assert "lr must be > 0" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_bad_file_is_a_clean_error_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "u.data"
    bad.write_text("1\t2\t5\t881250949\n1\t3\tfive\t881250950\n")
    result = _train(bad, tmp_path / "run")
    assert result.exit_code == 1
    assert "u.data:2" in result.output
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run*"))


@pytest.mark.parametrize("args", [[], ["--ratings", "x", "--dataset", "ml-100k"]])
def test_train_needs_exactly_one_source(args: list[str]) -> None:
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 1
    assert "exactly one of --ratings" in result.output
