"""Read ratings files of every MovieLens release, and generic delimited files.

:func:`read_ratings` turns a ratings file into a validated :class:`Ratings`
table. It knows these layouts (``layout="auto"`` picks one from the file's
name and first lines; naming one forces it). A file named like one of the
header-carrying layouts (``ratings.csv``, ``rating.csv``,
``edited_rating.csv``, optionally ``.gz``) whose first line holds data is
refused as missing its header; a file of another name without header is
read as ``delimited``:

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
    inferred from the data (see ``scale`` of :func:`read_ratings`).
``udata``
    ML-100K ``u.data`` and its ``u1.base``/``ua.test``-style splits: tab
    separated ``user item rating timestamp``, no header, whole stars.
``delimited``
    Any other delimited file, described by ``sep``, ``header`` and
    ``columns``; what is not given is guessed from the first line and
    recorded in ``Ratings.notes`` and logged.

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
should be). Spaces and tabs around a number are ignored and a leading ``+``
is allowed, in every field and on both paths below; ids and timestamps are
decimal digits (no decimal point, exponent, ``_``, ``0x`` or non-ASCII
digits), ratings decimal numbers (``4``, ``4.0``, ``.5``). Date-times take no
blanks around them. Once every line passes, a (user_id, movie_id)
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

import gzip
import hashlib
import logging
import mmap
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from resrec.data import cache as parse_cache
from resrec.data.duplicates import _BLOCK, _resolve_duplicates
from resrec.data.layouts import _detect, _plan, _Spec
from resrec.data.line_checks import _SAMPLE_LINES, _LineChecker
from resrec.data.options import DUPLICATES as DUPLICATES
from resrec.data.options import LAYOUTS as LAYOUTS
from resrec.data.options import READER_VERSION as READER_VERSION
from resrec.data.options import ROLES as ROLES
from resrec.data.options import Duplicates, Layout, _check_options
from resrec.data.options import Role as Role
from resrec.data.ratings import HALF_STARS, WHOLE_STARS, Ratings, RatingScale
from resrec.data.sniff import GZIP_MAGIC, check_text, gunzip
from resrec.errors import DataError, counted
from resrec.files import check_input_file

logger = logging.getLogger(__name__)

_PIECE_BYTES = 1 << 20  # the slow pass reads the file in pieces of about this size
_ARROW_BLOCK_BYTES = 1 << 22
_HEAD_BYTES = 1 << 20  # how much of the file layout detection looks at
_HALF_STAR_SHARE = 0.05  # of the ratings, for a half-star scale to be inferred


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
        For ``"delimited"``: the field separator (one or more characters;
        ``"\\t"`` and ``"tab"`` stand for a tab, any other backslash is
        refused). It must occur in the first line. Guessed from the first
        line when omitted (``::``, tab, ``,``, ``;``, ``|`` or a space, in
        that order).
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
        ``"delimited"`` layout infer it: half stars (0.5 to 5) when at least
        5% of the ratings are half stars, else whole stars (1 to 5), and then
        a half star is refused as off the scale, naming its line. The choice
        is recorded in ``Ratings.notes`` and logged.
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
    check_input_file(path, "a ratings file")

    key = parse_cache.CacheKey.for_file(path, options) if cache else None
    if key is not None:
        cached = parse_cache.load(key, str(path), cache_dir)
        if cached is not None:
            logger.info("loaded %d ratings of %s from the parse cache", len(cached), path)
            _log_notes(path, cached)
            return cached

    ratings = _parse_file(path, options)
    if key is not None and key == parse_cache.CacheKey.for_file(path, options):
        parse_cache.store(key, ratings, cache_dir)

    elapsed = time.perf_counter() - started
    logger.info(
        "read %d ratings from %s (%s) in %.2f s", len(ratings), path, ratings.layout, elapsed
    )
    _log_notes(path, ratings)
    return ratings


def _log_notes(path: Path, ratings: Ratings) -> None:
    """Log how the file was read where that was guessed: layout, header, columns, scale."""
    if ratings.notes:
        logger.info("%s: %s", path.name, "; ".join(ratings.notes))


def detect_layout(path: str | Path) -> str:
    """The layout ``read_ratings(path)`` would use, from the name and first lines.

    Returns one of ``"movielens-csv"``, ``"kaggle-csv"``, ``"tutorial-csv"``,
    ``"dat"``, ``"udata"`` or ``"delimited"``. Reads only the first MiB.
    """
    path = check_input_file(path, "a ratings file")
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
    scale = spec.scale or _infer_scale(columns["rating"], notes, checker, body.first_line)
    policy = str(options["duplicates"])
    columns = _resolve_duplicates(columns, policy, scale, checker, body.first_line, notes)
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


def _infer_scale(
    rating: np.ndarray, notes: list[str], checker: _LineChecker, first_line: int
) -> RatingScale:
    """Whole stars, unless at least ``_HALF_STAR_SHARE`` of the ratings are half stars.

    Every rating is already on the half-star scale. A whole-star file with a
    few half stars in it (a 3.5 in an ML-1M-style file) is refused at the
    first of them, as off the inferred scale.
    """
    halves = rating != np.rint(rating)  # on the half-star scale, so 0.5, 1.5 ... 4.5
    n_halves = int(np.count_nonzero(halves))
    share = n_halves / rating.size
    if n_halves == 0:
        notes.append(
            f"rating scale inferred from the data: {WHOLE_STARS.describe()} (no half stars)"
        )
        return WHOLE_STARS
    if share >= _HALF_STAR_SHARE:
        found = f"{counted(n_halves, 'half star')} among {counted(rating.size, 'rating')}"
        notes.append(f"rating scale inferred from the data: {HALF_STARS.describe()} ({found})")
        return HALF_STARS

    row = int(np.flatnonzero(halves)[0])
    column = checker.spec.index("rating")
    raise DataError(
        f"rating {float(rating[row]):g} is off the scale; expected a rating from "
        f"{WHOLE_STARS.describe()}, the scale inferred from the data",
        path=checker.path,
        line=first_line + row,
        column=column + 1,
        column_name=checker.spec.names[column],
        hint=f"only {counted(n_halves, 'rating')} of {rating.size:,} ({share:.1%}) "
        f"{'is a half star' if n_halves == 1 else 'are half stars'}, and half stars are "
        f"inferred when at least {_HALF_STAR_SHARE:.0%} are. If the file uses half stars, "
        "pass scale='0.5:5:0.5' (--scale 0.5:5:0.5 on the command line)",
    )
