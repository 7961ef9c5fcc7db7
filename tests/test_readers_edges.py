"""Edge cases of the ratings reader found by a new user: headers, scales, swaps, separators.

Each test writes a tiny file into ``tmp_path``; messages are checked with
their ``FILE:LINE:COLUMN`` prefix.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from resrec.cli import app
from resrec.data import readers
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, RatingScale
from resrec.data.readers import detect_layout, read_ratings
from resrec.errors import ConfigError, DataError

ML_HEADER = "userId,movieId,rating,timestamp\n"
ROWS = "7,13,4.0,881250949\n1,5,5.0,881250950\n8,7,3.0,881250951\n"

runner = CliRunner()


def write(folder: Path, name: str, text: str, *, gz: bool = False) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read(path: Path, **options: object) -> readers.Ratings:
    return read_ratings(path, cache=False, **options)  # type: ignore[arg-type]


def error_of(path: Path, **options: object) -> DataError:
    with pytest.raises(DataError) as error:
        read(path, **options)
    return error.value


def assert_at(error: DataError, path: Path, line: int, column: int, *fragments: str) -> None:
    message = str(error)
    assert message.startswith(f"{path}:{line}:{column}"), message
    assert (error.line, error.column) == (line, column)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def whole_star_lines(n: int, sep: str) -> list[str]:
    """``n`` ratings lines of distinct (user, movie) pairs, whole stars 1 to 5."""
    return [
        sep.join([str(1 + i // 10), str(1 + i % 10), str(1 + i % 5), str(1000 + i)])
        for i in range(n)
    ]


# --------------------------------------------------------------------------- missing header


@pytest.mark.parametrize(
    "name, text, header",
    [
        ("ratings.csv", ROWS, "userId,movieId,rating,timestamp"),
        ("ml-latest-small/ratings.csv", "1,31,2.5,1260759144\n", "userId,movieId,rating,timestamp"),
        ("rating.csv", "1,2,3.5,2005-04-02 23:53:47\n", "userId,movieId,rating,timestamp"),
        ("edited_rating.csv", "0,1,2,3.5,0\n", "userId,movieId,rating,movie_idx"),
        ("ratings.csv", "7\t13\t4\t881250949\n", "userId,movieId,rating,timestamp"),
    ],
    ids=["movielens-csv", "ml-latest-small", "kaggle-csv", "tutorial-csv", "tabs"],
)
def test_file_named_like_a_header_layout_needs_its_header(
    tmp_path: Path, name: str, text: str, header: str
) -> None:
    path = write(tmp_path, name, text)

    error = error_of(path)

    assert_at(error, path, 1, 1, "missing header", f"expected the header {header}")
    assert f"detected from the file name {path.name!r}" in str(error)
    assert error.hint is not None and "--no-header" in error.hint and "--columns" in error.hint
    assert detect_layout(path) != "delimited"


def test_gzipped_ratings_csv_without_header_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv.gz", ROWS, gz=True)

    assert_at(error_of(path), path, 1, 1, "missing header", "userId,movieId,rating,timestamp")


@pytest.mark.parametrize(
    "layout, first",
    [
        ("movielens-csv", "1,2,3.5,100"),
        ("kaggle-csv", "1,2,3.5,2005-04-02 23:53:47"),
        ("tutorial-csv", "0,1,2,3.5,0"),
    ],
)
def test_forced_header_layout_refuses_a_first_line_of_data(
    tmp_path: Path, layout: str, first: str
) -> None:
    path = write(tmp_path, "export.txt", first + "\n")

    error = error_of(path, layout=layout)

    assert_at(error, path, 1, 1, "missing header", f"of layout {layout!r}", repr(first))
    assert "detected from the file name" not in str(error)


def test_ratings_csv_without_header_reads_with_no_header(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", ROWS)

    ratings = read(path, header=False)

    assert ratings.layout == "delimited"
    assert ratings.user_id.tolist() == [7, 1, 8]
    assert ratings.rating.tolist() == [4.0, 5.0, 3.0]


def test_ratings_csv_with_another_header_is_read_by_its_names(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "item,user,score\n13,7,4\n5,1,5\n")

    ratings = read(path)

    assert ratings.layout == "delimited"
    assert (ratings.user_id.tolist(), ratings.movie_id.tolist()) == ([7, 1], [13, 5])


def test_generic_headerless_file_is_read_and_the_guess_noted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "c26_missing_header.csv", ROWS)

    with caplog.at_level(logging.INFO, logger="resrec.data.readers"):
        ratings = read(path)

    assert ratings.layout == "delimited"
    assert len(ratings) == 3
    assert "no header: the first line holds data" in ratings.notes
    assert "no header: the first line holds data" in caplog.text


def test_cli_refuses_ratings_csv_without_header(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", ROWS)

    result = runner.invoke(app, ["train", "--ratings", str(path), "--out", str(tmp_path / "r")])

    assert result.exit_code == 1
    assert f"error: {path}:1:1: missing header" in result.output
    assert "hint:" in result.output and "--no-header" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- inferred scale


def test_one_half_star_among_whole_stars_is_refused_with_its_line(tmp_path: Path) -> None:
    lines = whole_star_lines(59, "::")
    lines.insert(4, "1::99::3.5::881250949")
    path = write(tmp_path, "ratings.dat", "\n".join(lines) + "\n")

    error = error_of(path)

    assert_at(
        error,
        path,
        5,
        3,
        "(rating)",
        "rating 3.5 is off the scale; expected a rating from 1 to 5 in steps of 1",
        "inferred from the data",
    )
    assert error.hint is not None
    assert "only 1 rating of 60 (1.7%) is a half star" in error.hint
    assert "at least 5%" in error.hint
    assert "--scale 0.5:5:0.5" in error.hint


def test_half_stars_are_inferred_when_they_are_a_real_share(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [*whole_star_lines(18, "::"), "9::1::3.5::1", "9::2::0.5::1"]  # 2 of 20: 10%
    path = write(tmp_path, "ratings.dat", "\n".join(lines) + "\n")

    with caplog.at_level(logging.INFO, logger="resrec.data.readers"):
        ratings = read(path)

    assert ratings.scale == HALF_STARS
    note = (
        "rating scale inferred from the data: 0.5 to 5 in steps of 0.5 "
        "(2 half stars among 20 ratings)"
    )
    assert note in ratings.notes
    assert note in caplog.text


def test_whole_stars_are_inferred_and_noted(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.dat", "\n".join(whole_star_lines(10, "::")) + "\n")

    ratings = read(path)

    assert ratings.scale == WHOLE_STARS
    assert (
        "rating scale inferred from the data: 1 to 5 in steps of 1 (no half stars)" in ratings.notes
    )


def test_delimited_files_follow_the_same_half_star_rule(tmp_path: Path) -> None:
    lines = whole_star_lines(40, ";")
    lines[30] = "9;9;4.5;1"
    path = write(tmp_path, "export.txt", "\n".join(lines) + "\n")

    assert_at(error_of(path), path, 31, 3, "rating 4.5 is off the scale", "1 to 5 in steps of 1")
    assert read(path, scale="0.5:5:0.5").rating.tolist()[30] == 4.5


def test_half_star_rule_names_the_line_after_a_header(tmp_path: Path) -> None:
    lines = whole_star_lines(30, ",")
    lines[0] = "1,1,2.5,1000"
    path = write(tmp_path, "export.csv", "user,movie,rating,ts\n" + "\n".join(lines) + "\n")

    assert_at(error_of(path), path, 2, 3, "(rating)", "rating 2.5 is off the scale")


# --------------------------------------------------------------------------- swapped columns


def test_small_udata_with_swapped_columns_is_recognised(tmp_path: Path) -> None:
    # rating, user, movie written where user, movie, rating is expected; movie ids 1 to 15
    rng = np.random.default_rng(3)
    lines = [
        f"{rng.integers(1, 6)}\t{1 + i // 15}\t{1 + i % 15}\t{881250949 + i}" for i in range(60)
    ]
    path = write(tmp_path, "u.data", "\n".join(lines) + "\n")
    first_bad = next(i for i, line in enumerate(lines) if int(line.split("\t")[2]) > 5)

    error = error_of(path)

    assert_at(error, path, first_bad + 1, 3, "(rating)", "of the first 60 values", "look swapped")
    assert error.hint is not None
    assert "--columns rating,movie_id,user_id,timestamp" in error.hint
    assert "--scale" in error.hint


def test_small_ratings_csv_with_swapped_integer_columns_is_recognised(tmp_path: Path) -> None:
    lines = [f"{1 + i // 6},{1 + i % 5},{1 + i % 15},{881250949 + i}" for i in range(60)]
    path = write(tmp_path, "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")

    error = error_of(path)

    assert_at(error, path, 7, 3, "(rating)", "rating 6 is off the scale", "look swapped")
    assert error.hint is not None and "columns=user_id,rating,movie_id,timestamp" in error.hint


def test_a_few_off_scale_ratings_are_not_taken_for_swapped_columns(tmp_path: Path) -> None:
    lines = whole_star_lines(20, ",")
    lines[3] = "1,4,13,1003"
    path = write(tmp_path, "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")

    error = error_of(path)

    assert_at(error, path, 5, 3, "rating 13 is off the scale; expected a rating from 0.5 to 5")
    assert "swapped" not in str(error)


# --------------------------------------------------------------------------- separators


@pytest.mark.parametrize("sep", ["\\t", "tab", "TAB", "\t"])
def test_tab_separator_may_be_typed_as_an_escape_or_a_word(tmp_path: Path, sep: str) -> None:
    path = write(tmp_path, "export.txt", "7\t13\t4\t881250949\n1\t5\t5\t881250950\n")

    ratings = read(path, sep=sep)

    assert ratings.user_id.tolist() == [7, 1]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [881250949, 881250950]


@pytest.mark.parametrize("sep", ["\\|", "\\s+", "\\x09"])
def test_other_backslash_separators_are_refused(tmp_path: Path, sep: str) -> None:
    path = write(tmp_path, "export.txt", "7|13|4\n")

    with pytest.raises(ConfigError, match="holds a backslash") as error:
        read(path, sep=sep)

    assert f"sep '{sep}'" in str(error.value)


@pytest.mark.parametrize(
    "line, sep, advice",
    [
        ("7,13,4,881250949", ";", "the line holds ',': pass sep=',' (--sep ','"),
        ("7\t13\t4\t881250949", ",", "the line holds '\\t': pass sep='\\t' (--sep tab"),
        ("7_13_4_881250949", ",", "pass the text that separates the fields (--sep"),
    ],
)
def test_separator_missing_from_the_first_line_is_refused(
    tmp_path: Path, line: str, sep: str, advice: str
) -> None:
    path = write(tmp_path, "export.txt", line + "\n")

    error = error_of(path, sep=sep)

    assert_at(error, path, 1, 1, f"the separator {sep!r} does not occur in the first line")
    assert error.hint is not None and advice in error.hint


def test_multi_character_separator_still_works(tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", "7::13::4::881250949\n1::5::5::881250950\n")

    ratings = read(path, sep="::", columns="user_id,movie_id,rating,-")

    assert (ratings.user_id.tolist(), ratings.movie_id.tolist()) == ([7, 1], [13, 5])


def test_cli_accepts_a_typed_tab_separator(tmp_path: Path) -> None:
    lines = whole_star_lines(60, "\t")
    path = write(tmp_path, "export.txt", "\n".join(lines) + "\n")
    out = tmp_path / "run"

    options = ["--sep", "\\t", "--epochs", "1", "--threads", "1", "--out", str(out)]
    result = runner.invoke(app, ["train", "--ratings", str(path), *options])

    assert result.exit_code == 0, result.output
    assert "read 60 ratings" in result.output
    assert (out / "config.json").is_file()


# --------------------------------------------------------------------------- numbers


def line_checker_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Arrow refuse everything, so every line goes through the Python line checks."""
    monkeypatch.setattr(readers, "_arrow_parse", lambda *args, **kwargs: None)


def outcome(path: Path) -> tuple[str, object]:
    try:
        ratings = read(path)
    except DataError as error:
        return "error", str(error)
    timestamp = None if ratings.timestamp is None else ratings.timestamp.tolist()
    columns = (ratings.user_id.tolist(), ratings.movie_id.tolist(), ratings.rating.tolist())
    return "read", (*columns, timestamp)


NUMBER_TEXTS = [
    " 3", "3 ", "\t3", "3\t", " 3 ", "+3", " +3 ", "+0", "-0", "003", "3.", "3.0", ".5",
    "+3.5", "3.5e0", "3e0", "+-3", "++3", "3 4", "-3", "0x3", "1_0", "３", "3,5", "inf", "nan",
]  # fmt: skip


@pytest.mark.parametrize("column", [0, 1, 2, 3], ids=["user", "movie", "rating", "timestamp"])
@pytest.mark.parametrize("text", NUMBER_TEXTS)
def test_fast_and_line_by_line_paths_read_numbers_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: int, text: str
) -> None:
    fields = ["1", "2", "3", "4"]
    fields[column] = text
    sep = "\t" if "," in text else ","
    body = "\n".join(["5,6,4.5,7", ",".join(fields), "8,9,1.0,10"]).replace(",", sep)
    path = write(tmp_path, "ratings.csv", ML_HEADER.replace(",", sep) + body + "\n")
    if sep == "\t":
        path = write(tmp_path, "ratings.tsv", ML_HEADER.replace(",", sep) + body + "\n")

    fast = outcome(path)
    line_checker_only(monkeypatch)
    slow = outcome(path)

    assert fast == slow


@pytest.mark.parametrize(
    "name, text",
    [
        ("c20_plus_id", "+3,99,3,881250949"),
        ("c20l_rating_plus", "3,99,+3,881250949"),
        ("c20b_space_id", " 3,99,3,881250949"),
        ("c20c_space_after_id", "3 ,99,3,881250949"),
        ("c20m_rating_space", "3,99, 3 ,881250949"),
        ("timestamp_plus_and_blanks", "3,99,3, +881250949 "),
    ],
)
def test_blanks_around_numbers_and_a_plus_sign_are_read_in_every_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    path = write(tmp_path, "ratings.csv", ML_HEADER + ROWS + text + "\n")

    for _ in ("fast", "line by line"):
        ratings = read(path)
        assert ratings.user_id.tolist() == [7, 1, 8, 3]
        assert ratings.movie_id.tolist()[-1] == 99
        assert ratings.rating.tolist()[-1] == 3.0
        assert ratings.timestamp is not None and ratings.timestamp.tolist()[-1] == 881250949
        line_checker_only(monkeypatch)


@pytest.mark.parametrize("text", ["+-3", "3 4", "1_0", "３", "0x3"])
def test_malformed_ids_are_refused_naming_the_field(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "ratings.csv", ML_HEADER + ROWS + f"{text},99,3,881250949\n")

    assert_at(error_of(path), path, 5, 1, "(userId)", "expected a whole-number user_id >= 0")


@pytest.mark.parametrize("date", [" 2005-04-02 23:53:47", "2005-04-02 23:53:47 "])
def test_blanks_around_a_date_time_are_refused_by_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, date: str
) -> None:
    path = write(tmp_path, "rating.csv", ML_HEADER + f"1,2,3.5,2005-04-02 23:53:47\n1,3,4,{date}\n")

    fast = error_of(path)
    line_checker_only(monkeypatch)
    slow = error_of(path)

    assert str(fast) == str(slow)
    assert_at(fast, path, 3, 4, "(timestamp)", "expected a date-time like 2005-04-02 23:53:47")


def test_scale_given_as_object_is_unchanged_by_the_half_star_rule(tmp_path: Path) -> None:
    lines = whole_star_lines(40, "::")
    lines[2] = "9::9::3.5::1"
    path = write(tmp_path, "ratings.dat", "\n".join(lines) + "\n")

    assert read(path, scale=RatingScale(0.5, 5, 0.5)).scale == HALF_STARS


# --------------------------------------------------------------------------- input paths


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_api_refuses_paths_that_are_not_ratings_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "ratings.csv"
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.csv")
    expected = "is a folder" if kind == "folder" else "which does not exist"

    for reader in (read, detect_layout):
        with pytest.raises(DataError, match=expected) as error:
            reader(path)
        assert str(error.value).startswith(f"{path}: ")
