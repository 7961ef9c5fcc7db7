"""Faults: divergence, unwritable directories and full disks never leave a corrupt run."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import resrec.cli.train as cli_train
import resrec.run as run_module
import resrec.train.checkpoint as checkpoint_module
from resrec.cli import app
from resrec.config import preset
from resrec.data.ratings import Ratings
from resrec.errors import DivergenceError, ModelFileError, ResrecError
from resrec.run import save_run
from resrec.train.checkpoint import Checkpointer, load_checkpoint
from resrec.train.trainer import Trainer
from resrec.workflow import fit

runner = CliRunner()
QUICK = preset("tutorial").replace(epochs=3, batch_size=64, hidden=(16,))


def _train(udata: Path, out: Path, *extra: str) -> Any:
    args = ["train", "--ratings", str(udata), "--epochs", "3", "--batch-size", "64"]
    return runner.invoke(app, [*args, "--hidden", "16", "--out", str(out), *extra])


def _error(result: Any) -> str:
    """The error a command reported, message and hint (as printed, or as raised)."""
    if isinstance(result.exception, ResrecError):
        return str(result.exception)
    return str(result.output)


def _no_nan_anywhere(folder: Path) -> None:
    for path in folder.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=_refuse)
    for path in folder.rglob("*.csv"):
        assert "nan" not in path.read_text().lower(), path


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} written to a JSON file")


def _disk_full(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- divergence -----------------------------------------------------------------


def test_divergence_names_epoch_step_and_lr_and_keeps_the_last_good_checkpoint(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    fit(small_ratings, QUICK.replace(epochs=2), checkpointer=Checkpointer(tmp_path))
    good = load_checkpoint(tmp_path / "checkpoint.pt")

    wild = QUICK.replace(epochs=4, lr=1e6, momentum=0.99)
    with pytest.raises(DivergenceError, match=r"epoch 3, step \d+") as info:
        fit(small_ratings, wild, checkpointer=Checkpointer(tmp_path), resume=good)
    assert "learning rate" in str(info.value)

    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["trainer"]["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in kept["trainer"]["model"].values())
    assert all(math.isfinite(v) for row in kept["trainer"]["history"] for v in row.values())


def test_cli_divergence_keeps_the_checkpoint_and_resume_finishes(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Epochs 1 and 2 train normally; epoch 3 runs with an absurd learning rate.
    normal = Trainer.learning_rate
    monkeypatch.setattr(
        Trainer, "learning_rate", lambda self, epoch: 1e6 if epoch >= 2 else normal(self, epoch)
    )
    out = tmp_path / "run"
    result = _train(udata_file, out, "--momentum", "0.99")
    assert result.exit_code == 1
    assert "training diverged" in _error(result) and "epoch 3" in _error(result)
    assert "--resume" in _error(result)

    assert not out.exists()
    staging = tmp_path / "run.partial"
    assert sorted(p.name for p in staging.iterdir()) == ["checkpoint.pt", "config.json"]
    assert load_checkpoint(staging / "checkpoint.pt")["trainer"]["epoch"] == 2
    _no_nan_anywhere(staging)

    monkeypatch.setattr(Trainer, "learning_rate", normal)
    resumed = runner.invoke(app, ["train", "--resume", str(out), "--momentum", "0.5"])
    assert resumed.exit_code == 0, resumed.exception
    _no_nan_anywhere(out)
    assert json.loads((out / "config.json").read_text())["config"]["momentum"] == 0.5


def test_cli_divergence_in_the_first_epoch_is_one_clean_error(
    udata_file: Path, tmp_path: Path
) -> None:
    args = ["train", "--ratings", str(udata_file), "--epochs", "2", "--batch-size", "64"]
    args += ["--lr", "1e6", "--momentum", "0.99", "--out", "run", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "resrec", *args],
        cwd=tmp_path,
        env={**os.environ, "RESREC_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error: training diverged" in proc.stderr and "epoch 1, step" in proc.stderr
    assert "learning rate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "u.data"]  # nothing kept


def test_non_finite_weights_never_become_a_metric(small_ratings: Ratings) -> None:
    result = fit(small_ratings, QUICK.replace(epochs=1))
    trainer = result.trainer
    assert trainer is not None
    with torch.no_grad():
        for table, _ in result.model.row_tables().values():
            table.weight.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="not finite"):
        trainer.evaluate(trainer.eval_sets["test"])
    with pytest.raises(FloatingPointError):
        result.predict(small_ratings.user_id[:1], small_ratings.movie_id[:1])


# -- unwritable run directories ---------------------------------------------------


def test_out_under_a_file_fails_before_training(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_train, "fit", _must_not_train)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _train(udata_file, blocker / "run")
    assert result.exit_code == 1
    assert "cannot write" in _error(result)


def test_permission_denied_fails_before_training(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(cli_train, "fit", _must_not_train)
    monkeypatch.setattr(Path, "mkdir", denied)
    result = _train(udata_file, tmp_path / "locked" / "run")
    assert result.exit_code == 1
    assert "permission denied" in _error(result) and "--out" in _error(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_fails_before_training(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_train, "fit", _must_not_train)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _train(udata_file, locked / "run")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 1
    assert "permission denied" in _error(result)


def _must_not_train(*args: object, **kwargs: object) -> None:
    raise AssertionError("training started although the run directory cannot be written")


# -- full disks -------------------------------------------------------------------


def test_too_little_free_space_fails_before_the_first_epoch(
    small_ratings: Ratings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Usage:
        free = 1000

    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda _: Usage)
    epochs: list[dict[str, float]] = []
    with pytest.raises(ModelFileError, match="not enough free disk space"):
        fit(small_ratings, QUICK, checkpointer=Checkpointer(tmp_path), on_epoch=epochs.append)
    assert epochs == []


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    small_ratings: Ratings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    files: list[object] = []

    def save_then_fill(obj: object, f: Any) -> None:
        if not isinstance(f, io.BytesIO):  # the write to disk, not the in-memory payload
            files.append(f)
            if len(files) == 2:  # the checkpoint of epoch 2
                _disk_full()
        real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_fill)
    with pytest.raises(ModelFileError, match="disk is full") as info:
        fit(small_ratings, QUICK, checkpointer=Checkpointer(tmp_path))
    assert "checkpoint.pt" in info.value.message
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)

    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file
    assert load_checkpoint(tmp_path / "checkpoint.pt")["trainer"]["epoch"] == 1


def test_disk_full_while_writing_the_run_keeps_what_resume_needs(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "save_file", _disk_full)
    out = tmp_path / "run"
    result = _train(udata_file, out)
    assert result.exit_code == 1
    assert "disk is full" in _error(result) and f"--resume {out}" in _error(result)
    assert not out.exists()
    staging = tmp_path / "run.partial"
    assert sorted(p.name for p in staging.iterdir()) == ["checkpoint.pt", "config.json"]

    # With space again, --resume writes the run without training again.
    monkeypatch.undo()
    monkeypatch.setattr(Trainer, "run_epoch", _must_not_train)
    resumed = runner.invoke(app, ["train", "--resume", str(out)])
    assert resumed.exit_code == 0, resumed.exception
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 3 and metrics["epochs_run"] == 3
    run_module.load_run(out)  # complete and matching its checksums


def test_disk_full_in_save_run_leaves_no_directory(
    small_ratings: Ratings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = fit(small_ratings, QUICK.replace(epochs=1))
    monkeypatch.setattr(run_module.np, "savez", _disk_full)
    with pytest.raises(OSError):
        save_run(result, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_existing_unfinished_run_is_not_silently_restarted(
    udata_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "config.json").write_text("{}")
    result = _train(udata_file, tmp_path / "run")
    assert result.exit_code == 1
    assert "unfinished training" in _error(result) and "--resume" in _error(result)
    assert (tmp_path / "run.partial" / "config.json").read_text() == "{}"


def test_a_failure_before_the_first_epoch_leaves_no_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--ratings", "missing.csv", "--out", "a/b/run"])
    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []
