"""Edges of --resume and of the split: each gives a consistent run or one clean error."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.config import preset
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError
from resrec.split import split_ratings
from resrec.train.checkpoint import Checkpointer, load_checkpoint
from resrec.train.trainer import early_stop
from resrec.workflow import check_resume, fit

runner = CliRunner()


class _Stop(Exception):
    """Stands in for a crash after an epoch."""


def _clean_error(result: Any, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert text in result.output, result.output
    assert "Traceback" not in result.output


def _interrupted(
    udata: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, stop_after: int = 2
) -> None:
    """Train ``--epochs 3`` into ``out.partial`` and crash after epoch ``stop_after``."""
    import resrec.cli.train as cli_train

    real_fit = cli_train.fit

    def crashing_fit(*args: Any, **kwargs: Any) -> Any:
        def crash(record: dict[str, float]) -> None:
            if record["epoch"] == stop_after:
                raise _Stop

        return real_fit(*args, **{**kwargs, "on_epoch": crash})

    monkeypatch.setattr(cli_train, "fit", crashing_fit)
    args = ["train", "--ratings", str(udata), "--epochs", "3", "--threads", "1"]
    result = runner.invoke(app, [*args, "--out", str(out), *extra])
    assert isinstance(result.exception, _Stop), result.output
    monkeypatch.setattr(cli_train, "fit", real_fit)
    checkpoint = load_checkpoint(out.with_name(out.name + ".partial") / "checkpoint.pt")
    assert checkpoint["trainer"]["epoch"] == stop_after


def _resume(out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["train", "--resume", str(out), "--no-progress", *extra])


def _read(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- options that change on resume ----------------------------------------


def test_resume_refuses_fewer_epochs_than_already_trained(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)

    result = _resume(out, "--epochs", "1")

    _clean_error(result, "epochs 1 is below the 2 epochs the checkpoint has already trained")
    assert "resume with --epochs 2 or more, or without --epochs to train to the run's 3" in (
        result.output
    )
    assert not out.exists()
    assert (tmp_path / "run.partial" / "checkpoint.pt").is_file()


def test_resume_with_epochs_equal_to_those_trained_finishes_a_consistent_run(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)

    result = _resume(out, "--epochs", "2")

    assert result.exit_code == 0, result.output
    assert _read(out, "config.json")["config"]["epochs"] == 2
    assert [row["epoch"] for row in _rows(out / "history.csv")] == ["1", "2"]
    metrics = _read(out, "metrics.json")
    assert (metrics["epochs_run"], metrics["resumed_from_epoch"]) == (2, 2)


def _checkpoint(history: list[float], *, trained: int, early_stopping: int) -> dict[str, Any]:
    config = preset("tutorial").replace(
        epochs=10, valid_fraction=0.1, early_stopping=early_stopping
    )
    rows = [{"epoch": i + 1, "valid_rmse": v} for i, v in enumerate(history)]
    return {"config": config.to_dict(), "trainer": {"epoch": trained, "history": rows}}


def test_early_stop_replays_the_trainers_rule() -> None:
    rows = [{"epoch": i + 1, "valid_rmse": v} for i, v in enumerate([1.0, 1.1, 1.2, 0.9])]
    assert early_stop(rows, 1) == (2, 1)
    assert early_stop(rows, 2) == (3, 1)
    assert early_stop(rows, 3) == (None, 4)
    assert early_stop(rows, 0) == (None, 4)
    assert early_stop([{"epoch": 1}, {"epoch": 2}], 1) == (None, 2)  # no validation split


def test_resume_refuses_a_patience_that_would_have_stopped_earlier() -> None:
    checkpoint = _checkpoint([1.0, 1.1, 1.2, 0.9], trained=4, early_stopping=3)
    config = preset("tutorial").replace(epochs=10, valid_fraction=0.1, early_stopping=2)

    with pytest.raises(ConfigError) as caught:
        check_resume(checkpoint, config)

    assert caught.value.message == (
        "early_stopping 2 would have stopped the training after epoch 3, but the checkpoint "
        "has already trained 4 epochs"
    )
    assert caught.value.hint is not None
    assert "--early-stopping 3 or more" in caught.value.hint
    check_resume(checkpoint, config.replace(early_stopping=3))  # the saved one
    check_resume(checkpoint, config.replace(early_stopping=5))  # a longer one
    check_resume(checkpoint, config.replace(early_stopping=0))  # turned off


def test_resume_turns_on_early_stopping_only_where_the_best_weights_are_at_hand() -> None:
    config = preset("tutorial").replace(epochs=10, valid_fraction=0.1, early_stopping=2)
    worse_last = _checkpoint([1.0, 0.9, 1.0], trained=3, early_stopping=0)
    with pytest.raises(ConfigError, match="the best epoch so far is 2, and its weights were"):
        check_resume(worse_last, config)
    check_resume(_checkpoint([1.0, 0.9], trained=2, early_stopping=0), config)


def test_a_longer_patience_continues_a_training_that_had_stopped(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    config = preset("tutorial").replace(
        epochs=6, batch_size=64, hidden=(8,), valid_fraction=0.2, early_stopping=1, threads=1
    )
    first = fit(small_ratings, config, checkpointer=Checkpointer(tmp_path))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    stopped_at = checkpoint["trainer"]["epoch"]
    assert checkpoint["trainer"]["stopped"] and stopped_at < 6, first.history

    longer = config.replace(early_stopping=6)
    resumed = fit(small_ratings, longer, resume=checkpoint)

    assert resumed.metrics["epochs_run"] == 6  # it trained on instead of stopping at once
    assert resumed.metrics["best_epoch"] == early_stop(resumed.history, 6)[1]


def test_side_epochs_may_change_on_resume(small_ratings: Ratings, tmp_path: Path) -> None:
    config = preset("fast").replace(
        epochs=2,
        batch_size=64,
        lr=0.01,
        side_input="movie_ratings",
        side_units=8,
        side_epochs=2,
        threads=1,
    )

    def crash(record: dict[str, float]) -> None:
        if record["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        fit(small_ratings, config, checkpointer=Checkpointer(tmp_path), on_epoch=crash)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    resumed = fit(small_ratings, config.replace(side_epochs=3), resume=checkpoint)

    # The side stage always runs from its start, so its epochs follow the new value.
    assert resumed.metrics["side_stage"]["epochs"] == 3
    assert len(resumed.history) == 2 + 3


# -- the training time of a resumed run -------------------------------------


def test_resumed_train_seconds_include_the_epochs_before_the_interruption(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)
    saved = load_checkpoint(tmp_path / "run.partial" / "checkpoint.pt")["trainer"]

    assert _resume(out).exit_code == 0

    metrics = _read(out, "metrics.json")
    timings = _rows(out / "timings.csv")
    assert len(timings) == 3
    assert metrics["train_seconds_before_resume"] == saved["seconds"]
    assert saved["seconds"] >= sum(float(row["elapsed_seconds"]) for row in timings[:2]) - 0.002
    assert metrics["train_seconds"] > metrics["train_seconds_before_resume"]
    assert metrics["train_seconds"] >= sum(float(row["train_seconds"]) for row in timings) - 0.003


def test_a_checkpoint_without_seconds_counts_its_epochs_timings(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    config = preset("tutorial").replace(epochs=2, batch_size=64, hidden=(8,), threads=1)
    result = fit(small_ratings, config, checkpointer=Checkpointer(tmp_path))
    assert result.trainer is not None
    state = load_checkpoint(tmp_path / "checkpoint.pt")["trainer"]
    del state["seconds"]  # as a checkpoint written before resrec kept it

    result.trainer.load_state_dict(state)

    assert result.trainer.seconds == pytest.approx(
        sum(row["elapsed_seconds"] for row in state["history"])
    )


# -- a partial run without a checkpoint -----------------------------------------


def test_resume_without_a_checkpoint_is_an_error_not_a_new_training(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)
    (tmp_path / "run.partial" / "checkpoint.pt").unlink()

    result = _resume(out)

    _clean_error(result, "has no checkpoint (checkpoint.pt): no epoch was saved, so there is")
    assert f"--out {out} --overwrite" in result.output
    assert not out.exists() and (tmp_path / "run.partial" / "config.json").is_file()

    again = _train(udata_file, out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert not (tmp_path / "run.partial").exists()


# -- reading options compared after resolution -----------------------------------


def test_resume_accepts_the_layout_and_scale_that_auto_resolved_to(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)
    assert _read(tmp_path / "run.partial", "config.json")["data"]["layout"] == "udata"

    _clean_error(
        _resume(out, "--layout", "dat"),
        "--layout dat differs from the run's --layout auto (which read it as udata)",
    )
    _clean_error(_resume(out, "--scale", "0.5:5:0.5"), "--scale 0.5:5:0.5 differs")
    result = _resume(out, "--layout", "udata", "--scale", "1:5:1")

    assert result.exit_code == 0, result.output
    read_options = _read(out, "config.json")["data"]["read_options"]
    assert (read_options["layout"], read_options["scale"]) == ("auto", None)


def test_resume_accepts_a_guessed_option_given_with_its_guessed_value(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)

    swapped = "movie_id,user_id,rating,timestamp"
    _clean_error(_resume(out, "--columns", swapped), f"--columns {swapped} differs from")
    _clean_error(_resume(out, "--sep", ";"), "--sep ; differs from the run's --sep (not given)")
    result = _resume(out, "--sep", "\t", "--no-header")

    assert result.exit_code == 0, result.output


# -- --resume with --overwrite --------------------------------------------------


def test_resume_with_overwrite_is_refused(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)

    result = _resume(out, "--overwrite")

    _clean_error(result, "--resume continues an unfinished run and --overwrite discards it")
    assert "give one of them, not both" in result.output
    assert load_checkpoint(tmp_path / "run.partial" / "checkpoint.pt")["trainer"]["epoch"] == 2


# -- empty parts of the split --------------------------------------------------


def _train(ratings: Path, out: Path, *extra: str) -> Any:
    args = ["train", "--ratings", str(ratings), "--epochs", "2", "--threads", "1"]
    return runner.invoke(app, [*args, "--out", str(out), "--no-progress", *extra])


def test_a_split_with_an_empty_test_part_is_refused(tmp_path: Path) -> None:
    one = tmp_path / "one.csv"
    one.write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n")
    out = tmp_path / "run"

    result = _train(one, out)

    _clean_error(
        result,
        "the test split is empty: 1 rating with test_fraction 0.2 and valid_fraction 0 "
        "give train 1, validation 0, test 0",
    )
    assert "--test-fraction 0 trains without a test split" in result.output
    assert not out.exists() and not (tmp_path / "run.partial").exists()

    result = _train(one, out, "--test-fraction", "0")
    assert result.exit_code == 0, result.output
    assert "test" not in _read(out, "metrics.json")


def test_a_split_with_an_empty_validation_part_is_refused(tmp_path: Path) -> None:
    three = tmp_path / "three.csv"
    three.write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n1,11,3.0,2\n2,10,5.0,3\n")

    result = _train(three, tmp_path / "run", "--test-fraction", "0.3", "--valid-fraction", "0.1")

    _clean_error(
        result,
        "the validation split is empty: 3 ratings with test_fraction 0.3 and "
        "valid_fraction 0.1 give train 2, validation 0, test 1",
    )


def test_split_ratings_names_the_empty_part() -> None:
    with pytest.raises(ConfigError, match="the training split is empty: 1 rating with"):
        split_ratings(1, test_fraction=0.9)
    with pytest.raises(ConfigError, match="the test split is empty: 2 ratings with"):
        split_ratings(2, test_fraction=0.2)
    with pytest.raises(ConfigError, match=r"validation split is empty: 10 ratings.*test 2"):
        split_ratings(10, test_fraction=0.2, valid_fraction=0.04)
    split = split_ratings(10, test_fraction=0.0, valid_fraction=0.0)
    assert split.sizes() == {"train": 10, "valid": 0, "test": 0}
    assert np.array_equal(split.train, np.arange(10))
