"""Tests for resrec.data.readers: every layout, every kind of bad input, duplicates."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resrec.data import readers
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, RatingScale
from resrec.data.readers import detect_layout, read_ratings
from resrec.errors import ConfigError, DataError

ML_HEADER = "userId,movieId,rating,timestamp\n"


def write(
    folder: Path,
    name: str,
    text: str,
    *,
    gz: bool = False,
    crlf: bool = False,
    bom: bool = False,
    encoding: str = "utf-8",
) -> Path:
    """Write ``text`` as ``folder/name`` (creating folders), optionally gzip/CRLF/BOM."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def read(path: Path, **options: object) -> readers.Ratings:
    return read_ratings(path, cache=False, **options)  # type: ignore[arg-type]


def assert_error(
    error: pytest.ExceptionInfo[DataError],
    path: Path,
    line: int,
    column: int | None,
    *fragments: str,
) -> None:
    """The message names the file, line, column and says what was expected."""
    message = str(error.value)
    assert str(path) in message
    assert error.value.line == line
    where = f"{path}:{line}" if column is None else f"{path}:{line}:{column}"
    assert message.startswith(where), message
    if column is not None:
        assert error.value.column == column
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --------------------------------------------------------------------------- layouts


def test_movielens_csv_is_read_with_half_star_scale(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ratings.csv", ML_HEADER + "1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
    )

    ratings = read(path)

    assert ratings.layout == "movielens-csv"
    assert ratings.scale == HALF_STARS
    assert ratings.user_id.tolist() == [1, 1]
    assert ratings.movie_id.tolist() == [31, 1029]
    assert ratings.rating.tolist() == [2.5, 3.0]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [1260759144, 1260759179]
    assert ratings.user_id.dtype == np.int64
    assert ratings.rating.dtype == np.float32
    assert ratings.timestamp.dtype == np.int64
    assert ratings.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ratings.source == str(path)


def test_gzip_is_recognised_by_magic_bytes_not_name(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", ML_HEADER + "1,2,3.5,10\n2,3,4.0,20\n", gz=True)

    ratings = read(path)

    assert ratings.movie_id.tolist() == [2, 3]
    assert ratings.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # of the .gz file


def test_crlf_line_endings_and_bom_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ratings.csv", ML_HEADER + "1,2,3.5,10\n2,3,4.0,20\n", crlf=True, bom=True
    )

    ratings = read(path)

    assert ratings.layout == "movielens-csv"
    assert ratings.rating.tolist() == [3.5, 4.0]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [10, 20]


def test_kaggle_csv_converts_dates_to_utc_epoch_seconds(tmp_path: Path) -> None:
    text = ML_HEADER + "1,2,3.5,2005-04-02 23:53:47\n1,29,3.5,2005-04-02 23:31:16\n"
    path = write(tmp_path, "rating.csv", text)

    ratings = read(path)

    assert ratings.layout == "kaggle-csv"
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [1112486027, 1112484676]


@pytest.mark.parametrize(
    "header, row",
    [
        ("userId,movieId,rating,movie_idx", "1,2,3.5,0"),
        (",userId,movieId,rating,movie_idx", "0,1,2,3.5,0"),
    ],
    ids=["plain", "pandas-index"],
)
def test_tutorial_csv_ignores_index_columns(tmp_path: Path, header: str, row: str) -> None:
    path = write(tmp_path, "edited_rating.csv", f"{header}\n{row}\n")

    ratings = read(path)

    assert ratings.layout == "tutorial-csv"
    assert (ratings.user_id.tolist(), ratings.movie_id.tolist()) == ([1], [2])
    assert ratings.rating.tolist() == [3.5]
    assert ratings.timestamp is None


def test_ml1m_dat_with_timestamps_is_whole_stars(tmp_path: Path) -> None:
    path = write(tmp_path, "ml-1m/ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")

    ratings = read(path)

    assert ratings.layout == "dat"
    assert ratings.scale == WHOLE_STARS
    assert ratings.movie_id.tolist() == [1193, 661]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [978300760, 978302109]


def test_dat_without_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path, "ml-1m/ratings.dat.gz", "1::1::5\n1::48::5\n", gz=True)

    ratings = read(path)

    assert ratings.timestamp is None
    assert ratings.rating.tolist() == [5.0, 5.0]


@pytest.mark.parametrize("folder", ["ml-10m", "ml-10M100K"])
def test_ml10m_dat_is_half_stars_from_its_folder(tmp_path: Path, folder: str) -> None:
    path = write(
        tmp_path, f"{folder}/ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n"
    )

    ratings = read(path)

    assert ratings.scale == HALF_STARS
    assert ratings.rating.tolist() == [5.0, 4.5]


@pytest.mark.parametrize(
    "text, scale",
    [("1::2::3\n1::3::4\n", WHOLE_STARS), ("1::2::3\n1::3::4.5\n", HALF_STARS)],
    ids=["whole", "half"],
)
def test_unknown_dat_infers_scale_and_notes_it(
    tmp_path: Path, text: str, scale: RatingScale
) -> None:
    ratings = read(write(tmp_path, "data/ratings.dat", text))

    assert ratings.scale == scale
    assert any("inferred" in note for note in ratings.notes)


@pytest.mark.parametrize("name", ["u.data", "u1.base", "u3.test", "ua.base", "ub.test"])
def test_udata_files_are_tab_separated_whole_stars(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")

    ratings = read(path)

    assert ratings.layout == "udata"
    assert ratings.scale == WHOLE_STARS
    assert ratings.user_id.tolist() == [196, 186]
    assert ratings.timestamp is not None


def test_delimited_file_described_by_options(tmp_path: Path) -> None:
    text = 'movie;ignored;user;stars\n10;x;1;4\n11;"y;z";2;2\n'
    path = write(tmp_path, "export.txt", text)

    ratings = read(path, sep=";", header=True, columns=["movie_id", "-", "user_id", "rating"])

    assert ratings.layout == "delimited"
    assert ratings.user_id.tolist() == [1, 2]
    assert ratings.movie_id.tolist() == [10, 11]
    assert ratings.scale == WHOLE_STARS


def test_delimited_header_names_are_mapped_to_roles(tmp_path: Path) -> None:
    path = write(tmp_path, "export.csv", 'item_id,user_id,score,title\n10,1,4.5,"Heat, 1995"\n')

    ratings = read(path)

    assert ratings.layout == "delimited"
    assert (ratings.user_id.tolist(), ratings.movie_id.tolist()) == ([1], [10])
    assert ratings.rating.tolist() == [4.5]
    assert ratings.timestamp is None


def test_headerless_csv_is_not_eaten_as_header(tmp_path: Path) -> None:
    path = write(tmp_path, "export.csv", "1,2,3.5,100\n1,3,4.0,200\n")

    ratings = read(path)

    assert len(ratings) == 2
    assert ratings.layout == "delimited"


def test_forced_layout_overrides_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "export.txt", "1\t2\t3\t100\n")

    assert read(path, layout="udata").layout == "udata"


def test_scale_argument_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "u.data", "1\t2\t7\t100\n1\t3\t10\t100\n")

    ratings = read(path, scale="1:10:1")

    assert ratings.scale == RatingScale(1, 10, 1)
    assert read(path, scale=RatingScale(0, 10, 0.5)).rating.tolist() == [7.0, 10.0]


def test_detect_layout(tmp_path: Path) -> None:
    assert detect_layout(write(tmp_path, "ratings.csv", ML_HEADER + "1,2,3,4\n")) == "movielens-csv"
    kaggle = write(tmp_path, "rating.csv", ML_HEADER + "1,2,3,2005-04-02 23:53:47\n", gz=True)
    assert detect_layout(kaggle) == "kaggle-csv"
    assert (
        detect_layout(write(tmp_path, "x.csv", "userId,movieId,rating,movie_idx\n"))
        == "tutorial-csv"
    )
    assert detect_layout(write(tmp_path, "x.txt", "1::2::3\n")) == "dat"
    assert detect_layout(write(tmp_path, "u2.test", "1\t2\t3\t4\n")) == "udata"
    assert detect_layout(write(tmp_path, "y.txt", "1;2;3\n")) == "delimited"


@pytest.mark.parametrize(
    "name, header, timestamp",
    [
        ("ratings.csv", ML_HEADER, lambda t: str(t)),
        (
            "rating.csv",
            ML_HEADER,
            lambda t: f"{2000 + t % 20}-0{1 + t % 9}-1{t % 10} 0{t % 10}:1{t % 10}:00",
        ),
        ("ml-10m/ratings.dat", "", lambda t: str(t)),
    ],
    ids=["movielens-csv", "kaggle-csv", "dat"],
)
def test_slow_path_reads_the_same_values_as_the_fast_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    header: str,
    timestamp: Callable[[int], str],
) -> None:
    rng = np.random.default_rng(0)
    sep = "::" if name.endswith(".dat") else ","
    users, movies = np.repeat(np.arange(1, 201), 500), np.tile(np.arange(1, 501), 200)
    stars, times = rng.integers(1, 11, 100_000), rng.integers(0, 2**31, 100_000)
    rows = [
        sep.join([str(u), str(m), str(r / 2), timestamp(int(t))])
        for u, m, r, t in zip(users, movies, stars, times, strict=True)
    ]
    path = write(tmp_path, name, header + "\n".join(rows) + "\n")
    fast = read(path)

    monkeypatch.setattr(readers, "_parse_fast", lambda *args: None)
    slow = read(path)

    assert slow.layout == fast.layout
    for column in ("user_id", "movie_id", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(fast, column), getattr(slow, column))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.sets(
        st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)), min_size=1, max_size=40
    ),
    stars=st.lists(st.integers(1, 10), min_size=40, max_size=40),
    crlf=st.booleans(),
    bom=st.booleans(),
    gz=st.booleans(),
)
def test_written_table_reads_back_exactly(
    tmp_path: Path,
    pairs: set[tuple[int, int]],
    stars: list[int],
    crlf: bool,
    bom: bool,
    gz: bool,
) -> None:
    rows = [(u, m, stars[i] / 2, 10 * i) for i, (u, m) in enumerate(sorted(pairs))]
    text = ML_HEADER + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in rows)
    path = write(tmp_path, "ratings.csv", text, crlf=crlf, bom=bom, gz=gz)

    ratings = read(path)

    assert ratings.user_id.tolist() == [row[0] for row in rows]
    assert ratings.movie_id.tolist() == [row[1] for row in rows]
    assert ratings.rating.tolist() == [row[2] for row in rows]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [row[3] for row in rows]


# --------------------------------------------------------------------------- bad input


BAD_INPUT = [
    # id, file name, text, options, line, column, fragments
    (
        "too-few-fields",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,4.0\n",
        {},
        3,
        4,
        ["(timestamp)", "expected 4 fields", "found 3"],
    ),
    (
        "too-many-fields",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,4.0,1,9\n",
        {},
        3,
        5,
        ["expected 4 fields", "found 5"],
    ),
    (
        "non-numeric-id",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,abc,4.0,1\n",
        {},
        3,
        2,
        ["(movieId)", "expected a whole-number movie_id >= 0", "'abc'"],
    ),
    (
        "non-numeric-rating",
        "u.data",
        "1\t2\t3\t1\n1\t3\tgood\t1\n",
        {},
        2,
        3,
        ["(rating)", "expected a rating from 1 to 5 in steps of 1", "'good'"],
    ),
    (
        "empty-field",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,,4.0,1\n",
        {},
        3,
        2,
        ["(movieId)", "empty field", "expected a whole-number movie_id"],
    ),
    (
        "null-backslash-n",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,\\N,1\n",
        {},
        3,
        3,
        ["(rating)", "missing value '\\N'", "expected a rating from 0.5 to 5 in steps of 0.5"],
    ),
    (
        "null-word",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\nNULL,3,4,1\n",
        {},
        3,
        1,
        ["(userId)", "missing value 'NULL'", "expected a whole-number user_id"],
    ),
    (
        "null-na",
        "ratings.dat",
        "1::2::3\n1::3::NA\n",
        {},
        2,
        3,
        ["missing value 'NA'", "expected a rating"],
    ),
    (
        "null-nan",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,nan,1\n",
        {},
        3,
        3,
        ["missing value 'nan'", "expected a rating from 0.5 to 5"],
    ),
    (
        "off-scale",
        "u.data",
        "1\t2\t3\t1\n1\t3\t6\t1\n1\t4\t3\t1\n",
        {},
        2,
        3,
        ["(rating)", "rating 6 is off the scale", "expected a rating from 1 to 5 in steps of 1"],
    ),
    (
        "off-step",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,3.25,1\n",
        {},
        3,
        3,
        ["rating 3.25 is off the scale", "expected a rating from 0.5 to 5 in steps of 0.5"],
    ),
    (
        "whole-star-file-with-half-star",
        "ml-1m/ratings.dat",
        "1::2::3\n1::3::3.5\n1::4::3\n",
        {},
        2,
        3,
        ["expected a rating from 1 to 5 in steps of 1"],
    ),
    ("empty-file", "ratings.csv", "", {}, 1, None, ["empty file"]),
    ("header-only", "ratings.csv", ML_HEADER, {}, 2, 1, ["header but no ratings", "userId"]),
    (
        "unexpected-header",
        "u.data",
        "user\titem\trating\tts\n1\t2\t3\t4\n",
        {},
        1,
        1,
        ["looks like a header", "has none", "expected a whole-number user_id"],
    ),
    (
        "missing-header",
        "ratings.csv",
        "1,2,3.5,100\n",
        {"layout": "movielens-csv"},
        1,
        1,
        ["expected the header userId,movieId,rating,timestamp", "line of numbers"],
    ),
    (
        "wrong-header-name",
        "ratings.csv",
        "userId,movieId,stars,timestamp\n1,2,3,4\n",
        {"layout": "movielens-csv"},
        1,
        3,
        ["unexpected column name 'stars'", "userId,movieId,rating"],
    ),
    ("header-true-on-data", "x.csv", "1,2,3\n", {"header": True}, 1, 1, ["line of numbers"]),
    (
        "negative-id",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n-4,3,4.0,1\n",
        {},
        3,
        1,
        ["(userId)", "negative user_id -4", "expected a whole-number user_id >= 0"],
    ),
    (
        "non-integer-id",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3.5,4.0,1\n",
        {},
        3,
        2,
        ["(movieId)", "'3.5'", "not a whole number"],
    ),
    (
        "negative-timestamp",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,4.0,-5\n",
        {},
        3,
        4,
        ["(timestamp)", "negative timestamp -5", "seconds since 1970"],
    ),
    (
        "bad-date",
        "rating.csv",
        ML_HEADER + "1,2,3.5,2005-04-02 23:53:47\n1,3,4,2005-13-45 00:00:00\n",
        {},
        3,
        4,
        ["(timestamp)", "'2005-13-45 00:00:00'", "expected a date-time like 2005-04-02 23:53:47"],
    ),
    (
        "date-before-1970",
        "rating.csv",
        ML_HEADER + "1,2,3.5,1969-12-31 23:59:59\n",
        {},
        2,
        4,
        ["before 1970"],
    ),
    (
        "date-in-movielens-csv",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,4,2005-04-02 23:53:47\n",
        {"layout": "movielens-csv"},
        3,
        4,
        ["expected a whole-number timestamp", "kaggle-csv"],
    ),
    ("blank-line", "ratings.csv", ML_HEADER + "1,2,3.5,1\n\n1,3,4,1\n", {}, 3, 1, ["a blank line"]),
    (
        "quote-across-lines",
        "ratings.csv",
        ML_HEADER + '1,2,3.5,1\n1,"3\n",4,1\n',
        {},
        3,
        None,
        ["quoted field"],
    ),
    (
        "too-large-id",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n99999999999999999999,3,4,1\n",
        {},
        3,
        1,
        ["too large"],
    ),
    (
        "id-of-5000-digits",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1," + "9" * 5000 + ",4,1\n",
        {},
        3,
        2,
        ["(movieId)", "movie_id 9999", "is out of range", "too large for a 64-bit integer"],
    ),
    (
        "timestamp-of-5000-digits",
        "u.data",
        "1\t2\t3\t1\n1\t3\t4\t" + "1" * 5000 + "\n",
        {},
        2,
        4,
        ["(timestamp)", "is out of range", "(5,000 characters)"],
    ),
    (
        "rating-of-5000-digits",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3," + "4" * 5000 + ",1\n",
        {},
        3,
        3,
        ["(rating)", "is out of range", "expected a rating from 0.5 to 5"],
    ),
    (
        "id-of-5000-digits-on-the-first-line",
        "ratings.dat",
        "1::" + "7" * 5000 + "::3\n",
        {},
        1,
        2,
        ["is out of range"],
    ),
    (
        "infinite-rating",
        "ratings.csv",
        ML_HEADER + "1,2,3.5,1\n1,3,1e999,1\n",
        {},
        3,
        3,
        ["rating 1e999 is out of range"],
    ),
]


@pytest.mark.parametrize(
    "name, text, options, line, column, fragments",
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_names_file_line_column_and_expectation(
    tmp_path: Path,
    name: str,
    text: str,
    options: dict[str, object],
    line: int,
    column: int | None,
    fragments: list[str],
) -> None:
    path = write(tmp_path, name, text)

    with pytest.raises(DataError) as error:
        read(path, **options)

    assert_error(error, path, line, column, *fragments)


LONG = "x" * 500


@pytest.mark.parametrize(
    "name, text, options",
    [
        ("ratings.csv", ML_HEADER + f"1,{LONG},4,1\n", {}),
        ("ratings.csv", ML_HEADER + f"1,2,{LONG},1\n", {}),
        ("ratings.csv", ML_HEADER + f"1,2,4,{LONG}\n", {}),
        ("ratings.csv", ML_HEADER + "1,2,4," + "7" * 500 + "\n", {}),
        ("u.data", f"{LONG}\t1\t2\t3\n", {}),
        ("ratings.csv", f"userId,movieId,{LONG},timestamp\n1,2,3,4\n", {"layout": "movielens-csv"}),
        ("ratings.csv", "1,2," + "3" * 500 + ",4\n", {"layout": "movielens-csv"}),
        ("x.csv", f"user,movie,{LONG}\n1,2,3\n", {}),
        ("x.csv", f"user,movie,rating,{LONG}\n1,2,3,4\n1,2,3\n", {}),
    ],
    ids=[
        "id",
        "rating",
        "timestamp",
        "too-large-timestamp",
        "header-taken-for-data",
        "header-name",
        "line-of-numbers",
        "unknown-header",
        "field-count-with-long-name",
    ],
)
def test_long_bad_values_are_cut_short_in_messages(
    tmp_path: Path, name: str, text: str, options: dict[str, object]
) -> None:
    path = write(tmp_path, name, text)

    with pytest.raises(DataError) as error:
        read(path, **options)

    message = str(error.value)
    assert "… (" in message and "characters)" in message, message
    assert len(message) < 400 + len(str(path)), message


@pytest.mark.parametrize(
    "compress, kind",
    [
        (bz2.compress, "a bz2-compressed file"),
        (lzma.compress, "an xz-compressed file"),
        (lambda data: b"\x28\xb5\x2f\xfd" + data, "a zstd-compressed file"),
        (lambda data: b"\x04\x22\x4d\x18" + data, "an lz4-compressed file"),
        (lambda data: b"7z\xbc\xaf\x27\x1c" + data, "a 7z archive"),
        (lambda data: zip_of("ratings.csv", data), "a zip archive"),
        (lambda data: gzip.compress(bz2.compress(data)), "a bz2-compressed file"),
    ],
    ids=["bz2", "xz", "zstd", "lz4", "7z", "zip", "bz2-inside-gzip"],
)
@pytest.mark.parametrize("name", ["ratings.csv", "ratings.csv.bz2", "u.data", "ratings.dat"])
def test_unsupported_compression_is_named_by_its_magic_bytes(
    tmp_path: Path, compress: Callable[[bytes], bytes], kind: str, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(compress((ML_HEADER + "1,2,3.5,1\n").encode()))

    with pytest.raises(DataError) as error:
        read(path)

    assert str(error.value).startswith(f"{path}: looks like {kind}; resrec reads plain text or .gz")
    assert error.value.path == str(path)
    with pytest.raises(DataError, match=f"looks like {kind}"):
        detect_layout(path)


def zip_of(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "options",
    [{}, {"gz": True}, {"crlf": True}, {"bom": True}, {"gz": True, "crlf": True, "bom": True}],
    ids=["plain", "gzip", "crlf", "bom", "all"],
)
def test_nul_byte_is_reported_as_not_a_text_file_with_its_position(
    tmp_path: Path, options: dict[str, bool]
) -> None:
    path = write(tmp_path, "ratings.csv", ML_HEADER + "1,2,3.5,1\n1,3,4\x00,1\n", **options)

    with pytest.raises(DataError) as error:
        read(path)

    assert str(error.value).startswith(
        f"{path}: not a text file (byte 0x00 at line 3, column 6); resrec reads plain text or .gz"
    )


@pytest.mark.parametrize("where", ["first line", "far into the file"])
def test_binary_file_is_not_a_text_file(tmp_path: Path, where: str) -> None:
    lines = [f"{m}\t1\t4\t1" for m in range(1, 50_001)] if where != "first line" else []
    path = tmp_path / "u.data"
    path.write_bytes("\n".join(lines).encode() + b"\n\x89\x00\x01\x02binary")

    with pytest.raises(DataError, match="not a text file \\(byte 0x00 at line"):
        read(path)


def test_utf16_is_refused_as_such(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", "\ufeff" + ML_HEADER + "1,2,3.5,1\n", encoding="utf-16")

    with pytest.raises(DataError, match="is UTF-16 text"):
        read(path)


def test_text_that_starts_like_a_magic_number_is_still_read(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "BZh,movie,rating\n1,2,3\n")

    ratings = read(path, columns="user_id,movie_id,rating", header=True)

    assert ratings.movie_id.tolist() == [2]


def test_swapped_columns_are_reported_with_a_columns_hint(tmp_path: Path) -> None:
    # rating, user, movie written where user, movie, rating is expected
    path = write(tmp_path, "ml-1m/ratings.dat", "5::1::1193\n3::1::661\n3::1::914\n4::1::3408\n")

    with pytest.raises(DataError) as error:
        read(path)

    assert_error(error, path, 1, 3, "(rating)", "rating 1193 is off the scale", "look swapped")
    assert error.value.hint is not None
    assert "columns=rating," in error.value.hint
    assert "--columns" in error.value.hint


@pytest.mark.parametrize(
    "options",
    [{"gz": True}, {"crlf": True}, {"bom": True}, {"gz": True, "crlf": True, "bom": True}],
    ids=["gzip", "crlf", "bom", "all"],
)
def test_line_numbers_survive_gzip_crlf_and_bom(tmp_path: Path, options: dict[str, bool]) -> None:
    lines = [f"{u},{m},4.0,100" for u in range(1, 31) for m in range(1, 1001)]
    lines[25_000] = "7,7,4.0,oops"
    path = write(tmp_path, "ratings.csv", ML_HEADER + "\n".join(lines) + "\n", **options)

    with pytest.raises(DataError) as error:
        read(path)

    assert_error(error, path, 25_002, 4, "(timestamp)", "'oops'")


def test_first_offending_line_is_reported(tmp_path: Path) -> None:
    lines = [f"1,{m},4.0,100" for m in range(1, 100_001)]
    lines[70_000] = "1,70001,4.0,-1"  # a negative timestamp, found by the vectorised checks
    lines[90_000] = "1,90001,4.0"  # a wrong field count, found by Arrow
    lines[5] = "1,6,7.5,100"  # off the scale: the earliest
    path = write(tmp_path, "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")

    with pytest.raises(DataError) as error:
        read(path)
    assert_error(error, path, 7, 3, "rating 7.5")

    lines[5] = "1,6,4.0,100"
    path = write(tmp_path, "ratings.csv", ML_HEADER + "\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        read(path)
    assert_error(error, path, 70_002, 4, "negative timestamp")


# --------------------------------------------------------------------------- duplicates


DUPLICATED = ML_HEADER + "1,2,3.0,10\n1,3,4.0,20\n2,2,1.0,30\n1,2,4.5,40\n"


def test_duplicate_pair_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "ratings.csv", DUPLICATED)

    with pytest.raises(DataError) as error:
        read(path)

    assert_error(error, path, 5, 2, "user_id 1 rated movie_id 2 again", "first on line 2")
    assert error.value.hint is not None
    assert "duplicates='last'" in error.value.hint
    assert "duplicates='mean'" in error.value.hint


def test_duplicates_last_keeps_the_later_line(tmp_path: Path) -> None:
    ratings = read(write(tmp_path, "ratings.csv", DUPLICATED), duplicates="last")

    assert ratings.user_id.tolist() == [1, 2, 1]
    assert ratings.movie_id.tolist() == [3, 2, 2]
    assert ratings.rating.tolist() == [4.0, 1.0, 4.5]
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [20, 30, 40]
    assert any("merged" in note for note in ratings.notes)


def test_duplicates_mean_averages_rounding_a_tie_to_the_higher_step(tmp_path: Path) -> None:
    ratings = read(write(tmp_path, "ratings.csv", DUPLICATED), duplicates="mean")

    assert ratings.movie_id.tolist() == [3, 2, 2]
    assert ratings.rating.tolist() == [4.0, 1.0, 4.0]  # (3.0 + 4.5) / 2 = 3.75, halfway: up
    assert ratings.timestamp is not None
    assert ratings.timestamp.tolist() == [20, 30, 40]


@pytest.mark.parametrize(
    "name, ratings, mean",
    [
        # half stars: the mean in steps of 0.5, rounded to the nearest, halfway up
        ("ratings.csv", [3.0, 4.5], 4.0),  # 3.75 is halfway between 3.5 and 4.0
        ("ratings.csv", [0.5, 1.0], 1.0),  # 0.75: halfway, up
        ("ratings.csv", [3.0, 3.5, 5.0], 4.0),  # 3.833...: nearest is 4.0
        ("ratings.csv", [1.0, 1.5, 1.5], 1.5),  # 1.333...: nearest is 1.5
        ("ratings.csv", [4.0, 4.0, 4.5], 4.0),  # 4.1666...: nearest is 4.0
        ("ratings.csv", [2.0, 2.5, 2.5, 2.5], 2.5),  # 2.375: nearest is 2.5
        ("ratings.csv", [5.0, 5.0, 0.5], 3.5),  # 3.5: on a step already
        # whole stars
        ("u.data", [4, 5], 5),  # 4.5: halfway, up
        ("u.data", [1, 2, 2], 2),  # 1.666...: nearest is 2
        ("u.data", [1, 1, 2], 1),  # 1.333...: nearest is 1
        ("u.data", [1, 5], 3),  # 3: on a step already
        ("u.data", [2, 3, 3, 4, 4, 4], 3),  # 3.333...: nearest is 3
    ],
)
def test_duplicates_mean_is_rounded_to_the_nearest_step(
    tmp_path: Path, name: str, ratings: list[float], mean: float
) -> None:
    if name == "u.data":
        text = "".join(f"7\t9\t{r}\t{i}\n" for i, r in enumerate(ratings)) + "8\t9\t3\t0\n"
    else:
        text = ML_HEADER + "".join(f"7,9,{r},{i}\n" for i, r in enumerate(ratings)) + "8,9,3,0\n"

    table = read(write(tmp_path, name, text), duplicates="mean")

    assert table.rating.tolist() == [mean, 3.0]
    assert table.scale.on_scale(table.rating).all()


def test_unsorted_file_without_duplicates_passes(tmp_path: Path) -> None:
    ratings = read(write(tmp_path, "ratings.csv", ML_HEADER + "2,1,3,1\n1,5,3,1\n1,2,3,1\n"))

    assert ratings.user_id.tolist() == [2, 1, 1]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "options",
    [
        {"layout": "excel"},
        {"duplicates": "first"},
        {"columns": ["user_id", "movie_id"]},
        {"columns": ["user_id", "movie_id", "rating", "stars"]},
        {"layout": "udata", "sep": ","},
        {"scale": "1-5"},
    ],
)
def test_bad_options_raise_config_error(tmp_path: Path, options: dict[str, object]) -> None:
    path = write(tmp_path, "u.data", "1\t2\t3\t4\n")

    with pytest.raises(ConfigError):
        read(path, **options)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- real data


@pytest.fixture
def data_dir() -> Path:
    root = os.environ.get("RESREC_DATA_DIR")
    if not root:
        pytest.skip("RESREC_DATA_DIR is not set; it names the folder of real MovieLens files")
    if not Path(root).is_dir():
        pytest.skip(f"RESREC_DATA_DIR={root} is not a folder")
    return Path(root)


def real_file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.realdata
def test_real_ml100k(data_dir: Path) -> None:
    ratings = read(real_file(data_dir, "ml-100k/u.data"))

    assert (len(ratings), ratings.n_users, ratings.n_movies) == (100_000, 943, 1682)
    assert ratings.scale == WHOLE_STARS
    assert ratings.timestamp is not None


@pytest.mark.realdata
def test_real_ml_latest_small(data_dir: Path) -> None:
    ratings = read(real_file(data_dir, "ml-latest-small/ratings.csv"))

    assert (len(ratings), ratings.n_users, ratings.n_movies) == (100_836, 610, 9724)
    assert ratings.layout == "movielens-csv"
    assert ratings.scale == HALF_STARS


@pytest.mark.realdata
def test_real_ml1m_without_timestamps(data_dir: Path) -> None:
    ratings = read(real_file(data_dir, "ml-1m/ratings_no_timestamps.dat.gz"))

    assert (len(ratings), ratings.n_users, ratings.n_movies) == (1_000_209, 6040, 3706)
    assert ratings.timestamp is None
    assert ratings.scale == WHOLE_STARS
