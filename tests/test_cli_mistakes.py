"""User mistakes found by trying to break the command line: each is one clean error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resrec.cli import app

runner = CliRunner()


def _train(udata: Path, *extra: str) -> object:
    return runner.invoke(app, ["train", "--ratings", str(udata), "--epochs", "1", *extra])


def _clean_error(result: object, text: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert text in result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(
    udata_file: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "important"
    precious.mkdir()
    (precious / "thesis.txt").write_text("precious")
    _clean_error(_train(udata_file, "--out", str(precious), "--overwrite"), "not a resrec run")
    assert (precious / "thesis.txt").read_text() == "precious"


def test_overwrite_never_replaces_the_working_directory_or_above(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "keep.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in ("..", "."):
        _clean_error(_train(udata_file, "--out", out, "--overwrite"), "--out must name")
    assert (tmp_path / "a" / "keep.txt").exists() and work.exists()


def test_overwrite_replaces_a_previous_run(udata_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(udata_file, "--out", str(out)).exit_code == 0
    assert _train(udata_file, "--out", str(out), "--overwrite").exit_code == 0
    assert (out / "checksums.json").is_file()


def test_out_that_is_a_file_is_refused(udata_file: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    _clean_error(_train(udata_file, "--out", str(afile), "--overwrite"), "is not a folder")
    assert afile.read_text() == "x"


@pytest.mark.parametrize(
    "config,message",
    [
        ({"epochs": "two"}, "epochs must be an int"),
        ({"epochs": 1.7}, "epochs must be an int"),
        ({"epochs": True}, "epochs must be an int"),
        ({"batch_size": 64.9}, "batch_size must be an int"),
        ({"hidden": [8, "x"]}, "hidden must be a list of ints"),
        ({"activation": "bogus"}, "activation must be one of"),
        ({"optimizer": None}, "optimizer must be one of"),
        ({"schedule": "bogus"}, "schedule must be one of"),
        ({"seed": -3}, "seed must be in"),
        ({"lr": 1e308}, "lr must be > 0 and at most 1e6"),
    ],
)
def test_bad_config_values_are_clean_errors(
    udata_file: Path, tmp_path: Path, config: dict[str, object], message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    _clean_error(_train(udata_file, "--config", str(path), "--out", str(out)), message)
    assert not out.exists()


def test_lr_infinity_on_the_command_line_is_a_clean_error(udata_file: Path) -> None:
    _clean_error(_train(udata_file, "--lr", "inf"), "lr must be")


def test_empty_training_split_is_a_clean_error(tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    one.write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n")
    _clean_error(
        _train(one, "--test-fraction", "0.99", "--out", str(tmp_path / "run")),
        "the training split is empty",
    )


def test_a_folder_given_as_ratings_is_a_clean_error(tmp_path: Path) -> None:
    result = _train(tmp_path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output


def test_score_refuses_to_overwrite_its_own_input(udata_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(udata_file, "--out", str(run)).exit_code == 0
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n")
    result = runner.invoke(app, ["score", str(run), "--pairs", str(pairs), "--out", str(pairs)])
    _clean_error(result, "is the --pairs file itself")
    assert pairs.read_text() == "user_id,movie_id\n1,2\n"


@pytest.mark.parametrize("line", ["0x10,20,3.5,2", "1,0X1A,3.5,2", "1,20,3.5,0x10"])
def test_hexadecimal_numbers_are_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"userId,movieId,rating,timestamp\n1,10,4.0,1\n{line}\n")
    _clean_error(_train(path, "--out", str(tmp_path / "run")), "ratings.csv:3:")
