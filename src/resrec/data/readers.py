"""Read ratings files of every MovieLens release, and generic delimited files.

:func:`read_ratings` turns a ratings file into a validated :class:`Ratings`
table. It knows these layouts (``layout="auto"`` picks one from the file's
name and first lines; naming one forces it):

``movielens-csv``
    ``ratings.csv`` of ML-20M, ML-25M, ml-latest and ml-latest-small: header
    ``userId,movieId,rating,timestamp``, half stars (0.5 to 5).
``kaggle-csv``
    The widely shared copy of ML-20M named ``rating.csv``, whose timestamps
    are date-times such as ``2005-04-02 23:53:47``; they are read as UTC and
    converted to seconds since 1970.
``tutorial-csv``
    The tutorial's ``edited_rating.csv``: header
    ``userId,movieId,rating,movie_idx``, optionally after an unnamed pandas
    index column. Both extra columns are ignored; there are no timestamps.
``dat``
    ML-1M and ML-10M ``ratings.dat``: ``user::movie::rating[::timestamp]``,
    no header. Whole stars when a folder on the path is named ``ml-1m``, half
    stars when one is named like ``ml-10m`` or ``ml-10M100K``, otherwise
    inferred from the data.
``udata``
    ML-100K ``u.data`` and its ``u1.base``/``ua.test``-style splits: tab
    separated ``user item rating timestamp``, no header, whole stars.
``delimited``
    Any other delimited file, described by ``sep``, ``header`` and
    ``columns``; what is not given is guessed from the first line and
    recorded in ``Ratings.notes``.

Files may be gzip-compressed (recognised by their first bytes, whatever
their name), start with a UTF-8 byte order mark, and end lines with LF, CRLF
or CR. A file compressed otherwise (bz2, xz, zstd, zip ...) is refused
naming its format, and any other binary file by the position of its first
NUL byte (:mod:`resrec.data.sniff`).

Validation
----------
Nothing is dropped or coerced silently. Every problem raises a
:class:`~resrec.errors.DataError` that names the file, the 1-based physical
line (of the decompressed text), the 1-based field and its name, and what was
expected there; when a file has several problems, the one on the earliest
line is reported. Checked, line by line: the number of fields, empty
fields and missing value markers (``\\N``, ``NULL``, ``NA``, ``nan`` ...),
ids that are not whole numbers >= 0 or do not fit 64 bits (however many
digits they have), ratings off the scale or between its steps, negative
timestamps and unreadable dates, a header where the layout has none and the
reverse, header names, and columns that look swapped (ids where the ratings
should be). Once every line passes, a (user_id, movie_id)
pair rated on two lines is reported at the first repeat, naming both lines.
A message repeats at most 40 characters of a bad value, followed by its
length.

Speed
-----
The file is parsed by Arrow's multi-threaded CSV reader with fixed column
types and checked with vectorised numpy; a 20-million-row ``ratings.csv``
takes a few seconds. Only when something is wrong is the file read again,
in 1 MiB pieces, and the first faulty piece parsed line by line in Python to
find the line and field. A ``::`` separator is replaced by a single byte
that does not occur in the file before Arrow sees it. Parsed tables are kept
in a cache (:mod:`resrec.data.cache`), so the next read of an unchanged file
loads in well under a second.

Limitations
-----------
One rating per line: quoted fields may not contain line breaks. Generic
files take whole-number timestamps, or date-times like the Kaggle copy's;
other date formats are not recognised.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import gzip
import hashlib
import logging
import math
import mmap
import re
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NoReturn, get_args

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from resrec.data import cache as parse_cache
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, Ratings, RatingScale
from resrec.data.sniff import GZIP_MAGIC, check_text, gunzip
from resrec.errors import ECHO_LIMIT, ConfigError, DataError, quoted, shorten

logger = logging.getLogger(__name__)

Layout = Literal["auto", "movielens-csv", "kaggle-csv", "tutorial-csv", "dat", "udata", "delimited"]
Role = Literal["user_id", "movie_id", "rating", "timestamp", "-"]
Duplicates = Literal["error", "last", "mean"]

LAYOUTS: tuple[str, ...] = get_args(Layout)
ROLES: tuple[str, ...] = get_args(Role)
DUPLICATES: tuple[str, ...] = get_args(Duplicates)

READER_VERSION = 2
"""Part of every cache key; bump it when the reader's output changes."""

_ML_HEADER = ("userId", "movieId", "rating", "timestamp")
_TUTORIAL_HEADER = ("userId", "movieId", "rating", "movie_idx")
_UDATA_NAME = re.compile(r"u\.data|u[1-5]\.(base|test)|u[ab]\.(base|test)")
_ML10M_FOLDER = re.compile(r"ml-?10m(100k)?")

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[ T]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2}))?)?)?"
)
_MISSING = {"\\n", "null", "na", "n/a", "#n/a", "nan", "-nan", "+nan", "none", "nil"}
_NOT_FINITE = {"inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"}
_BLANKS = " \t"
_INT64_MAX = np.iinfo(np.int64).max
_INT64_DIGITS = len(str(_INT64_MAX))
_TOO_LARGE = f"too large for a 64-bit integer (at most {_INT64_MAX})"

_HEADER_ROLES = {
    "userid": "user_id",
    "user": "user_id",
    "uid": "user_id",
    "movieid": "movie_id",
    "movie": "movie_id",
    "itemid": "movie_id",
    "item": "movie_id",
    "iid": "movie_id",
    "rating": "rating",
    "score": "rating",
    "timestamp": "timestamp",
    "time": "timestamp",
    "ts": "timestamp",
}

_PIECE_BYTES = 1 << 20  # the slow pass reads the file in pieces of about this size
_ARROW_BLOCK_BYTES = 1 << 22
_BLOCK = 1 << 16  # elements per block in vectorised checks
_HEAD_BYTES = 1 << 20  # how much of the file layout detection looks at
_SAMPLE_LINES = 2000  # lines the swapped-columns check looks at


# --------------------------------------------------------------------------- public


def read_ratings(
    path: str | Path,
    *,
    layout: Layout = "auto",
    sep: str | None = None,
    header: bool | None = None,
    columns: Sequence[str] | str | None = None,
    scale: RatingScale | str | None = None,
    duplicates: Duplicates = "error",
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> Ratings:
    """Read and validate a ratings file.

    Parameters
    ----------
    path : path
        The ratings file, plain or gzip-compressed.
    layout : str
        One of ``"auto"``, ``"movielens-csv"``, ``"kaggle-csv"``,
        ``"tutorial-csv"``, ``"dat"``, ``"udata"`` or ``"delimited"`` (see the
        module docstring). ``"auto"`` becomes ``"delimited"`` when ``sep``,
        ``header`` or ``columns`` is given.
    sep : str, optional
        For ``"delimited"``: the field separator (one or more characters).
        Guessed from the first line when omitted (``::``, tab, ``,``, ``;``,
        ``|`` or a space, in that order).
    header : bool, optional
        For ``"delimited"``: whether the first line names the columns. When
        omitted, the first line is a header only if every field that
        ``columns`` gives a role is a word rather than a number, so a data row
        is never taken for a header.
    columns : sequence of str, optional
        For ``"delimited"``: the role of each field in order, from
        ``"user_id"``, ``"movie_id"``, ``"rating"``, ``"timestamp"`` and ``"-"``
        (ignore the field); a comma-separated string is accepted. When
        omitted, roles come from the header's names (``userId``, ``user_id``,
        ``item``, ``score`` ...; other columns are ignored) or, without a
        header, from the number of fields: three are user, movie, rating and
        four add a timestamp.
    scale : RatingScale or str, optional
        The allowed ratings, overriding the layout's. Without it, the
        ``"dat"`` layout outside an ``ml-1m``/``ml-10m`` folder and the
        ``"delimited"`` layout infer it: whole stars (1 to 5) when every rating
        is a whole number from 1 to 5, else half stars (0.5 to 5); the choice is
        recorded in ``Ratings.notes``.
    duplicates : {"error", "last", "mean"}
        What to do when a (user_id, movie_id) pair is rated on more than one
        line. ``"error"`` raises, naming both lines. ``"last"`` keeps the
        later line. ``"mean"`` keeps one row, in the place and with the
        timestamp of the pair's last line, holding the mean of its ratings
        rounded to the nearest step of the scale, a mean halfway between two
        steps going to the higher one (3.0 and 4.5 give 4.0 on the half-star
        scale; 4 and 5 give 5 on the whole-star scale), so every rating stays
        on the scale. A note records how many pairs were merged.
    cache : bool
        Load the parsed table from the parse cache when the file and options
        are unchanged since it was stored, and store it after parsing.
    cache_dir : path, optional
        The cache folder; default :func:`resrec.data.cache.default_cache_dir`.

    Returns
    -------
    Ratings
        ``user_id`` and ``movie_id`` int64, ``rating`` float32, ``timestamp``
        int64 seconds since 1970 UTC (None when the file has none), the
        ``scale``, the ``layout`` read, the file's ``sha256`` and ``notes``.

    Raises
    ------
    DataError
        The file is missing or not valid for the layout; the message names
        the line and field.
    ConfigError
        An option value outside what is allowed.
    """
    started = time.perf_counter()
    path = Path(path)
    options = _check_options(layout, sep, header, columns, scale, duplicates)
    if not path.exists():
        raise DataError("no such file", path=path)
    if path.is_dir():
        raise DataError("is a folder, not a ratings file", path=path)

    key = parse_cache.CacheKey.for_file(path, options) if cache else None
    if key is not None:
        cached = parse_cache.load(key, str(path), cache_dir)
        if cached is not None:
            logger.info("loaded %d ratings of %s from the parse cache", len(cached), path)
            return cached

    ratings = _parse_file(path, options)
    if key is not None and key == parse_cache.CacheKey.for_file(path, options):
        parse_cache.store(key, ratings, cache_dir)

    elapsed = time.perf_counter() - started
    logger.info(
        "read %d ratings from %s (%s) in %.2f s", len(ratings), path, ratings.layout, elapsed
    )
    return ratings


def detect_layout(path: str | Path) -> str:
    """The layout ``read_ratings(path)`` would use, from the name and first lines.

    Returns one of ``"movielens-csv"``, ``"kaggle-csv"``, ``"tutorial-csv"``,
    ``"dat"``, ``"udata"`` or ``"delimited"``. Reads only the first MiB.
    """
    path = Path(path)
    with open(path, "rb") as file:
        start = file.read(_HEAD_BYTES)
    if start[:2] == GZIP_MAGIC:
        start = _gunzip_head(path)
    check_text(start, path, start=_bom_length(start))
    lines = _head_lines(start, _bom_length(start), whole=len(start) < _HEAD_BYTES)
    if not lines:
        raise DataError("empty file; expected ratings", path=path, line=1)
    return _detect(path, lines)


def _gunzip_head(path: Path) -> bytes:
    """The first ``_HEAD_BYTES`` of a gzip file, decompressed."""
    try:
        with gzip.open(path, "rb") as file:
            return file.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"not a readable gzip file ({error})", path=path) from None


# --------------------------------------------------------------------------- options


def _check_options(
    layout: str,
    sep: str | None,
    header: bool | None,
    columns: Sequence[str] | str | None,
    scale: RatingScale | str | None,
    duplicates: str,
) -> dict[str, object]:
    """Validate the reader options; returns them normalised (this is the cache key)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if duplicates not in DUPLICATES:
        raise ConfigError(f"duplicates must be one of {', '.join(DUPLICATES)}; got {duplicates!r}")

    generic = sep is not None or header is not None or columns is not None
    if generic and layout not in ("auto", "delimited"):
        raise ConfigError(
            f"sep, header and columns describe a 'delimited' file; layout {layout!r} fixes them",
            hint="leave layout as 'auto' or pass layout='delimited'",
        )
    if sep is not None and (not sep or any(c in sep for c in '\r\n"')):
        raise ConfigError(
            f"sep must be one or more characters other than quotes and line breaks; got {sep!r}"
        )

    roles = None if columns is None else _check_columns(columns)
    if isinstance(scale, str):
        scale = RatingScale.parse(scale)
    return {
        "reader": READER_VERSION,
        "layout": layout,
        "sep": sep,
        "header": header,
        "columns": roles,
        "scale": None if scale is None else scale.to_dict(),
        "duplicates": duplicates,
    }


def _check_columns(columns: Sequence[str] | str) -> list[str]:
    roles = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(columns)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ConfigError(
            f"columns: unknown role {unknown[0]!r}; each must be one of {', '.join(ROLES)}"
        )
    for role in ("user_id", "movie_id", "rating"):
        if roles.count(role) != 1:
            raise ConfigError(f"columns must name {role!r} exactly once; got {','.join(roles)}")
    if roles.count("timestamp") > 1:
        raise ConfigError(f"columns may name 'timestamp' at most once; got {','.join(roles)}")
    return roles


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Spec:
    """How to split and convert one file: the outcome of layout detection."""

    layout: str
    sep: str  # as written in the file
    header: bool
    roles: tuple[str, ...]  # one per field
    names: tuple[str, ...]  # one per field: the header's names, or the roles
    scale: RatingScale | None  # None: infer from the data
    dates: bool = False  # the timestamp field holds date-times
    quoting: bool = False  # fields may be quoted with "
    notes: tuple[str, ...] = ()

    def index(self, role: str) -> int:
        return self.roles.index(role)

    @property
    def listed(self) -> str:
        """The field names, comma-separated, each cut short for messages."""
        return ",".join(shorten(name) for name in self.names)

    @property
    def active(self) -> list[tuple[int, str]]:
        return [(i, role) for i, role in enumerate(self.roles) if role != "-"]


def _detect(path: Path, lines: list[str]) -> str:
    name = path.name.lower().removesuffix(".gz")
    if _UDATA_NAME.fullmatch(name):
        return "udata"
    if name.endswith(".dat") or "::" in lines[0]:
        return "dat"

    names = [_normalise(n) for n in _split(lines[0], ",", quoting=True, strict=False)]
    if sorted(names) == sorted(_normalise(n) for n in _ML_HEADER):
        second = _split(lines[1], ",", quoting=True, strict=False) if len(lines) > 1 else []
        stamp = second[names.index("timestamp")] if len(second) == len(names) else ""
        return "kaggle-csv" if _DATE.fullmatch(stamp) else "movielens-csv"
    if names and names[0] in ("", "unnamed0", "index"):
        names = names[1:]
    if sorted(names) == sorted(_normalise(n) for n in _TUTORIAL_HEADER):
        return "tutorial-csv"
    return "delimited"


def _plan(path: Path, lines: list[str], options: dict[str, object]) -> _Spec:
    """Decide how to read ``path`` from the options and its first ``lines``."""
    if not lines:
        raise DataError("empty file; expected ratings", path=path, line=1)
    if not lines[0].strip():
        raise DataError("blank first line; expected ratings or a header", path=path, line=1)

    layout = str(options["layout"])
    notes: tuple[str, ...] = ()
    if layout == "auto":
        generic = any(options[k] is not None for k in ("sep", "header", "columns"))
        layout = "delimited" if generic else _detect(path, lines)
        notes = (f"layout {layout!r} detected from the file name and first line",)

    if layout in ("movielens-csv", "kaggle-csv", "tutorial-csv"):
        spec = _plan_header_csv(path, layout, lines[0])
    elif layout == "dat":
        spec = _plan_dat(path, lines[0])
    elif layout == "udata":
        spec = _Spec("udata", "\t", False, _roles(4), _roles(4), WHOLE_STARS)
    else:
        spec = _plan_delimited(path, lines, options)

    scale = options["scale"]
    if isinstance(scale, dict):
        spec = replace(spec, scale=RatingScale(**scale))
    return replace(spec, notes=notes + spec.notes)


def _plan_header_csv(path: Path, layout: str, first: str) -> _Spec:
    expected = _TUTORIAL_HEADER if layout == "tutorial-csv" else _ML_HEADER
    fields = _split(first, ",", quoting=True, strict=False)
    shown = ",".join(expected)
    if all(_FLOAT.fullmatch(f.strip(_BLANKS)) for f in fields):
        raise DataError(
            f"expected the header {shown}, found a line of numbers {quoted(first)}",
            path=path,
            line=1,
            column=1,
            hint="if the file has no header, pass layout='delimited' with header=False "
            "and columns=... (--header/--columns on the command line)",
        )

    known = {_normalise(n): n for n in expected}
    roles: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(fields):
        key = _normalise(name)
        if layout == "tutorial-csv" and i == 0 and key in ("", "unnamed0", "index"):
            roles.append("-")  # the pandas index column
        elif key in known and key not in seen:
            roles.append("-" if key == "movieidx" else _HEADER_ROLES[key])
            seen.add(key)
        else:
            raise DataError(
                f"unexpected column name {quoted(name)} in the header; layout {layout!r} expects "
                f"{shown}",
                path=path,
                line=1,
                column=i + 1,
                column_name=name,
            )
    missing = [n for n in expected if _normalise(n) not in seen]
    if missing:
        raise DataError(
            f"the header lacks {missing[0]!r}; layout {layout!r} expects {shown}",
            path=path,
            line=1,
        )

    in_order = [f.strip() for f in fields if _normalise(f) in known] == list(expected)
    notes = () if in_order else (f"header columns in the order {first.strip()}; read by name",)
    return _Spec(
        layout,
        ",",
        True,
        tuple(roles),
        tuple(f.strip() for f in fields),
        HALF_STARS,
        dates=layout == "kaggle-csv",
        quoting=True,
        notes=notes,
    )


def _plan_dat(path: Path, first: str) -> _Spec:
    n_fields = len(first.split("::"))
    if n_fields not in (3, 4):
        raise DataError(
            f"expected 3 or 4 fields separated by '::' (user::movie::rating[::timestamp]), "
            f"found {n_fields}",
            path=path,
            line=1,
            column=n_fields + 1 if n_fields < 3 else 5,
        )
    folders = [part.lower() for part in path.resolve().parent.parts]
    scale: RatingScale | None = None  # inferred from the data
    notes: tuple[str, ...] = ()
    if any(_ML10M_FOLDER.fullmatch(f) for f in folders):
        scale, notes = HALF_STARS, ("half-star scale: the file is in an ML-10M folder",)
    elif "ml-1m" in folders:
        scale, notes = WHOLE_STARS, ("whole-star scale: the file is in an ML-1M folder",)
    roles = _roles(n_fields)
    return _Spec("dat", "::", False, roles, roles, scale, notes=notes)


def _plan_delimited(path: Path, lines: list[str], options: dict[str, object]) -> _Spec:
    notes: list[str] = []
    sep = options["sep"]
    if not isinstance(sep, str):
        sep = next((s for s in ("::", "\t", ",", ";", "|", " ") if s in lines[0]), None)
        if sep is None:
            raise DataError(
                "cannot tell the field separator from the first line",
                path=path,
                line=1,
                hint="pass sep=... (--sep on the command line)",
            )
        notes.append(f"field separator {sep!r} guessed from the first line")
    quoting = len(sep) == 1
    fields = _split(lines[0], sep, quoting=quoting, strict=False)
    columns = options["columns"]
    roles = tuple(columns) if isinstance(columns, list) else None

    header = options["header"]
    role_fields = (
        fields if roles is None else [f for f, r in zip(fields, roles, strict=False) if r != "-"]
    )
    looks_like_header = all(_is_word(f) for f in role_fields)
    if header is None:
        header = looks_like_header
        if header:
            notes.append("first line read as a header: none of its fields is a number")
    elif header and all(_FLOAT.fullmatch(f.strip(_BLANKS)) for f in fields):
        raise DataError(
            f"header=True, but the first line is a line of numbers {quoted(lines[0])}",
            path=path,
            line=1,
            column=1,
            hint="pass header=False if the file has no header",
        )

    if roles is None:
        roles = _roles_from_header(path, fields) if header else _roles_from_count(path, fields)
        notes.append(f"columns read as {','.join(roles)}")
    elif len(roles) != len(fields):
        raise DataError(
            f"columns names {len(roles)} fields ({','.join(roles)}), but the line has "
            f"{len(fields)} separated by {sep!r}",
            path=path,
            line=1,
            column=min(len(roles), len(fields)) + 1,
        )

    names = tuple(f.strip() for f in fields) if header else roles
    data_line = lines[1] if header and len(lines) > 1 else lines[0]
    dates = False
    if "timestamp" in roles:
        values = _split(data_line, sep, quoting=quoting, strict=False)
        if len(values) == len(roles) and _DATE.fullmatch(values[roles.index("timestamp")]):
            dates = True
            notes.append("timestamps read as UTC date-times")
    return _Spec("delimited", sep, bool(header), roles, names, None, dates, quoting, tuple(notes))


def _roles_from_header(path: Path, fields: list[str]) -> tuple[str, ...]:
    roles = [_HEADER_ROLES.get(_normalise(f), "-") for f in fields]
    for role in ("user_id", "movie_id", "rating", "timestamp"):
        if roles.count(role) > 1 or (role != "timestamp" and role not in roles):
            found = ",".join(f.strip() for f in fields)
            raise DataError(
                f"cannot tell which column of the header {quoted(found)} holds the {role}",
                path=path,
                line=1,
                hint="pass columns=... naming each field's role, e.g. "
                "columns=user_id,movie_id,rating,- (--columns on the command line)",
            )
    return tuple(roles)


def _roles_from_count(path: Path, fields: list[str]) -> tuple[str, ...]:
    if len(fields) not in (3, 4):
        raise DataError(
            f"cannot tell the role of each of the {len(fields)} fields of a file without header",
            path=path,
            line=1,
            hint="pass columns=... naming each field's role, e.g. "
            "columns=user_id,movie_id,rating,- (--columns on the command line)",
        )
    return _roles(len(fields))


def _roles(n_fields: int) -> tuple[str, ...]:
    return ("user_id", "movie_id", "rating", "timestamp")[:n_fields]


def _normalise(name: str) -> str:
    """Header name as compared: lower case, letters and digits only."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _is_word(text: str) -> bool:
    """Could ``text`` be a column name (not empty, a number or a missing-value marker)?"""
    text = text.strip(_BLANKS)
    lowered = text.lower()
    return bool(text) and not _FLOAT.fullmatch(text) and lowered not in _MISSING | _NOT_FINITE


def _split(text: str, sep: str, *, quoting: bool, strict: bool = True) -> list[str]:
    """The fields of one line of text; bad quoting raises csv.Error unless not ``strict``."""
    if not quoting or '"' not in text:
        return text.split(sep)
    try:
        return next(csv.reader([text], delimiter=sep, strict=True), [""])
    except csv.Error:
        if strict:
            raise
        return text.split(sep)


# --------------------------------------------------------------------------- source bytes


class _Digest:
    """The sha256 of a buffer, computed in a thread while the main thread parses."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self._hex: str | None = None
        self._thread = threading.Thread(target=self._run, args=(data,), daemon=True)
        self._thread.start()

    def _run(self, data: bytes | mmap.mmap) -> None:
        self._hex = hashlib.sha256(data).hexdigest()

    def result(self) -> str:
        self._thread.join()
        if self._hex is None:
            raise RuntimeError("computing the file's sha256 failed")
        return self._hex


def _load(path: Path) -> tuple[bytes | mmap.mmap, _Digest]:
    """The file's (decompressed) bytes, and its sha256 being computed."""
    try:
        return _load_bytes(path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(f"cannot read the file: {reason}", path=path) from None


def _load_bytes(path: Path) -> tuple[bytes | mmap.mmap, _Digest]:
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        if size == 0:
            raise DataError("empty file; expected ratings", path=path, line=1)
        file.seek(0)
        if file.read(2) == GZIP_MAGIC:
            file.seek(0)
            raw = file.read()
            digest = _Digest(raw)
            text = gunzip(raw, path)
            check_text(text, path, start=_bom_length(text))
            return text, digest
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    check_text(data, path, start=_bom_length(data))
    return data, _Digest(data)


def _bom_length(data: bytes | mmap.mmap) -> int:
    return 3 if data[:3] == b"\xef\xbb\xbf" else 0


def _head_lines(data: bytes | mmap.mmap, start: int, *, whole: bool) -> list[str]:
    """The first lines of ``data[start:]`` as text.

    ``whole``: ``data`` holds the whole file, so a last line without line
    break is complete; otherwise (and past ``_HEAD_BYTES``) it is dropped,
    unless it is the only one.
    """
    stop = min(len(data), start + _HEAD_BYTES)
    head = bytes(data[start:stop])
    lines = head.splitlines()
    cut_short = stop < len(data) or not whole
    if cut_short and len(lines) > 1 and not head.endswith((b"\n", b"\r")):
        lines.pop()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.decode("utf-8", errors="replace") for line in lines[: _SAMPLE_LINES + 1]]


@dataclass
class _Body:
    """The ratings lines of a file: ``data[start:end]``, one rating per line."""

    data: bytes | mmap.mmap
    start: int
    end: int
    first_line: int  # physical line number of data[start]
    sep: str  # what separates fields in ``data``: one character, or "::"

    def arrow_buffer(self) -> pa.Buffer:
        return pa.py_buffer(self.data).slice(self.start, self.end - self.start)

    def pieces(self) -> list[tuple[int, int]]:
        """Byte ranges of about ``_PIECE_BYTES`` each, cut after a line feed."""
        ranges, position = [], self.start
        while position < self.end:
            cut = min(position + _PIECE_BYTES, self.end)
            if cut < self.end:
                newline = self.data.find(b"\n", cut, self.end)
                cut = self.end if newline < 0 else newline + 1
            ranges.append((position, cut))
            position = cut
        return ranges

    def line_count(self) -> int:
        view = np.frombuffer(self.data, np.uint8, self.end - self.start, self.start)
        feeds, returns = np.count_nonzero(view == 10), np.count_nonzero(view == 13)
        pairs = np.count_nonzero((view[:-1] == 13) & (view[1:] == 10))
        return int(feeds + returns - pairs + 1)  # the body ends without a line break


def _body(path: Path, data: bytes | mmap.mmap, spec: _Spec) -> _Body:
    """Cut off the header and trailing line breaks; replace a separator Arrow cannot split on."""
    start = _bom_length(data)
    first_line = 1
    if spec.header:
        newline = data.find(b"\n", start)
        carriage = data.find(b"\r", start, newline if newline >= 0 else len(data))
        cut = carriage if carriage >= 0 else newline
        if cut < 0:
            cut = len(data)  # the header is the only line
        start = cut + (2 if data[cut : cut + 2] == b"\r\n" else 1)
        first_line = 2

    end = len(data)
    while end > start and data[end - 1] in (10, 13):
        end -= 1
    if end <= start:
        where = "the file has a header but no ratings" if spec.header else "empty file"
        raise DataError(
            f"{where}; expected lines of {len(spec.roles)} fields ({spec.listed})",
            path=path,
            line=first_line,
            column=1,
            column_name=spec.names[0],
        )

    encoded = spec.sep.encode()
    if len(encoded) == 1 or (spec.sep == "::" and "-" not in spec.roles):
        return _Body(data, start, end, first_line, spec.sep)  # see _arrow_parse for "::"

    text = bytes(data[start:end])
    spare = next((b for b in (b"\t", b"\x1f", b"\x1e", b"\x1d", b"\x1c") if b not in text), None)
    if spare is None:
        raise DataError(
            f"cannot read a file separated by {spec.sep!r} that also holds tabs and "
            "control characters 28 to 31",
            path=path,
        )
    text = text.replace(encoded, spare)
    return _Body(text, 0, len(text), first_line, spare.decode())


# --------------------------------------------------------------------------- parsing


def _parse_file(path: Path, options: dict[str, object]) -> Ratings:
    """Parse and validate ``path`` (no cache)."""
    data, digest = _load(path)
    start = _bom_length(data)
    lines = _head_lines(data, start, whole=True)
    spec = _plan(path, lines, options)
    body = _body(path, data, spec)
    check_scale = spec.scale or HALF_STARS

    checker = _LineChecker(str(path), spec, check_scale, lines)
    columns = _parse_fast(body, spec, check_scale)
    if columns is None:
        logger.debug("%s: fast parse found a problem; locating it", path)
        columns = _parse_slow(body, spec, check_scale, checker)

    notes = list(spec.notes)
    scale = spec.scale or _infer_scale(columns["rating"], notes)
    policy = str(options["duplicates"])
    columns = _resolve_duplicates(columns, policy, scale, checker, body, notes)
    timestamp = columns.get("timestamp")
    return Ratings(
        user_id=columns["user_id"],
        movie_id=columns["movie_id"],
        rating=columns["rating"].astype(np.float32),
        timestamp=timestamp,
        scale=scale,
        source=str(path),
        sha256=digest.result(),
        layout=spec.layout,
        notes=notes,
    )


def _may_hold_hex(body: _Body) -> bool:
    """Whether the body holds ``0x`` or ``0X``: a one-byte scan first (ten times faster)."""
    return any(
        body.data.find(letter, body.start, body.end) >= 0
        and body.data.find(b"0" + letter, body.start, body.end) >= 0
        for letter in (b"x", b"X")
    )


def _parse_fast(body: _Body, spec: _Spec, scale: RatingScale) -> dict[str, np.ndarray] | None:
    """All columns via one multi-threaded Arrow parse, or None if anything is wrong."""
    if _may_hold_hex(body):
        return None  # Arrow reads 0x10 as 16; the line checks refuse hexadecimal ids
    columns = _arrow_parse(body.arrow_buffer(), spec, body.sep, threads=True)
    if columns is None or not _columns_valid(columns, scale):
        return None
    quoted = spec.quoting and body.data.find(b'"', body.start, body.end) >= 0
    if quoted and len(columns["rating"]) != body.line_count():
        return None  # a quoted field spans lines
    return columns


def _parse_slow(
    body: _Body, spec: _Spec, scale: RatingScale, checker: _LineChecker
) -> dict[str, np.ndarray]:
    """Parse piece by piece; the first piece with a problem is checked line by line."""
    pieces: list[dict[str, np.ndarray]] = []
    line = body.first_line
    for start, end in body.pieces():
        chunk = bytes(body.data[start:end])
        n_lines = len(chunk.splitlines())
        columns = _arrow_parse(pa.py_buffer(chunk), spec, body.sep, threads=False)
        valid = (
            columns is not None
            and b"0x" not in chunk
            and b"0X" not in chunk
            and len(columns["rating"]) == n_lines
            and _columns_valid(columns, scale)
        )
        if not valid:
            columns = checker.parse(chunk, line, body.sep)  # raises at the first problem
        assert columns is not None
        pieces.append(columns)
        line += n_lines
    return {role: np.concatenate([p[role] for p in pieces]) for role in pieces[0]}


_ARROW_TYPES = {
    "user_id": pa.int64(),
    "movie_id": pa.int64(),
    "rating": pa.float64(),
    "timestamp": pa.int64(),
}


def _arrow_parse(
    buffer: pa.Buffer, spec: _Spec, sep: str, *, threads: bool
) -> dict[str, np.ndarray] | None:
    """Columns by role (ratings still float64), or None if Arrow rejects the text.

    Arrow splits on one character only. A ``::`` file is split on ``:``: the
    field between the two colons of each separator must then be empty, which
    Arrow checks by reading it as type null.
    """
    names = [f"f{i}" for i in range(len(spec.roles))]
    types = {
        names[i]: pa.timestamp("s") if role == "timestamp" and spec.dates else _ARROW_TYPES[role]
        for i, role in spec.active
    }
    delimiter, read_names = sep, names
    if sep == "::":
        read_names = [n for i, name in enumerate(names) for n in (name, f"gap{i}")][:-1]
        types.update({n: pa.null() for n in read_names if n.startswith("gap")})
        delimiter = ":"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(buffer),
            read_options=pacsv.ReadOptions(
                column_names=read_names, use_threads=threads, block_size=_ARROW_BLOCK_BYTES
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if spec.quoting else False,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=list(types),
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        logger.debug("arrow rejected the text: %s", error)
        return None

    columns = {}
    for i, role in spec.active:
        column = table.column(names[i])
        if column.null_count:
            return None  # an empty field
        if role == "timestamp" and spec.dates:
            column = column.cast(pa.int64())
        array = column.to_numpy()
        columns[role] = array if array.flags.writeable else array.copy()
    return columns


def _columns_valid(columns: dict[str, np.ndarray], scale: RatingScale) -> bool:
    """Vectorised twin of the line checks: ids and timestamps >= 0, ratings on the scale."""
    for role in ("user_id", "movie_id", "timestamp"):
        column = columns.get(role)
        if column is not None and column.size and column.min() < 0:
            return False
    return _all_on_scale(columns["rating"], scale)


def _all_on_scale(rating: np.ndarray, scale: RatingScale) -> bool:
    """Same test as :meth:`RatingScale.on_scale`, a block at a time to stay in cache."""
    if not rating.size:
        return True
    low, high = rating.min(), rating.max()  # NaN compares false below
    if not (low >= scale.low - 1e-9 and high <= scale.high + 1e-9):
        return False

    steps = np.empty(min(_BLOCK, rating.size))
    off = np.empty_like(steps)
    for start in range(0, rating.size, _BLOCK):
        part = rating[start : start + _BLOCK]
        s, o = steps[: part.size], off[: part.size]
        np.subtract(part, scale.low, out=s)
        np.divide(s, scale.step, out=s)
        np.rint(s, out=o)
        np.subtract(o, s, out=o)
        np.abs(o, out=o)
        if o.max() >= 1e-6:
            return False
    return True


def _on_scale(value: float, scale: RatingScale) -> bool:
    """One value's :meth:`RatingScale.on_scale`, without numpy's per-call cost."""
    if not math.isfinite(value):
        return False
    steps = (value - scale.low) / scale.step
    return abs(steps - round(steps)) < 1e-6 and scale.low - 1e-9 <= value <= scale.high + 1e-9


def _infer_scale(rating: np.ndarray, notes: list[str]) -> RatingScale:
    whole = bool(np.all(rating == np.rint(rating)) and rating.min() >= 1 and rating.max() <= 5)
    scale = WHOLE_STARS if whole else HALF_STARS
    notes.append(f"rating scale inferred from the data: {scale.describe()}")
    return scale


# --------------------------------------------------------------------------- line checks


@dataclass(frozen=True)
class _Field:
    """One field of one line, for error messages."""

    role: str
    text: str
    line: int  # 1-based physical line
    column: int  # 0-based field index
    fields: list[str]  # the whole line's fields


class _LineChecker:
    """Parse lines one by one in Python, raising a precise error at the first problem."""

    def __init__(self, path: str, spec: _Spec, scale: RatingScale, head: list[str]) -> None:
        self.path = path
        self.spec = spec
        self.scale = scale
        self.head = head  # the file's first lines (with the header), for the swap check
        self._swap_checked = False

    def parse(self, chunk: bytes, first_line: int, sep: str) -> dict[str, np.ndarray]:
        """The columns of ``chunk`` (ratings as float64); raises at the first problem."""
        values: dict[str, list[float]] = {role: [] for _, role in self.spec.active}
        for offset, raw in enumerate(chunk.splitlines()):
            line = first_line + offset
            fields = self._fields(raw.decode("utf-8", errors="replace"), line, sep)
            for column, role in self.spec.active:
                field = _Field(role, fields[column], line, column, fields)
                values[role].append(self.convert(field))

        return {
            role: np.asarray(v, dtype=np.float64 if role == "rating" else np.int64)
            for role, v in values.items()
        }

    def _fields(self, text: str, line: int, sep: str) -> list[str]:
        spec = self.spec
        try:
            fields = _split(text, sep, quoting=spec.quoting) if text else []
        except csv.Error as error:
            raise DataError(
                f"cannot split the line into fields ({error}); a quoted field must close "
                "on its line",
                path=self.path,
                line=line,
            ) from None
        if len(fields) == len(spec.roles):
            return fields

        found = "a blank line" if not fields else f"{len(fields)} field" + "s" * (len(fields) > 1)
        column = min(len(fields), len(spec.roles))  # the first missing or extra field
        raise DataError(
            f"expected {len(spec.roles)} fields ({spec.listed}) separated by "
            f"{spec.sep!r}, found {found}",
            path=self.path,
            line=line,
            column=column + 1,
            column_name=spec.names[column] if column < len(spec.names) else None,
        )

    def convert(self, field: _Field) -> float:
        """The value of one field, or a DataError saying what is wrong with it."""
        if field.role == "timestamp" and self.spec.dates:
            seconds = _epoch_seconds(field.text)
            if seconds is None:
                self.fail(field, "expected {expected}, found {value}")
            if seconds < 0:
                self.fail(field, "date {value} is before 1970; expected {expected}")
            return seconds

        text = field.text.strip(_BLANKS)
        if not text:
            self.fail(field, "empty field; expected {expected}", value=False)
        if text.lower() in _MISSING:
            self.fail(field, "missing value '{text}'; expected {expected}", value=False)
        if field.role == "rating":
            return self._rating(field, text)
        return self._integer(field, text)

    def _integer(self, field: _Field, text: str) -> int:
        if _INT.fullmatch(text):
            if text.startswith("-") and text.strip("-0"):
                self.fail(field, f"negative {field.role} {{text}}; expected {{expected}}")
            if len(text.lstrip("0")) > _INT64_DIGITS or int(text) > _INT64_MAX:
                self.fail(field, f"{field.role} {{text}} is out of range: {_TOO_LARGE}")
            return int(text)

        if _FLOAT.fullmatch(text):
            self.fail(field, "expected {expected}, found {value}, which is not a whole number")
        hint = None
        if field.role == "timestamp" and _DATE.fullmatch(text):
            hint = "these timestamps are date-times, as in the Kaggle copy of ML-20M: "
            hint += "pass layout='kaggle-csv'"
        self.fail(field, "expected {expected}, found {value}", hint=hint)

    def _rating(self, field: _Field, text: str) -> float:
        if not _FLOAT.fullmatch(text):
            self.fail(field, "expected {expected}, found {value}")
        value = float(text)
        if not math.isfinite(value):
            self.fail(field, "rating {text} is out of range; expected {expected}")
        if not _on_scale(value, self.scale):
            how = "was inferred" if self.spec.scale is None else "is the layout's"
            hint = f"the scale {how}; if the file uses another, pass scale='LOW:HIGH:STEP' "
            hint += "(--scale on the command line)"
            self.fail(field, "rating {text} is off the scale; expected {expected}", hint=hint)
        return value

    def expected(self, role: str) -> str:
        """What a field of ``role`` should hold, for messages."""
        if role == "rating":
            return f"a rating from {self.scale.describe()}"
        if role == "timestamp" and self.spec.dates:
            return "a date-time like 2005-04-02 23:53:47 (YYYY-MM-DD HH:MM:SS UTC, from 1970)"
        if role == "timestamp":
            return "a whole-number timestamp >= 0 (seconds since 1970-01-01 UTC)"
        return f"a whole-number {role} >= 0"

    def fail(
        self, field: _Field, template: str, *, value: bool = True, hint: str | None = None
    ) -> NoReturn:
        """Raise the DataError for ``field``; ``value``: it holds a wrong value, not none.

        ``template`` may name ``{text}`` (the field, cut to a readable length),
        ``{value}`` (the same, quoted) and ``{expected}``.

        A wrong value on the first line of a file without header may be a
        header, and wrong values may come from swapped columns: those get
        their own message.
        """
        if value and field.line == 1 and not self.spec.header:
            self._raise_if_header(field.fields)
        if value and not self._swap_checked:
            self._swap_checked = True
            swapped = _swapped_columns(self)
            if swapped is not None:
                raise swapped

        text = field.text.strip(_BLANKS)
        raise DataError(
            template.format(
                text=shorten(text), value=quoted(text), expected=self.expected(field.role)
            ),
            path=self.path,
            line=field.line,
            column=field.column + 1,
            column_name=self.spec.names[field.column],
            hint=hint,
        )

    def _raise_if_header(self, fields: list[str]) -> None:
        if not all(_is_word(fields[i]) for i, _ in self.spec.active):
            return
        shown = shorten(", ".join(f.strip() for f in fields), 2 * ECHO_LIMIT)
        raise DataError(
            f"the first line looks like a header ({shown}), "
            f"but layout {self.spec.layout!r} has none; "
            f"expected {self.expected(self.spec.roles[0])}",
            path=self.path,
            line=1,
            column=1,
            column_name=self.spec.names[0],
            hint="if the file has a header, pass layout='delimited' with header=True "
            "(--header on the command line)",
        )

    def sample(self) -> list[tuple[int, list[str]]]:
        """(line number, fields) of up to ``_SAMPLE_LINES`` first ratings lines."""
        skip = 1 if self.spec.header else 0
        rows = []
        for offset, text in enumerate(self.head[skip : skip + _SAMPLE_LINES]):
            try:
                fields = _split(text, self.spec.sep, quoting=self.spec.quoting)
            except csv.Error:
                continue
            if len(fields) == len(self.spec.roles):
                rows.append((offset + 1 + skip, fields))
        return rows


def _epoch_seconds(text: str) -> int | None:
    """Seconds since 1970 UTC of an ISO date-time without zone, or None if it is not one."""
    match = _DATE.fullmatch(text)
    if match is None:
        return None
    parts = [int(g) if g else 0 for g in match.groups()]
    try:
        year, month, day, hour, minute, second = parts
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    return calendar.timegm((*parts, 0, 0, 0))


def _swapped_columns(checker: _LineChecker) -> DataError | None:
    """An error saying the columns look swapped, if the first lines suggest it.

    They do when at least 90% of the values in the rating field (and at
    least three) are off the scale while every value of another field (a
    user_id, movie_id or timestamp by the layout) is on it.
    """
    spec, scale = checker.spec, checker.scale
    rows = checker.sample()
    rating_column = spec.index("rating")

    def numbers(column: int) -> list[tuple[int, str, float]]:
        found = []
        for line_no, fields in rows:
            text = fields[column].strip(_BLANKS)
            if _FLOAT.fullmatch(text):
                found.append((line_no, text, float(text)))
        return found

    ratings = numbers(rating_column)
    off_scale = [(line_no, text) for line_no, text, v in ratings if not _on_scale(v, scale)]
    if len(ratings) < 3 or len(off_scale) < 0.9 * len(ratings):
        return None

    candidates = []
    for column, role in spec.active:
        values = numbers(column)
        if role == "rating" or len(values) < 0.99 * len(rows):
            continue
        if all(_on_scale(v, scale) for _, _, v in values):
            fractional = any(v != int(v) for _, _, v in values)
            candidates.append((not fractional, column))
    if not candidates:
        return None

    _, fits = min(candidates)
    roles = list(spec.roles)
    roles[rating_column], roles[fits] = roles[fits], roles[rating_column]
    line_no, text = off_scale[0]
    return DataError(
        f"rating {shorten(text)} is off the scale ({scale.describe()}), like most values in "
        "this field, "
        f"while field {fits + 1} ({shorten(spec.names[fits])}) holds only values on it: "
        "the columns look swapped",
        path=checker.path,
        line=line_no,
        column=rating_column + 1,
        column_name=spec.names[rating_column],
        hint=f"name each field's role with columns=..., for example columns={','.join(roles)} "
        f"(--columns {','.join(roles)} on the command line); check which field holds the "
        "user_id and which the movie_id",
    )


# --------------------------------------------------------------------------- duplicates


def _resolve_duplicates(
    columns: dict[str, np.ndarray],
    policy: str,
    scale: RatingScale,
    checker: _LineChecker,
    body: _Body,
    notes: list[str],
) -> dict[str, np.ndarray]:
    """Raise on a repeated (user_id, movie_id) pair, or merge repeats by ``policy``."""
    user, movie = columns["user_id"], columns["movie_id"]
    grouped = _group_pairs(user, movie)
    if grouped is None:
        return columns
    order, starts = grouped

    if policy == "error":
        repeats = order[~starts]
        row = int(repeats.min())
        position = int(np.flatnonzero(order == row)[0])
        previous = int(order[position - 1])
        spec = checker.spec
        column = spec.index("movie_id")
        raise DataError(
            f"user_id {user[row]} rated movie_id {movie[row]} again "
            f"(first on line {body.first_line + previous})",
            path=checker.path,
            line=body.first_line + row,
            column=column + 1,
            column_name=spec.names[column],
            hint="pass duplicates='last' to keep the later rating or duplicates='mean' to "
            "average them (--duplicates on the command line)",
        )

    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = True
    kept = order[ends]  # the last line of each pair, in pair order
    merged = int(len(order) - len(kept))
    placement = np.argsort(kept, kind="stable")
    result = {role: values[kept[placement]] for role, values in columns.items()}

    if policy == "mean":
        group = np.cumsum(starts) - 1
        result["rating"] = _mean_on_scale(columns["rating"][order], group, scale)[placement]
    notes.append(
        f"{merged} repeated ratings of the same (user_id, movie_id) pair merged "
        f"(duplicates={policy!r})"
    )
    logger.info("%s: merged %d repeated ratings (duplicates=%r)", checker.path, merged, policy)
    return result


def _mean_on_scale(rating: np.ndarray, group: np.ndarray, scale: RatingScale) -> np.ndarray:
    """Each group's mean rating, rounded to the nearest step of ``scale``, ties upwards.

    Ratings are counted in whole steps above ``scale.low``, so the sums and
    the rounding are exact integer arithmetic: for a group of ``n`` ratings
    with ``k`` steps in total, the mean is ``k / n`` steps and the nearest
    step, ties up, is ``floor((2k + n) / 2n)``.
    """
    steps = np.rint((rating - scale.low) / scale.step).astype(np.int64)
    total = np.bincount(group, weights=steps).astype(np.int64)  # exact below 2**53
    count = np.bincount(group).astype(np.int64)
    nearest = (2 * total + count) // (2 * count)
    return scale.low + nearest * scale.step


def _group_pairs(user: np.ndarray, movie: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows stably sorted by pair, and where each pair's group starts; None if none repeats."""
    n = len(user)
    if n < 2:
        return None

    span = int(movie.max()) + 1
    if int(user.max()) >= _INT64_MAX // span:
        return _group_pairs_lexsort(user, movie)  # ids too large to combine into one key
    if _pairs_increasing(user, movie, span):
        return None  # sorted by (user_id, movie_id) without repeats: the usual case

    key = user * span + movie
    ordered = np.sort(key)
    starts = np.empty(n, dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    if starts.all():
        return None
    return np.argsort(key, kind="stable"), starts


def _pairs_increasing(user: np.ndarray, movie: np.ndarray, span: int) -> bool:
    """Whether ``user * span + movie`` strictly increases, a block at a time."""
    key = np.empty(min(_BLOCK, len(user)) + 1, dtype=np.int64)
    for start in range(0, len(user) - 1, _BLOCK):
        stop = min(start + _BLOCK + 1, len(user))  # one past the block: blocks overlap by one
        k = key[: stop - start]
        np.multiply(user[start:stop], span, out=k)
        k += movie[start:stop]
        if not (k[1:] > k[:-1]).all():
            return False
    return True


def _group_pairs_lexsort(
    user: np.ndarray, movie: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    order = np.lexsort((movie, user))
    u, m = user[order], movie[order]
    starts = np.empty(len(user), dtype=bool)
    starts[0] = True
    starts[1:] = (u[1:] != u[:-1]) | (m[1:] != m[:-1])
    return None if starts.all() else (order, starts)
