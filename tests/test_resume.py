"""Checkpoints and resume: an interrupted training continues to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from resrec.cli import app
from resrec.config import TrainConfig, preset
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError, ModelFileError, ResrecError
from resrec.train.checkpoint import Checkpointer, check_plain, load_checkpoint
from resrec.workflow import fit
from tests.conftest import planted_ratings, write_udata

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("train_seconds", "elapsed_seconds")


class _Stop(Exception):
    """Stands in for a crash after an epoch."""


def _without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def _interrupted_then_resumed(
    ratings: Ratings, config: TrainConfig, folder: Path, stop_after: int
) -> dict:
    def crash(record: dict[str, float]) -> None:
        if record["epoch"] == stop_after:
            raise _Stop

    with pytest.raises(_Stop):
        fit(ratings, config, checkpointer=Checkpointer(folder), on_epoch=crash)
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    assert checkpoint["trainer"]["epoch"] == stop_after
    result = fit(ratings, config, checkpointer=Checkpointer(folder), resume=checkpoint)
    assert result.metrics["resumed_from_epoch"] == stop_after
    return {"history": result.history, "metrics": result.metrics, "model": result.model}


CONFIGS = {
    # The tutorial's SGD with Keras momentum (the fused CPU step).
    "tutorial": preset("tutorial").replace(epochs=4, batch_size=64, hidden=(16,)),
    # Adam with dropout: the autograd step, and torch's global generator matters.
    "adam-dropout": preset("fast").replace(
        epochs=4, batch_size=64, lr=0.01, dropout=0.3, hidden=(16,)
    ),
    # Implicit feedback and count-scaled l2: two dense parameter groups, N(u) rebuilt.
    "implicit": preset("fast").replace(
        epochs=4,
        batch_size=64,
        lr=0.01,
        hidden=(16,),
        implicit_feedback=True,
        l2_implicit=0.003,
        l2_count_power=0.5,
    ),
    # A side branch that reads movie ratings, trained in a stage after the main branch.
    "movie-ratings-side": preset("fast").replace(
        epochs=4,
        batch_size=64,
        lr=0.01,
        side_input="movie_ratings",
        side_units=8,
        side_epochs=3,
        valid_fraction=0.1,
        early_stopping=3,
    ),
    # Early stopping: the best epoch's weights travel in the checkpoint.
    "early-stopping": preset("tutorial").replace(
        epochs=12, batch_size=64, lr=0.05, valid_fraction=0.1, early_stopping=2, hidden=(16,)
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resumed_training_equals_uninterrupted(
    name: str, small_ratings: Ratings, tmp_path: Path
) -> None:
    config = CONFIGS[name]
    whole = fit(small_ratings, config)
    resumed = _interrupted_then_resumed(small_ratings, config, tmp_path, stop_after=2)

    assert _without_timings(resumed["history"]) == _without_timings(whole.history)
    assert resumed["metrics"]["test"] == whole.metrics["test"]
    for key, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[key], tensor), key


def test_a_run_stopped_in_its_side_stage_resumes_to_the_same_result(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    config = CONFIGS["movie-ratings-side"]
    whole = fit(small_ratings, config)
    main_epochs = whole.metrics["side_stage"]["main_epochs"]
    assert whole.metrics["side_stage"]["epochs"] >= 2

    def crash(record: dict[str, float]) -> None:
        if record["epoch"] == main_epochs + 2:  # the side stage's second epoch
            raise _Stop

    with pytest.raises(_Stop):
        fit(small_ratings, config, checkpointer=Checkpointer(tmp_path), on_epoch=crash)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["trainer"]["epoch"] == main_epochs  # the stage wrote no checkpoint
    resumed = fit(small_ratings, config, checkpointer=Checkpointer(tmp_path), resume=checkpoint)

    assert _without_timings(resumed.history) == _without_timings(whole.history)
    assert resumed.metrics["test"] == whole.metrics["test"]
    for key, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], tensor), key


def test_checkpoint_holds_only_tensors_and_plain_values(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    config = CONFIGS["adam-dropout"].replace(epochs=1)
    fit(small_ratings, config, checkpointer=Checkpointer(tmp_path, info={"note": "x"}))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")  # weights_only=True inside
    check_plain(checkpoint)
    assert checkpoint["config"] == config.to_dict()
    assert checkpoint["split_seed"] == config.seed and checkpoint["note"] == "x"
    assert checkpoint["trainer"]["generator"].dtype == torch.uint8
    assert set(checkpoint["rng"][0]) >= {"torch", "numpy", "python"}
    assert not [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]  # no temp files


def test_checkpoint_refuses_objects_that_would_need_code_to_load() -> None:
    with pytest.raises(TypeError, match="Path"):
        check_plain({"trainer": {"where": Path("x")}})


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_loading_a_checkpoint_executes_no_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "resrec-checkpoint", "evil": _Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ModelFileError, match="cannot be read"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "pwned").exists()


def test_resume_refuses_a_changed_model(small_ratings: Ratings, tmp_path: Path) -> None:
    config = CONFIGS["tutorial"].replace(epochs=1)
    fit(small_ratings, config, checkpointer=Checkpointer(tmp_path))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="embedding_dim"):
        fit(small_ratings, config.replace(embedding_dim=4, epochs=2), resume=checkpoint)


# -- the command line: SIGKILL in the middle of an epoch, then --resume ----------


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RESREC_CACHE_DIR": str(tmp_path / "cache")}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _wait_for_new_checkpoint(
    path: Path, previous: tuple[int, int] | None, proc: subprocess.Popen[str]
) -> tuple[int, int]:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        stamp = _stamp(path)
        if stamp is not None and stamp != previous:
            return stamp
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    # About 1,500 steps an epoch: 0.3 to 1 s here, long enough to land inside one.
    data = write_udata(
        tmp_path / "u.data", planted_ratings(n_users=500, n_movies=400, n=30000, seed=3)
    )
    args = ["train", "--ratings", str(data), "--epochs", "6", "--batch-size", "16"]
    args += ["--seed", "2", "--no-progress"]

    # The uninterrupted run, in this process (the same code, so the same arithmetic).
    reference = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert reference.exit_code == 0, reference.output

    proc = subprocess.Popen(
        [sys.executable, "-m", "resrec", *args, "--out", "run"],
        cwd=tmp_path,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "run.partial" / "checkpoint.pt"
    try:
        first = _wait_for_new_checkpoint(checkpoint, None, proc)
        started = time.monotonic()
        _wait_for_new_checkpoint(checkpoint, first, proc)
        epoch_seconds = time.monotonic() - started
        time.sleep(epoch_seconds / 2)  # halfway through the next epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    assert not (tmp_path / "run").exists()  # an interrupted run never looks complete
    saved_epoch = load_checkpoint(checkpoint)["trainer"]["epoch"]
    assert 2 <= saved_epoch < 6

    resumed = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / "run.partial").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    whole, run = tmp_path / "whole", tmp_path / "run"
    assert (run / "history.csv").read_bytes() == (whole / "history.csv").read_bytes()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, run)]
    assert metrics[1]["test"] == metrics[0]["test"]
    assert metrics[1]["resumed_from_epoch"] == saved_epoch
    weights = [load_file(str(d / "weights.safetensors")) for d in (whole, run)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_of_a_missing_or_complete_run_is_a_clean_error(tmp_path: Path) -> None:
    from resrec.run import StagedRun

    with pytest.raises(ConfigError, match="no unfinished run"):
        StagedRun.reopen(tmp_path / "nothing")
    (tmp_path / "done").mkdir()
    with pytest.raises(ConfigError, match="complete run"):
        StagedRun.reopen(tmp_path / "done")


def test_resume_refuses_a_changed_ratings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import resrec.cli.train as cli_train

    real_fit = cli_train.fit

    def crash_after_first_epoch(*args: Any, **kwargs: Any) -> Any:
        def crash(record: dict[str, float]) -> None:
            raise _Stop

        return real_fit(*args, **{**kwargs, "on_epoch": crash})

    data = write_udata(tmp_path / "u.data", planted_ratings(seed=1))
    monkeypatch.setattr(cli_train, "fit", crash_after_first_epoch)
    args = ["train", "--ratings", str(data), "--epochs", "3", "--out", str(tmp_path / "run")]
    assert isinstance(CliRunner().invoke(app, args).exception, _Stop)
    assert load_checkpoint(tmp_path / "run.partial" / "checkpoint.pt")["trainer"]["epoch"] == 1

    monkeypatch.setattr(cli_train, "fit", real_fit)
    write_udata(data, planted_ratings(seed=2))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 1
    raised = isinstance(result.exception, ResrecError)
    reported = str(result.exception) if raised else result.output
    assert "changed since the run started" in reported


@pytest.mark.slow
def test_two_process_training_killed_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    data = write_udata(tmp_path / "u.data", planted_ratings(n_users=300, n_movies=200, n=6000))
    args = [sys.executable, "-m", "resrec", "train", "--ratings", str(data), "--epochs", "4"]
    args += ["--batch-size", "16", "--nproc", "2", "--no-progress"]
    run = partial(subprocess.run, cwd=tmp_path, env=_env(tmp_path), timeout=300)

    assert run([*args, "--out", "whole"], capture_output=True).returncode == 0
    proc = subprocess.Popen(
        [*args, "--out", "run"],
        cwd=tmp_path,
        env=_env(tmp_path),
        start_new_session=True,  # its own process group: the launcher and both ranks
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        _wait_for_new_checkpoint(tmp_path / "run.partial" / "checkpoint.pt", None, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (tmp_path / "run").exists()

    resumed = run([*args[:3], "train", "--resume", "run", "--nproc", "2"], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    whole, done = tmp_path / "whole", tmp_path / "run"
    assert (done / "history.csv").read_bytes() == (whole / "history.csv").read_bytes()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, done)]
    assert metrics[1]["test"] == metrics[0]["test"]
