"""Movie metadata (titles and genres) from every MovieLens release.

:func:`read_movies` reads

- ``movies.csv`` (ML-20M, ML-25M, ml-latest, ml-latest-small; also the
  Kaggle copy's ``movie.csv``): UTF-8, header ``movieId,title,genres``,
  titles with commas quoted, genres separated by ``|``;
- ``movies.dat`` (ML-1M, ML-10M): ``movieId::title::genres``, no header,
  Latin-1 in ML-1M and UTF-8 in ML-10M (UTF-8 is tried first, then Latin-1);
- ``u.item`` (ML-100K): ``|``-separated, Latin-1, with 19 genre flags whose
  names come from the sibling ``u.genre`` when present, else from the
  release's documented list.

Files may be gzip-compressed; a file in another compressed or binary format
is refused as such. The genre list ``(no genres listed)`` becomes
an empty tuple. Every problem raises a :class:`~resrec.errors.DataError`
naming the line and field.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from resrec.data.sniff import GZIP_MAGIC, check_text, gunzip
from resrec.errors import DataError, UnknownIdError, quoted, shorten
from resrec.files import check_input_file

logger = logging.getLogger(__name__)

_INT64_MAX = np.iinfo(np.int64).max

ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The 19 genres of ML-100K's ``u.item`` flags, in order (from its README)."""

NO_GENRES = "(no genres listed)"

_CSV_NAMES = ("movies.csv", "movie.csv")

MOVIES_FAMILY_OF_LAYOUT = {
    "udata": "u.item",
    "dat": "movies.dat",
    "movielens-csv": "movies.csv",
    "kaggle-csv": "movies.csv",
    "tutorial-csv": "movies.csv",
}
"""The movies file layout that ships with each ratings layout of a MovieLens release."""
_ARTICLE_LAST = re.compile(r"^(.*), (the|a|an|les|la|le|l'|il|el|der|die|das) (\(.*)$", re.I)


@dataclass(eq=False)
class Movies:
    """Titles and genres by ``movie_id``, in the order of the file.

    ``movie_id`` is an int64 array; ``title`` and ``genres`` are lists of the
    same length. ``family`` names the layout the file was read as (see
    :data:`MOVIES_FAMILY_OF_LAYOUT`), or is None for a table built in memory.
    """

    movie_id: np.ndarray
    title: list[str]
    genres: list[tuple[str, ...]]
    source: str = "<memory>"
    family: str | None = None  # "u.item", "movies.dat" or "movies.csv": the file's layout
    _index: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.movie_id = np.asarray(self.movie_id, dtype=np.int64)
        if not len(self.movie_id) == len(self.title) == len(self.genres):
            raise ValueError("Movies columns must all have the same length")
        self._index = {int(m): i for i, m in enumerate(self.movie_id)}

    def __len__(self) -> int:
        return len(self.title)

    def __contains__(self, movie_id: object) -> bool:
        return isinstance(movie_id, int | np.integer) and int(movie_id) in self._index

    def index_of(self, movie_id: int) -> int:
        """The row of ``movie_id``; raises UnknownIdError when it is not listed."""
        try:
            return self._index[int(movie_id)]
        except KeyError:
            raise UnknownIdError(f"movie_id {movie_id} is not in {self.source}") from None

    def title_of(self, movie_id: int) -> str:
        """The title of ``movie_id``; raises UnknownIdError when it is not listed."""
        return self.title[self.index_of(movie_id)]

    def genres_of(self, movie_id: int) -> tuple[str, ...]:
        """The genres of ``movie_id``; raises UnknownIdError when it is not listed."""
        return self.genres[self.index_of(movie_id)]

    def titles(self) -> dict[int, str]:
        """A ``{movie_id: title}`` dict."""
        return {int(m): t for m, t in zip(self.movie_id, self.title, strict=True)}

    def search(self, text: str, limit: int = 10) -> list[tuple[int, str]]:
        """Up to ``limit`` ``(movie_id, title)`` pairs whose title contains ``text``.

        Case-insensitive. A title filed with its article last, such as
        ``Matrix, The (1999)``, also matches as ``The Matrix (1999)``. Titles
        that start with ``text`` come first, then the others, each in file
        order.
        """
        needle = text.strip().lower()
        if not needle or limit <= 0:
            return []
        starts, contains = [], []
        for movie_id, title in zip(self.movie_id, self.title, strict=True):
            forms = (title.lower(), _article_first(title).lower())
            if any(form.startswith(needle) for form in forms):
                starts.append((int(movie_id), title))
            elif any(needle in form for form in forms):
                contains.append((int(movie_id), title))
            if len(starts) >= limit:
                break
        return (starts + contains)[:limit]


def _article_first(title: str) -> str:
    match = _ARTICLE_LAST.match(title)
    return f"{match[2]} {match[1]} {match[3]}" if match else title


def read_movies(path: str | Path) -> Movies:
    """Read a MovieLens movies file: ``movies.csv``, ``movies.dat`` or ``u.item``.

    The format is chosen by the file name (a ``.gz`` suffix is ignored), or
    from the first line when the name is not a release's.

    Raises
    ------
    DataError
        The file is missing, not a readable regular file, or malformed: a
        wrong number of fields, a movie_id that is not a whole number >= 0 or
        is listed twice, an empty title, or a u.item genre flag other than 0
        or 1.
    """
    path = check_input_file(path, "a movies file")
    raw = _read_bytes(path)
    if raw[:2] == GZIP_MAGIC:
        raw = gunzip(raw, path)
    check_text(raw, path, start=3 if raw.startswith(b"\xef\xbb\xbf") else 0)
    if not raw.strip():
        raise DataError("empty file; expected movies", path=path, line=1)

    name = path.name.lower().removesuffix(".gz")
    first = raw.split(b"\n", 1)[0]
    if name == "u.item" or (name not in _CSV_NAMES and first.count(b"|") >= 20):
        return _read_item(path, raw.decode("latin-1"))
    text = _decode(raw, path)
    if name.endswith(".dat") or (name not in _CSV_NAMES and "::" in text.split("\n", 1)[0]):
        return _read_dat(path, text)
    return _read_csv(path, text)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot be read ({exc.strerror or exc})", path=path) from None


def find_movies_file(ratings_path: str | Path) -> Path | None:
    """The movies file beside a ratings file, or None if there is none.

    Looks in the ratings file's folder for the file of the same release
    first (``movies.dat`` beside ``ratings.dat``, ``u.item`` beside
    ``u.data``, ``movies.csv`` or ``movie.csv`` beside a CSV), then for any
    of them, each also gzip-compressed (``.gz``).
    """
    ratings_path = Path(ratings_path)
    name = ratings_path.name.lower().removesuffix(".gz")
    if name.endswith(".dat"):
        preferred = ["movies.dat"]
    elif name.endswith((".data", ".base", ".test")):
        preferred = ["u.item"]
    else:
        preferred = list(_CSV_NAMES)
    candidates = preferred + [
        n for n in (*_CSV_NAMES, "movies.dat", "u.item") if n not in preferred
    ]
    for candidate in candidates:
        for suffix in ("", ".gz"):
            found = ratings_path.parent / (candidate + suffix)
            if found.is_file():
                return found
    return None


# --------------------------------------------------------------------------- formats


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 (with or without byte order mark), else Latin-1."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        logger.info("%s is not UTF-8 (%s); reading it as Latin-1", path, error.reason)
        return raw.decode("latin-1")


class _Builder:
    """Collects rows, checking ids and titles as they come."""

    def __init__(self, path: Path, family: str) -> None:
        self.path = path
        self.family = family
        self.movie_id: list[int] = []
        self.title: list[str] = []
        self.genres: list[tuple[str, ...]] = []
        self._line_of: dict[int, int] = {}

    def add(self, line: int, movie_id: str, title: str, genres: tuple[str, ...]) -> None:
        number = self._movie_id(line, movie_id)
        if number in self._line_of:
            raise DataError(
                f"movie_id {number} is listed again (first on line {self._line_of[number]})",
                path=self.path,
                line=line,
                column=1,
                column_name="movieId",
            )
        if not title.strip():
            raise DataError(
                "empty title; expected the movie's title",
                path=self.path,
                line=line,
                column=2,
                column_name="title",
            )
        self._line_of[number] = line
        self.movie_id.append(number)
        self.title.append(title)
        self.genres.append(genres)

    def _movie_id(self, line: int, movie_id: str) -> int:
        text = movie_id.strip()
        problem = None
        if not re.fullmatch(r"[0-9]+", text):
            problem = f"expected a whole-number movie_id >= 0, found {quoted(movie_id)}"
        elif len(text.lstrip("0")) > len(str(_INT64_MAX)) or int(text) > _INT64_MAX:
            problem = (
                f"movie_id {shorten(text)} is out of range: too large for a 64-bit integer "
                f"(at most {_INT64_MAX})"
            )
        if problem is not None:
            raise DataError(problem, path=self.path, line=line, column=1, column_name="movieId")
        return int(text)

    def build(self) -> Movies:
        if not self.title:
            raise DataError("the file lists no movies", path=self.path, line=2)
        ids = np.asarray(self.movie_id, dtype=np.int64)
        return Movies(ids, self.title, self.genres, str(self.path), self.family)


def _lines(text: str) -> list[str]:
    """The lines of ``text``, without trailing blank lines."""
    return text.rstrip("\r\n").splitlines()


def _genre_list(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text or text == NO_GENRES:
        return ()
    return tuple(text.split("|"))


def _read_csv(path: Path, text: str) -> Movies:
    lines = _lines(text)
    header = next(csv.reader(lines[:1]))
    names = [h.strip() for h in header]
    if names[:1] == [""]:
        names = names[1:]  # a pandas index column
    offset = len(header) - len(names)
    if [n.lower() for n in names] != ["movieid", "title", "genres"]:
        raise DataError(
            f"expected the header movieId,title,genres, found {quoted(lines[0])}",
            path=path,
            line=1,
            column=1,
        )

    builder = _Builder(path, "movies.csv")
    for number, line in enumerate(lines[1:], start=2):
        try:
            fields = next(csv.reader([line], strict=True), [])
        except csv.Error as error:
            raise DataError(
                f"cannot split the line into fields ({error})", path=path, line=number
            ) from None
        if len(fields) != len(header):
            _field_count_error(path, number, len(header), len(fields), ",")
        movie_id, title, genres = fields[offset:]
        builder.add(number, movie_id, title, _genre_list(genres))
    return builder.build()


def _read_dat(path: Path, text: str) -> Movies:
    builder = _Builder(path, "movies.dat")
    for number, line in enumerate(_lines(text), start=1):
        fields = line.split("::")
        if len(fields) < 3:
            _field_count_error(path, number, 3, len(fields), "::")
        title = "::".join(fields[1:-1])  # a title may hold "::"; ids and genres cannot
        builder.add(number, fields[0], title, _genre_list(fields[-1]))
    return builder.build()


def _read_item(path: Path, text: str) -> Movies:
    genre_names = _item_genres(path)
    n_fields = 5 + len(genre_names)
    builder = _Builder(path, "u.item")
    for number, line in enumerate(_lines(text), start=1):
        fields = line.split("|")
        if len(fields) != n_fields:
            _field_count_error(path, number, n_fields, len(fields), "|")
        flags = fields[5:]
        for column, flag in enumerate(flags, start=6):
            if flag.strip() not in ("0", "1"):
                raise DataError(
                    f"expected a genre flag 0 or 1, found {quoted(flag)}",
                    path=path,
                    line=number,
                    column=column,
                    column_name=genre_names[column - 6],
                )
        genres = tuple(g for g, f in zip(genre_names, flags, strict=True) if f.strip() == "1")
        builder.add(number, fields[0], fields[1], genres)
    return builder.build()


def _item_genres(item_path: Path) -> tuple[str, ...]:
    """Genre names from the sibling ``u.genre`` (``name|index`` lines), else ML-100K's."""
    genre_path = item_path.parent / "u.genre"
    if not genre_path.is_file():
        return ML100K_GENRES
    raw = _read_bytes(check_input_file(genre_path, "a genre list (u.genre)"))
    check_text(raw, genre_path, accepted="plain text")
    pairs = []
    for number, line in enumerate(raw.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, _, index = line.rpartition("|")
        if not name or not re.fullmatch(r"[0-9]{1,9}", index.strip()):
            raise DataError(
                f"expected 'genre|index' with a small whole-number index, found {quoted(line)}",
                path=genre_path,
                line=number,
                column=1,
            )
        pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs))


def _field_count_error(path: Path, line: int, expected: int, found: int, sep: str) -> NoReturn:
    column = min(expected, found) + 1
    raise DataError(
        f"expected {expected} fields separated by {sep!r}, found {found}",
        path=path,
        line=line,
        column=column,
    )
