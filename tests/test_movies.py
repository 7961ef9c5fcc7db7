"""Tests for resrec.data.movies: every movies file format, lookups and search."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from resrec.data.movies import ML100K_GENRES, Movies, find_movies_file, read_movies
from resrec.errors import DataError, UnknownIdError

MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    '73,"Misérables, Les (1995)",Drama|War\n'
    "182715,Mommy's Little Girl (2016),(no genres listed)\n"
)


def item_line(movie_id: int, title: str, flags: list[int]) -> str:
    genres = "|".join(str(f) for f in flags)
    return f"{movie_id}|{title}|01-Jan-1995||http://us.imdb.com/x|{genres}"


def flags_for(*genres: str) -> list[int]:
    return [int(g in genres) for g in ML100K_GENRES]


def test_movies_csv_with_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv"
    path.write_text(MOVIES_CSV, "utf-8")

    movies = read_movies(path)

    assert movies.movie_id.tolist() == [1, 11, 73, 182715]
    assert movies.movie_id.dtype == np.int64
    assert movies.title[1] == "American President, The (1995)"
    assert movies.title_of(73) == "Misérables, Les (1995)"
    assert movies.genres[0] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert movies.genres_of(182715) == ()


def test_movies_csv_gzip_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv.gz"
    text = "movieId,title,genres\r\n1,Heat (1995),Action|Crime\r\n"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))

    assert read_movies(path).titles() == {1: "Heat (1995)"}


def test_ml1m_movies_dat_is_latin1(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    text = (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "73::Misérables, Les (1995)::Drama|Musical\n"
    )
    path.write_bytes(text.encode("latin-1"))

    movies = read_movies(path)

    assert movies.title_of(73) == "Misérables, Les (1995)"
    assert movies.genres_of(1) == ("Animation", "Children's", "Comedy")


def test_ml10m_movies_dat_is_utf8(tmp_path: Path) -> None:
    path = tmp_path / "movies.dat"
    path.write_text("73::Misérables, Les (1995)::Drama|War\n", "utf-8")

    assert read_movies(path).title_of(73) == "Misérables, Les (1995)"


def test_u_item_uses_sibling_u_genre(tmp_path: Path) -> None:
    (tmp_path / "u.genre").write_text(
        "".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n"
    )
    lines = [
        item_line(1, "Toy Story (1995)", flags_for("Animation", "Children's", "Comedy")),
        item_line(543, "Misérables, Les (1995)", flags_for("Drama", "Musical")),
    ]
    path = tmp_path / "u.item"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))

    movies = read_movies(path)

    assert movies.title_of(543) == "Misérables, Les (1995)"
    assert movies.genres_of(1) == ("Animation", "Children's", "Comedy")


def test_u_item_without_u_genre_uses_documented_list(tmp_path: Path) -> None:
    path = tmp_path / "u.item"
    path.write_bytes(
        item_line(2, "GoldenEye (1995)", flags_for("Action", "Thriller")).encode("latin-1")
    )

    assert read_movies(path).genres_of(2) == ("Action", "Thriller")


@pytest.mark.parametrize(
    "name, text, line, column, fragment",
    [
        (
            "movies.csv",
            "movieId,title,genres\n1,A (1995),Drama\n1,B (1996),Drama\n",
            3,
            1,
            "first on line 2",
        ),
        ("movies.csv", "movieId,title,genres\nx,A (1995),Drama\n", 2, 1, "whole-number movie_id"),
        ("movies.csv", "movieId,title,genres\n1,A (1995)\n", 2, 3, "expected 3 fields"),
        (
            "movies.csv",
            "id,name,genres\n1,A,Drama\n",
            1,
            1,
            "expected the header movieId,title,genres",
        ),
        ("movies.dat", "1::A (1995)::Drama\n2::B (1996)\n", 2, 3, "expected 3 fields"),
        ("movies.dat", "1::::Drama\n", 1, 2, "empty title"),
        ("u.item", item_line(1, "A", [0] * 18 + [2]), 1, 24, "genre flag 0 or 1"),
        ("u.item", "1|A|x\n", 1, 4, "expected 24 fields"),
    ],
)
def test_bad_movies_files(
    tmp_path: Path, name: str, text: str, line: int, column: int, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(DataError) as error:
        read_movies(path)

    assert str(error.value).startswith(f"{path}:{line}:{column}")
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    "name, text, line, fragment",
    [
        ("movies.csv", "movieId,title,genres\n" + "9" * 5000 + ",A (1995),Drama\n", 2, "range"),
        ("movies.dat", "99999999999999999999::A (1995)::Drama\n", 1, "out of range"),
        ("movies.csv", "movieId,title,genres\n" + "x" * 500 + ",A (1995),Drama\n", 2, "(500 "),
        ("movies.csv", "id," + "x" * 500 + ",genres\n1,A,Drama\n", 1, "(510 characters)"),
        ("u.item", item_line(1, "A", [0] * 18) + "|" + "2" * 500, 1, "(500 characters)"),
    ],
    ids=["id-of-5000-digits", "id-above-int64", "long-id", "long-header", "long-genre-flag"],
)
def test_huge_and_long_movies_fields_are_clean_short_errors(
    tmp_path: Path, name: str, text: str, line: int, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(DataError) as error:
        read_movies(path)

    message = str(error.value)
    assert message.startswith(f"{path}:{line}:") and fragment in message, message
    assert len(message) < 250 + len(str(path)), message


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"BZh91AY&SY" + b"\x00" * 30, "looks like a bz2-compressed file"),
        (b"PK\x03\x04" + b"\x00" * 30, "looks like a zip archive"),
        (b"movieId,title,genres\n1,A\x00,Drama\n", "not a text file (byte 0x00 at line 2, col"),
        (gzip.compress(b"movieId,title,genres\n\x00"), "not a text file (byte 0x00 at line 2"),
        (b"\x1f\x8b\x08\x00broken", "not a readable gzip file"),
    ],
    ids=["bz2", "zip", "nul", "nul-inside-gzip", "damaged-gzip"],
)
def test_binary_movies_files_are_named_as_such(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "movies.csv"
    path.write_bytes(data)

    with pytest.raises(DataError) as error:
        read_movies(path)

    assert str(error.value).startswith(f"{path}: {fragment}"), str(error.value)


def test_unknown_movie_id_raises(tmp_path: Path) -> None:
    movies = Movies(np.array([1]), ["A (1995)"], [()])

    with pytest.raises(UnknownIdError, match="movie_id 2"):
        movies.title_of(2)
    assert 1 in movies and 2 not in movies


def test_search_is_case_insensitive_and_puts_prefix_matches_first() -> None:
    movies = Movies(
        np.array([1, 2, 3, 4]),
        ["Reloaded Matrix (2010)", "Matrix, The (1999)", "Heat (1995)", "matrix (2020)"],
        [(), (), (), ()],
    )

    assert movies.search("MATRIX") == [
        (2, "Matrix, The (1999)"),
        (4, "matrix (2020)"),
        (1, "Reloaded Matrix (2010)"),
    ]
    assert movies.search("the matrix") == [(2, "Matrix, The (1999)")]
    assert movies.search("matrix", limit=1) == [(2, "Matrix, The (1999)")]
    assert movies.search("nothing") == []


def test_find_movies_file_prefers_the_same_release(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("")
    (tmp_path / "movies.dat").write_text("")
    (tmp_path / "u.item").write_text("")

    assert find_movies_file(tmp_path / "ratings.dat") == tmp_path / "movies.dat"
    assert find_movies_file(tmp_path / "u1.base") == tmp_path / "u.item"
    assert find_movies_file(tmp_path / "ratings.csv") == tmp_path / "movies.csv"
    assert find_movies_file(tmp_path / "sub" / "ratings.csv") is None


# --------------------------------------------------------------------------- real data


@pytest.fixture
def data_dir() -> Path:
    root = os.environ.get("RESREC_DATA_DIR")
    if not root:
        pytest.skip("RESREC_DATA_DIR is not set; it names the folder of real MovieLens files")
    if not Path(root).is_dir():
        pytest.skip(f"RESREC_DATA_DIR={root} is not a folder")
    return Path(root)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "ratings, count, movie_id, title",
    [
        ("ml-100k/u.data", 1682, 543, "Misérables, Les (1995)"),
        ("ml-1m/ratings_no_timestamps.dat.gz", 3883, 73, "Misérables, Les (1995)"),
        ("ml-latest-small/ratings.csv", 9742, 2571, "Matrix, The (1999)"),
    ],
)
def test_real_movies_files(
    data_dir: Path, ratings: str, count: int, movie_id: int, title: str
) -> None:
    path = find_movies_file(data_dir / ratings)
    if path is None:
        pytest.skip(f"no movies file beside {data_dir / ratings}")

    movies = read_movies(path)

    assert len(movies) == count
    assert movies.title_of(movie_id) == title
