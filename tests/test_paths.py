"""Paths resrec reads and writes: special files, links, permissions and nested outputs."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.compare import COMPARISON_OUTPUT, compare
from resrec.data.movies import read_movies
from resrec.data.ratings import Ratings
from resrec.errors import ConfigError, DataError, ModelFileError
from resrec.files import AtomicFile, check_input_file, write_file_atomic
from resrec.inference import Recommender
from resrec.run import check_output_folder, load_run, save_run
from resrec.workflow import fit
from tests.test_inference import build_run

runner = CliRunner()


def _clean_error(result: Any, *texts: str) -> None:
    assert result.exit_code == 1, result.output
    for text in texts:
        assert text in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("paths"))


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text("user_id,movie_id\n1,2\n")
    return path


def _score(run: Path, pairs: Path, out: Path | str, *extra: str) -> Any:
    args = ["score", str(run), "--pairs", str(pairs), "--out", str(out), *extra]
    return runner.invoke(app, args)


def _tune_without_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: Path | str
) -> list[str]:
    """``resrec tune --out OUT --overwrite`` arguments, with trials that fail if they run."""

    def no_trials(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran trials before checking --out")

    monkeypatch.setattr("resrec.tune.tune", no_trials)
    ratings = tmp_path / "r.csv"
    ratings.write_text("userId,movieId,rating\n1,1,4\n")
    return ["tune", "--ratings", str(ratings), "--out", str(out), "--overwrite"]


# --------------------------------------------------------------------------- special outputs


def test_score_refuses_a_symlink_out_and_keeps_link_and_target(
    served_run: Path, pairs: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)

    result = _score(served_run, pairs, link, "--overwrite")

    _clean_error(result, f"--out {link} is a symbolic link (to target.csv)")
    assert "hint: give the path it points to, or remove the link" in result.output
    assert link.is_symlink() and os.readlink(link) == "target.csv"
    assert target.read_text() == "old\n"
    assert _score(served_run, pairs, target, "--overwrite").exit_code == 0  # the real file works
    assert link.is_symlink() and target.read_text().startswith("user_id,movie_id,prediction\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is Linux's")
def test_score_never_replaces_dev_full_even_with_overwrite(served_run: Path, pairs: Path) -> None:
    result = _score(served_run, pairs, "/dev/full", "--overwrite")

    _clean_error(result, "--out /dev/full is a character device, not a regular file")
    assert os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_score_never_replaces_a_named_pipe(served_run: Path, pairs: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)

    result = _score(served_run, pairs, fifo, "--overwrite")

    _clean_error(result, "is a named pipe (FIFO), not a regular file; resrec never replaces it")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is Linux's")
def test_tune_refuses_a_device_out_before_the_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _tune_without_trials(tmp_path, monkeypatch, "/dev/full")

    _clean_error(runner.invoke(app, args), "--out /dev/full is a character device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_train_refuses_a_symlink_to_a_run_even_with_overwrite(
    served_run: Path, tmp_path: Path
) -> None:
    link = tmp_path / "latest"
    link.symlink_to(served_run)
    ratings = tmp_path / "r.csv"
    ratings.write_text("userId,movieId,rating\n1,1,4\n")
    args = ["train", "--ratings", str(ratings), "--epochs", "1", "--out", str(link), "--overwrite"]

    _clean_error(runner.invoke(app, args), f"{link} is a symbolic link")
    assert link.is_symlink() and (served_run / "checksums.json").is_file()


@pytest.mark.parametrize("make", ["symlink", "fifo", "file"])
def test_output_folders_refuse_links_and_special_files(make: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    if make == "symlink":
        real = tmp_path / "real"
        real.mkdir()
        (real / "compare.json").write_text("{}")
        (real / "compare.csv").write_text("")
        out.symlink_to(real)
    elif make == "fifo":
        os.mkfifo(out)
    else:
        out.write_text("x")
    expected = {
        "symlink": "is a symbolic link",
        "fifo": "exists and is not a folder: it is a named pipe (FIFO)",
        "file": "exists and is not a folder: it is a file",
    }[make]
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_output_folder(out, overwrite=True, kind=COMPARISON_OUTPUT)
    assert os.path.lexists(out)


# --------------------------------------------------------------------------- write errors


def _disk_full(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "best.json"
    target.write_text("old")
    monkeypatch.setattr("resrec.files.os.fsync", _disk_full)

    with pytest.raises(ModelFileError, match=re.escape(f"cannot write {target}: the disk is full")):
        write_file_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]


def test_score_on_a_full_disk_is_a_clean_error_leaving_nothing(
    served_run: Path, pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "scores" / "out.csv"
    out.parent.mkdir()
    monkeypatch.setattr("resrec.files.os.fsync", _disk_full)

    result = _score(served_run, pairs, out)

    _clean_error(result, f"cannot write {out}: the disk is full")
    assert list(out.parent.iterdir()) == []


def test_atomic_files_get_the_permissions_the_umask_gives(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_file_atomic(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o640


def test_atomic_file_discarded_on_an_error_in_its_block(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), AtomicFile(tmp_path / "x.csv") as out:
        out.write(b"half")
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- input paths


def _make_input(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A path of ``kind`` and the problem a message names for it."""
    path = tmp_path / f"{kind}.csv"
    if kind == "fifo":
        os.mkfifo(path)
        return path, "is a named pipe (FIFO), not a regular file"
    if kind == "folder":
        path.mkdir()
        return path, "is a folder, not a"
    if kind == "device":
        return Path("/dev/null"), "is a character device, not a regular file"
    if kind == "loop":
        path.symlink_to(tmp_path / "loop2.csv")
        (tmp_path / "loop2.csv").symlink_to(path)
        return path, "is a symbolic link loop"
    if kind == "dangling":
        path.symlink_to(tmp_path / "gone.csv")
        return path, f"is a symbolic link to {tmp_path / 'gone.csv'}, which does not exist"
    return path, "no such file"


INPUT_KINDS = ["fifo", "folder", "device", "loop", "dangling", "missing"]


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_ratings_that_are_not_a_regular_file_are_named(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path, problem = _make_input(kind, tmp_path)
    args = ["train", "--ratings", str(path), "--epochs", "1", "--out", "run"]

    _clean_error(runner.invoke(app, args), f"{path}: {problem}")
    assert sorted(p.name for p in tmp_path.iterdir() if "run" in p.name) == []


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_movies_that_are_not_a_regular_file_are_named(
    kind: str, served_run: Path, tmp_path: Path
) -> None:
    path, problem = _make_input(kind, tmp_path)
    args = ["predict", str(served_run), "--user", "1", "--movie", "2", "--movies", str(path)]

    _clean_error(runner.invoke(app, args), f"{path}: {problem}")


@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_pairs_that_are_not_a_regular_file_are_named(
    kind: str, served_run: Path, tmp_path: Path
) -> None:
    path, problem = _make_input(kind, tmp_path)

    _clean_error(_score(served_run, path, tmp_path / "out.csv"), f"{path}: {problem}")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("fifo", "is a named pipe (FIFO), not a run directory"),
        ("loop", "is a symbolic link loop"),
        ("missing", "does not exist"),
    ],
)
def test_run_paths_that_are_not_a_folder_are_named(kind: str, problem: str, tmp_path: Path) -> None:
    path, _ = _make_input(kind, tmp_path)
    result = runner.invoke(app, ["predict", str(path), "--user", "1", "--movie", "2"])

    _clean_error(result, problem, "hint: ")


def test_an_unreadable_input_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.access answers for the user running the tests: root may read anything.
    path = tmp_path / "movies.csv"
    path.write_text("movieId,title,genres\n1,Heat (1995),Action\n")
    monkeypatch.setattr("resrec.files.os.access", lambda *args, **kwargs: False)

    with pytest.raises(DataError, match=r"movies\.csv: permission denied: it cannot be read"):
        read_movies(path)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_a_file_with_mode_000_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating\n1,1,4\n")
    path.chmod(0)
    result = runner.invoke(app, ["train", "--ratings", str(path), "--epochs", "1"])

    _clean_error(result, f"{path}: permission denied")


def test_check_input_file_returns_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("x")
    assert check_input_file(str(path), "a ratings file") == path


# --------------------------------------------------------------------------- folders


def test_comparison_folders_get_the_permissions_of_run_folders(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        compare(small_ratings, ["global-mean"], out_dir=tmp_path / "cmp", save_runs=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "cmp").st_mode) == 0o755
    run = next((tmp_path / "cmp" / "runs").iterdir())
    assert stat.S_IMODE(os.stat(run).st_mode) == 0o755


def _comparison(folder: Path, *runs: str) -> Path:
    folder.mkdir()
    (folder / "compare.json").write_text("{}")
    (folder / "compare.csv").write_text("model\n")
    for name in runs:
        (folder / "runs" / name).mkdir(parents=True)
        (folder / "runs" / name / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    "command", [["predict", "--user", "1", "--movie", "2"], ["serve", "--port", "1"]], ids=str
)
def test_a_comparison_folder_given_as_the_run_is_named(command: list[str], tmp_path: Path) -> None:
    folder = _comparison(tmp_path / "c_o")
    result = runner.invoke(app, [command[0], str(folder), *command[1:]])

    _clean_error(
        result,
        f"{folder} is a comparison folder written by 'resrec compare', not a run directory",
        "--save-runs",
    )
    assert "partial" not in result.output


def test_a_comparison_folder_hint_names_a_run_it_saved(tmp_path: Path) -> None:
    folder = _comparison(tmp_path / "cmp", "mf-seed0")
    result = runner.invoke(app, ["recommend", str(folder), "--user", "1"])

    _clean_error(result, f"hint: give one of the runs it saved, for example {folder}/runs/mf-seed0")


def test_compare_out_inside_a_run_folder_is_refused(
    served_run: Path, small_ratings: Ratings
) -> None:
    out = served_run / "sub" / "deeper"
    message = f"--out {out} is inside the run directory {served_run}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        compare(small_ratings, ["global-mean"], out_dir=out)
    assert not (served_run / "sub").exists()


def test_train_out_inside_a_comparison_folder_is_refused(tmp_path: Path) -> None:
    folder = _comparison(tmp_path / "cmp")
    ratings = tmp_path / "r.csv"
    ratings.write_text("userId,movieId,rating\n1,1,4\n")
    out = folder / "run"
    args = ["train", "--ratings", str(ratings), "--epochs", "1", "--out", str(out)]

    _clean_error(runner.invoke(app, args), f"is inside the comparison folder {folder}")
    assert sorted(p.name for p in folder.iterdir()) == ["compare.csv", "compare.json"]


def test_save_run_inside_a_run_folder_is_refused(served_run: Path, small_ratings: Ratings) -> None:
    result = fit(small_ratings, _tiny())
    with pytest.raises(ConfigError, match="is inside the run directory"):
        save_run(result, served_run / "nested")


def _tiny() -> Any:
    from resrec.config import preset

    return preset("fast").replace(model="global-mean", epochs=1, threads=1)


# --------------------------------------------------------------------------- loading errors


@pytest.fixture
def run_copy(served_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(served_run, tmp_path / "run"))


RUN_FILES = (
    "checksums.json",
    "config.json",
    "history.csv",
    "id_maps.npz",
    "metrics.json",
    "train_pairs.npz",
    "weights.safetensors",
)


@pytest.mark.parametrize("name", RUN_FILES)
@pytest.mark.parametrize("damage", ["delete", "garble"])
def test_every_error_loading_a_run_has_a_hint(run_copy: Path, name: str, damage: str) -> None:
    path = run_copy / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"garbage")
    with pytest.raises(ModelFileError) as caught:
        Recommender.load(run_copy)
    assert caught.value.hint, caught.value.message


def test_missing_train_pairs_names_the_file_with_a_hint(run_copy: Path) -> None:
    (run_copy / "train_pairs.npz").unlink()
    result = runner.invoke(app, ["predict", str(run_copy), "--user", "1", "--movie", "2"])

    _clean_error(result, "train_pairs.npz is missing", "hint: retrain, or restore the run")


def test_an_unfinished_training_is_named_with_resume_hint(run_copy: Path, tmp_path: Path) -> None:
    staging = tmp_path / "new.partial"
    staging.mkdir()
    shutil.copy(run_copy / "config.json", staging)
    for given in (tmp_path / "new", staging):
        with pytest.raises(ModelFileError) as caught:
            load_run(given)
        assert caught.value.hint is not None
        assert f"resrec train --resume {tmp_path / 'new'}" in caught.value.hint


def test_a_data_folder_given_as_the_run_is_not_called_incomplete(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t1\t4\t0\n")
    with pytest.raises(ModelFileError, match="is not a run directory: it holds none of"):
        load_run(tmp_path)


def test_the_damage_test_covers_every_file_a_run_loads(served_run: Path) -> None:
    written = {p.name for p in served_run.iterdir()} - {"loss.png", "mse.png", "timings.csv"}
    assert written == set(RUN_FILES)


# --------------------------------------------------------------------------- files inside runs


@pytest.mark.parametrize("name", ["config.json", "new.csv"])
def test_score_out_inside_a_run_is_refused_even_with_overwrite(
    served_run: Path, pairs: Path, tmp_path: Path, name: str
) -> None:
    run = shutil.copytree(served_run, tmp_path / "run")
    before = (run / "config.json").read_bytes()

    result = _score(run, pairs, run / name, "--overwrite")

    _clean_error(result, f"is inside the run directory {run}", "write the predictions outside it")
    assert (run / "config.json").read_bytes() == before
    assert not (run / "new.csv").exists()
    Recommender.load(run)  # the run still loads: its checksums hold


def test_score_out_inside_a_comparison_is_refused(
    served_run: Path, pairs: Path, tmp_path: Path
) -> None:
    folder = _comparison(tmp_path / "cmp")

    result = _score(served_run, pairs, folder / "compare.csv", "--overwrite")

    _clean_error(result, f"is inside the comparison folder {folder}")
    assert (folder / "compare.csv").read_text() == "model\n"


def test_tune_out_inside_a_run_is_refused_before_the_trials(
    served_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _tune_without_trials(tmp_path, monkeypatch, served_run / "config.json")

    _clean_error(runner.invoke(app, args), f"is inside the run directory {served_run}")


def test_synth_refuses_a_linked_folder_and_a_run_folder(served_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    small = ["--users", "50", "--movies", "40", "--ratings", "1500"]

    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "link"), *small])
    _clean_error(result, "is a symbolic link")
    assert list(target.iterdir()) == []

    run = shutil.copytree(served_run, tmp_path / "run")
    result = runner.invoke(app, ["synth", "--out", str(run), *small, "--overwrite"])
    _clean_error(result, f"is inside the run directory {run}")
    assert not (run / "ratings.csv").exists()
