"""Layouts of ratings files: detect one, and plan how to split and convert its fields.

:func:`_plan` turns the reader's options and a file's first lines into a
:class:`_Spec`: the separator, whether there is a header, each field's role
and name, and the rating scale. The text patterns defined here (numbers,
dates, missing-value markers) are shared with :mod:`resrec.data.line_checks`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

from resrec.data.ratings import HALF_STARS, WHOLE_STARS, RatingScale
from resrec.errors import DataError, quoted, shorten

_ML_HEADER = ("userId", "movieId", "rating", "timestamp")
_TUTORIAL_HEADER = ("userId", "movieId", "rating", "movie_idx")
_UDATA_NAME = re.compile(r"u\.data|u[1-5]\.(base|test)|u[ab]\.(base|test)")
_HEADER_LAYOUT_NAMES = {
    "ratings.csv": "movielens-csv",
    "rating.csv": "kaggle-csv",
    "edited_rating.csv": "tutorial-csv",
}
"""File names that MovieLens (or the tutorial) gives to files of a header-carrying layout."""
_ML10M_FOLDER = re.compile(r"ml-?10m(100k)?")

_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[ T]([0-9]{2})(?::([0-9]{2})(?::([0-9]{2}))?)?)?"
)
_MISSING = {"\\n", "null", "na", "n/a", "#n/a", "nan", "-nan", "+nan", "none", "nil"}
_NOT_FINITE = {"inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"}
_BLANKS = " \t"

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
    if name in _HEADER_LAYOUT_NAMES and _looks_like_data(lines[0]):
        return _HEADER_LAYOUT_NAMES[name]  # whose planning refuses the missing header
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
        given = [k for k in ("sep", "header", "columns") if options[k] is not None]
        layout = "delimited" if given else _detect(path, lines)
        how = (
            f"{' and '.join(given)} given"
            if given
            else "detected from the file name and first line"
        )
        notes = (f"layout {layout!r} {how}",)

    if layout in ("movielens-csv", "kaggle-csv", "tutorial-csv"):
        spec = _plan_header_csv(path, layout, lines[0], detected=bool(notes))
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


def _plan_header_csv(path: Path, layout: str, first: str, *, detected: bool) -> _Spec:
    expected = _TUTORIAL_HEADER if layout == "tutorial-csv" else _ML_HEADER
    fields = _split(first, ",", quoting=True, strict=False)
    shown = ",".join(expected)
    if _looks_like_data(first):
        why = f" (detected from the file name {path.name!r})" if detected else ""
        raise DataError(
            f"missing header: expected the header {shown} of layout {layout!r}{why}, found "
            f"a line of numbers {quoted(first)}",
            path=path,
            line=1,
            column=1,
            hint="if the file has no header, pass layout='delimited' with header=False, and "
            "columns=... unless its fields are user_id,movie_id,rating[,timestamp] "
            "(--no-header and --columns on the command line)",
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
        sep = _guess_sep(lines[0])
        if sep is None:
            raise DataError(
                "cannot tell the field separator from the first line",
                path=path,
                line=1,
                hint="pass sep=... (--sep on the command line)",
            )
        notes.append(f"field separator {sep!r} guessed from the first line")
    elif sep not in lines[0]:
        found = _guess_sep(lines[0])
        hint = "pass the text that separates the fields (--sep on the command line)"
        if found is not None:
            typed = "tab" if found == "\t" else repr(found)
            hint = (
                f"the line holds {found!r}: pass sep={found!r} (--sep {typed} on the command line)"
            )
        raise DataError(
            f"the separator {sep!r} does not occur in the first line {quoted(lines[0])}",
            path=path,
            line=1,
            column=1,
            hint=hint,
        )
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
        else:
            notes.append("no header: the first line holds data")
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


def _guess_sep(line: str) -> str | None:
    """The first of the usual separators that ``line`` holds, if any."""
    return next((s for s in ("::", "\t", ",", ";", "|", " ") if s in line), None)


def _looks_like_data(line: str) -> bool:
    """Whether ``line`` reads as a ratings row: no field is a word, dates aside.

    The fields are split on the separator :func:`_guess_sep` finds.
    """
    fields = _split(line, _guess_sep(line) or ",", quoting=True, strict=False)
    return not any(_is_word(f) and not _DATE.fullmatch(f.strip(_BLANKS)) for f in fields)


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
