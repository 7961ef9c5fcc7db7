"""User mistakes found by trying to break the command line: each is one clean error."""

from __future__ import annotations

import bz2
import json
import lzma
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.compare import compare
from resrec.data import read_ratings
from resrec.data.ratings import Ratings, RatingScale
from resrec.errors import ConfigError
from tests.test_inference import build_run

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


# ------------------------------------------------------------------ files that are not text


def _ratings_text() -> bytes:
    return b"userId,movieId,rating,timestamp\n1,10,4.0,1\n2,10,3.0,1\n"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            bz2.compress(_ratings_text()),
            "looks like a bz2-compressed file; resrec reads plain text",
        ),
        (lzma.compress(_ratings_text()), "looks like an xz-compressed file"),
        (b"\x28\xb5\x2f\xfd" + _ratings_text(), "looks like a zstd-compressed file"),
        (b"PK\x03\x04" + _ratings_text(), "looks like a zip archive"),
        (_ratings_text() + b"3,\x00\x00,4,1\n", "not a text file (byte 0x00 at line 4, column 3)"),
    ],
    ids=["bz2", "xz", "zstd", "zip", "nul"],
)
def test_compressed_or_binary_ratings_are_named_as_such(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "ratings.csv"
    path.write_bytes(data)
    out = tmp_path / "run"

    result = _train(path, "--out", str(out))

    _clean_error(result, f"{path}: {message}")
    assert not out.exists() and not (tmp_path / "run.partial").exists()


def test_long_bad_field_is_cut_short_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n2," + "x" * 100_000 + ",3,1\n")

    result = _train(path, "--out", str(tmp_path / "run"))

    _clean_error(result, "found 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'… (100,000 characters)")
    assert len(result.output) < 500


@pytest.mark.parametrize("column", [0, 1, 3])
def test_id_of_5000_digits_is_out_of_range_not_a_python_error(tmp_path: Path, column: int) -> None:
    fields = ["2", "10", "3.0", "1"]
    fields[column] = "9" * 5000
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,1\n" + ",".join(fields) + "\n")

    result = _train(path, "--out", str(tmp_path / "run"))

    _clean_error(result, f"ratings.csv:3:{column + 1} (")
    assert "is out of range: too large for a 64-bit integer" in result.output
    assert "4300" not in result.output and "int_max_str_digits" not in result.output


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"epochs": ' + "9" * 5000 + "}", "a number is out of range"),
        ('{"hidden": [' + "1," * 5000 + "1.5]}", "hidden must be a list of ints; got (1, 1, 1"),
        ('{"activation": "' + "x" * 5000 + '"}', "… (5,000 characters)"),
    ],
    ids=["huge-number", "long-list", "long-string"],
)
def test_config_file_values_are_checked_and_cut_short(
    udata_file: Path, tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(text)

    result = _train(udata_file, "--config", str(config), "--out", str(tmp_path / "run"))

    _clean_error(result, message)
    assert len(result.output) < 400


@pytest.mark.parametrize(
    "data, message",
    [(bz2.compress(b'{"epochs": 2}'), "looks like a bz2-compressed file"), (b"{\x00}", "0x00")],
)
def test_binary_config_file_is_a_clean_error(
    udata_file: Path, tmp_path: Path, data: bytes, message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(data)

    _clean_error(_train(udata_file, "--config", str(config)), message)


@pytest.fixture(scope="module")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("mistakes"))


def test_binary_pairs_file_is_a_clean_error(served_run: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(lzma.compress(b"user_id,movie_id\n1,2\n"))
    out = tmp_path / "out.csv"

    result = runner.invoke(
        app, ["score", str(served_run), "--pairs", str(pairs), "--out", str(out)]
    )

    _clean_error(result, "looks like an xz-compressed file; resrec reads plain text CSV")
    assert not out.exists()


def test_pairs_with_an_id_of_5000_digits_are_reported_as_out_of_range(
    served_run: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n1," + "9" * 5000 + "\n")

    result = runner.invoke(
        app, ["score", str(served_run), "--pairs", str(pairs), "--out", str(tmp_path / "o.csv")]
    )

    assert result.exit_code == 0, result.output
    assert f"{pairs}:3: movie_id '9999" in result.output and "is out of range" in result.output
    assert len(result.output) < 600


@pytest.mark.parametrize("item", ["9" * 5000 + ":4", "x" * 5000])
def test_rated_items_are_cut_short_and_range_checked(served_run: Path, item: str) -> None:
    result = runner.invoke(app, ["recommend", str(served_run), "--rated", f"2:5,{item}"])

    _clean_error(result, "--rated item 2")
    assert len(result.output) < 300


# --------------------------------------------------------------------------- synth


SYNTH_SIZE = ["--users", "50", "--movies", "300", "--ratings", "2000"]


def _synth(out: Path, *extra: str) -> object:
    return runner.invoke(app, ["synth", "--out", str(out), *SYNTH_SIZE, *extra])


def test_synth_checks_its_sizes_before_creating_anything(tmp_path: Path) -> None:
    out = tmp_path / "new" / "data"

    result = runner.invoke(app, ["synth", "--out", str(out), "--users", "50", "--ratings", "10"])

    _clean_error(result, "n_ratings must lie between")
    assert not (tmp_path / "new").exists()


def test_synth_refuses_to_replace_ratings_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "ratings.csv").write_text("mine")

    _clean_error(_synth(out), "ratings.csv already exists")
    assert (out / "ratings.csv").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["ratings.csv"]

    assert _synth(out, "--overwrite").exit_code == 0
    assert (out / "ratings.csv").read_text().startswith("userId,movieId,rating,timestamp\n")
    assert sorted(p.name for p in out.iterdir()) == ["movies.csv", "ratings.csv"]


def test_synth_refuses_to_replace_movies_without_overwrite(tmp_path: Path) -> None:
    assert _synth(tmp_path / "data").exit_code == 0
    (tmp_path / "data" / "ratings.csv").unlink()

    _clean_error(_synth(tmp_path / "data"), "movies.csv already exists")
    assert not (tmp_path / "data" / "ratings.csv").exists()


def test_synth_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")

    _clean_error(_synth(afile, "--overwrite"), "exists and is not a folder")
    assert afile.read_text() == "x"


def test_synth_leaves_nothing_behind_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resrec.data import synth

    def fail(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_write_movies_csv", fail)
    out = tmp_path / "new" / "data"

    with pytest.raises(KeyboardInterrupt):
        synth.write_synthetic_csv(out / "ratings.csv", 50, 300, 2000)
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- compare --out


def _compare(udata: Path, out: Path, *extra: str) -> object:
    args = ["compare", "--ratings", str(udata), "--models", "global-mean", "--out", str(out)]
    return runner.invoke(app, [*args, *extra])


def test_compare_refuses_an_earlier_comparison_without_overwrite(
    udata_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    assert _compare(udata_file, out).exit_code == 0
    (out / "compare.md").write_text("earlier")

    _clean_error(_compare(udata_file, out), f"comparison folder {out} already exists")
    assert (out / "compare.md").read_text() == "earlier"

    assert _compare(udata_file, out, "--overwrite").exit_code == 0
    assert (out / "compare.md").read_text() != "earlier"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_compare_overwrite_replaces_only_a_comparison(udata_file: Path, tmp_path: Path) -> None:
    precious = tmp_path / "important"
    precious.mkdir()
    (precious / "thesis.txt").write_text("precious")

    _clean_error(_compare(udata_file, precious, "--overwrite"), "not a resrec comparison")
    assert (precious / "thesis.txt").read_text() == "precious"


def test_compare_leaves_nothing_behind_when_it_fails(
    small_ratings: Ratings, tmp_path: Path
) -> None:
    def fail(row: dict[str, object]) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        compare(small_ratings, ["global-mean"], out_dir=tmp_path / "cmp", on_run=fail)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- serve


@pytest.mark.parametrize(
    "host, message",
    [
        ("not..a..host", "--host 'not..a..host' is not a valid host name or IP address"),
        ("999.1.1.1", "--host '999.1.1.1' is not a valid IPv4 address"),
        ("-bad-.example", "is not a valid host name"),
        ("", "is not a valid host name"),
        ("::1::2", "is not a valid IPv6 address"),
        ("x" * 300, "… (300 characters) is not a valid host name"),
        ("192.0.2.1", "--host 192.0.2.1 is not an address of this machine"),
    ],
)
def test_serve_refuses_a_bad_host_before_starting(tmp_path: Path, host: str, message: str) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path), "--host", host])

    _clean_error(result, message)
    assert "Errno" not in result.output


@pytest.mark.parametrize("port", ["0", "65536", "-1", "999999"])
def test_serve_refuses_a_port_out_of_range(tmp_path: Path, port: str) -> None:
    result = runner.invoke(app, ["serve", str(tmp_path), "--port", port])

    _clean_error(result, f"--port must be from 1 to 65535; got {port}")


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = runner.invoke(app, ["serve", str(tmp_path), "--port", str(port)])

    _clean_error(result, f"port {port} on 127.0.0.1 is already in use")
    assert "Errno" not in result.output


# --------------------------------------------------------------------------- --duplicates mean


def test_duplicates_help_says_how_the_mean_is_rounded() -> None:
    for command in ("train", "compare"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        text = " ".join(result.output.replace("│", " ").split())
        assert "mean rounded to the nearest step of the rating scale" in text, text
        assert "(halfway: the higher step" in text


# --------------------------------------------------------------------------- --resume


class _Stop(Exception):
    """Raised after the first epoch to interrupt a training."""


def _interrupted(udata: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> None:
    import resrec.cli.train as cli_train

    real_fit = cli_train.fit

    def crash_after_first_epoch(*args: Any, **kwargs: Any) -> Any:
        def crash(record: dict[str, float]) -> None:
            raise _Stop

        return real_fit(*args, **{**kwargs, "on_epoch": crash})

    monkeypatch.setattr(cli_train, "fit", crash_after_first_epoch)
    result = runner.invoke(
        app, ["train", "--ratings", str(udata), "--epochs", "2", "--out", str(out), *extra]
    )
    assert isinstance(result.exception, _Stop), result.output
    monkeypatch.setattr(cli_train, "fit", real_fit)


def _resume(out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["train", "--resume", str(out), *extra])


def test_resume_refuses_a_different_preset(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch, "--preset", "fast")

    result = _resume(out, "--preset", "tutorial")

    _clean_error(result, "--preset tutorial differs from the run's preset 'fast'")
    assert (tmp_path / "run.partial" / "checkpoint.pt").is_file()

    result = _resume(out, "--preset", "fast", "--lr", "0.0005")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["lr"] == 0.0005 and config["optimizer"] == "adam"


def test_resume_applies_a_config_file_and_options_over_it(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lr": 0.01, "momentum": 0.5}))

    result = _resume(out, "--config", str(config), "--lr", "0.02")

    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["lr"], saved["momentum"]) == (0.02, 0.5)


def test_resume_refuses_a_different_reading_option(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    _interrupted(udata_file, out, monkeypatch)

    _clean_error(_resume(out, "--duplicates", "mean"), "--duplicates mean differs from the run's")
    _clean_error(_resume(out, "--sep", ";"), "--sep ; differs from the run's --sep (not given)")
    assert _resume(out, "--ratings", str(udata_file), "--duplicates", "error").exit_code == 0


def test_tune_refuses_to_replace_an_existing_file_without_overwrite(
    udata_file: Path, tmp_path: Path
) -> None:
    best = tmp_path / "best.json"
    best.write_text('{"kept": true}')
    result = runner.invoke(
        app, ["tune", "--ratings", str(udata_file), "--trials", "1", "--out", str(best)]
    )
    _clean_error(result, "already exists")
    assert best.read_text() == '{"kept": true}'
    folder = runner.invoke(
        app, ["tune", "--ratings", str(udata_file), "--trials", "1", "--out", str(tmp_path)]
    )
    _clean_error(folder, "is a folder")


def _unwritable_outs(tmp_path: Path) -> list[tuple[Path, str]]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [
        (Path("/proc/out.json"), "cannot write a file in /proc"),
        (tmp_path / "missing" / "out.json", "missing does not exist; expected an existing folder"),
        (afile / "out.json", "afile is not a folder; expected an existing folder"),
    ]


def test_tune_checks_that_out_can_be_written_before_the_trials(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_trials(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran trials before checking --out")

    monkeypatch.setattr("resrec.tune.tune", no_trials)
    for out, message in _unwritable_outs(tmp_path):
        args = ["tune", "--ratings", str(udata_file), "--trials", "1", "--out", str(out)]
        _clean_error(runner.invoke(app, args), message)
    assert not (tmp_path / "missing").exists()


def test_score_checks_that_out_can_be_written_before_scoring(
    served_run: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n")
    for out, message in _unwritable_outs(tmp_path):
        args = ["score", str(served_run), "--pairs", str(pairs), "--out", str(out)]
        _clean_error(runner.invoke(app, args), message)


# --------------------------------------------------------------------------- using a run


RUN_COMMANDS = [
    ["predict", "--user", "1", "--movie", "2"],
    ["recommend", "--user", "1"],
    ["similar", "--movie", "2"],
    ["explain", "--user", "1", "--movie", "2"],
    ["score", "--pairs", "PAIRS", "--out", "OUT"],
    ["serve", "--port", "PORT"],
    ["serve", "--port", "PORT", "--workers", "2"],
]


def _use_run(run: Path, command: list[str], tmp_path: Path) -> Any:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    places = {"PAIRS": str(pairs), "OUT": str(tmp_path / "out.csv"), "PORT": port}
    args = [places.get(a, a) for a in command[1:]]
    return runner.invoke(app, [command[0], str(run), *args])


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=" ".join)
def test_a_file_given_as_the_run_is_named_as_a_file(
    served_run: Path, command: list[str], tmp_path: Path
) -> None:
    result = _use_run(served_run / "config.json", command, tmp_path)

    _clean_error(result, "config.json is a file, not a run directory")
    assert "does not exist" not in result.output


@pytest.fixture(scope="module")
def bias_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bias-runs")
    return {kind: build_run(folder / kind, model=kind) for kind in ("biases", "global-mean")}


@pytest.mark.parametrize("kind", ["biases", "global-mean"])
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=" ".join)
def test_runs_without_embeddings_are_refused_naming_the_run(
    bias_runs: dict[str, Path], kind: str, command: list[str], tmp_path: Path
) -> None:
    run = bias_runs[kind]
    result = _use_run(run, command, tmp_path)

    _clean_error(result, f"{run} holds a {kind} model, which has no embeddings")
    assert "train one with 'resrec train --model residual'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


# --------------------------------------------------------------------------- movies files


def _movie_ids(run: Path) -> list[int]:
    return [int(m) for m in np.load(run / "id_maps.npz")["movie_id"]]


def test_a_movies_file_of_another_layout_family_is_warned_about(
    served_run: Path, tmp_path: Path
) -> None:
    movies = tmp_path / "movies.dat"
    movies.write_text("".join(f"{m}::Film {m} (1990)::Drama\n" for m in _movie_ids(served_run)))

    result = runner.invoke(
        app, ["recommend", str(served_run), "--user", "1", "--movies", str(movies)]
    )

    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "WARNING" in line]
    assert f"movies file {movies} may belong to another MovieLens release" in warning
    assert "a movies.dat file, but the run's movielens-csv ratings come with movies.csv" in warning
    assert "(100.0%)" in warning


def test_a_movies_file_listing_few_trained_movies_is_warned_about(
    served_run: Path, tmp_path: Path
) -> None:
    movies = tmp_path / "movies.csv"
    listed = _movie_ids(served_run)[:10]
    movies.write_text("movieId,title,genres\n" + "".join(f"{m},Film {m},Drama\n" for m in listed))

    result = runner.invoke(
        app, ["similar", str(served_run), "--movie", "2", "--movies", str(movies)]
    )

    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if "WARNING" in line]
    assert "fewer than 90% of the trained movies listed" in warning
    assert f"{movies}" in warning and "it lists 10 of the model's" in warning


def test_the_runs_own_movies_file_gives_no_warning(served_run: Path) -> None:
    movies = served_run.parent / "data" / "movies.csv"

    result = runner.invoke(
        app, ["recommend", str(served_run), "--user", "1", "--movies", str(movies)]
    )

    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        ("99", "--threshold must be within the rating scale of"),
        ("0", "--threshold must be within the rating scale of"),
        ("nan", "--threshold must be a finite rating; got nan"),
        ("inf", "--threshold must be a finite rating; got inf"),
    ],
)
def test_compare_checks_the_threshold_before_training(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: str, message: str
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained before checking --threshold")

    monkeypatch.setattr("resrec.compare.fit", no_training)
    out = tmp_path / "cmp"

    result = _compare(udata_file, out, "--threshold", threshold)

    _clean_error(result, message)
    assert not out.exists()


def test_compare_refuses_a_threshold_no_rating_reaches(udata_file: Path) -> None:
    ratings = read_ratings(udata_file, scale=RatingScale(1, 10, 1))

    with pytest.raises(ConfigError, match=r"no rating in .* reaches it"):
        compare(ratings, ["global-mean"], threshold=9)


def test_compare_into_an_unwritable_place_is_a_clean_error(udata_file: Path) -> None:
    _clean_error(_compare(udata_file, Path("/proc/cmp")), "cannot write /proc/cmp")


@pytest.mark.parametrize("rating", ["inf", "-inf", "nan", "1e999"])
def test_rated_non_finite_ratings_are_refused_without_warnings(
    served_run: Path, rating: str
) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = runner.invoke(app, ["recommend", str(served_run), "--rated", f"2:5,3:{rating}"])

    _clean_error(result, f"--rated item 2: rating '{rating}' is not a finite number")
    assert "Warning" not in result.output


def test_fold_in_refuses_non_finite_ratings_without_warnings(served_run: Path) -> None:
    import warnings

    from resrec.inference import Recommender

    rec = Recommender.load(served_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match="rating inf is not a finite number"):
            rec.fold_in({2: 5.0, 5: float("inf")})


# --------------------------------------------------------------------------- plurals


def test_counted_uses_the_singular_only_for_one() -> None:
    from resrec.errors import counted

    assert counted(1, "bad row") == "1 bad row"
    assert counted(0, "bad row") == "0 bad rows"
    assert counted(12_345, "movie") == "12,345 movies"
    assert counted(2, "process", "processes") == "2 processes"


def test_score_counts_one_bad_row_in_the_singular(served_run: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user_id,movie_id\n1,2\n1,x\n")
    out = tmp_path / "out.csv"

    result = runner.invoke(
        app, ["score", str(served_run), "--pairs", str(pairs), "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    assert "scored 1 of 2 rows" in result.output and "1 bad row left out:" in result.output


def test_recommend_counts_one_rated_movie_in_the_singular(served_run: Path) -> None:
    result = runner.invoke(app, ["recommend", str(served_run), "--rated", "2:5", "-n", "3"])

    assert result.exit_code == 0, result.output
    assert "1 rated movie left out" in result.output
    assert (
        "folded in from 1 rating\n" in result.output or "folded in from 1 rating;" in result.output
    )


def test_tune_counts_one_trial_in_the_singular(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    def one_trial(*args: object, **kwargs: object) -> object:
        return SimpleNamespace(best_valid_rmse=0.9, trials=[{}], seconds=1.0)

    monkeypatch.setattr("resrec.tune.tune", one_trial)
    out = tmp_path / "best.json"

    result = runner.invoke(
        app, ["tune", "--ratings", str(udata_file), "--trials", "1", "--out", str(out)]
    )

    assert result.exit_code == 0, result.output
    assert "after 1 trial (" in result.output
    assert "read 1,500 ratings of 60 users and 40 movies" in result.output
