"""The reader's slow path: check lines one by one in Python.

Used only on a piece of a file that the fast Arrow parse rejected: raises a
:class:`~resrec.errors.DataError` naming the file, line and field of the
first problem, with its own message for a header where none is expected and
for columns that look swapped.
"""

from __future__ import annotations

import calendar
import csv
import datetime
import math
import re
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from resrec.data.layouts import _BLANKS, _DATE, _FLOAT, _MISSING, _is_word, _Spec, _split
from resrec.data.ratings import RatingScale
from resrec.errors import ECHO_LIMIT, DataError, quoted, shorten

_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = np.iinfo(np.int64).max
_INT64_DIGITS = len(str(_INT64_MAX))
_TOO_LARGE = f"too large for a 64-bit integer (at most {_INT64_MAX})"

_SAMPLE_LINES = 2000  # lines the swapped-columns check looks at
_SWAPPED_SHARE = 0.5  # of the sampled ratings off the scale, for columns to look swapped


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
            digits = text.lstrip("+-").lstrip("0")
            if len(digits) > _INT64_DIGITS or int(text) > _INT64_MAX:
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

    They do when at least half of the values in the rating field (and at
    least three) are off the scale while every value of another field (a
    user_id, movie_id or timestamp by the layout) is on it. Half, not most:
    in a small file, many ids are small enough to be ratings.
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
    if len(off_scale) < max(3, _SWAPPED_SHARE * len(ratings)):
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
        f"rating {shorten(text)} is off the scale ({scale.describe()}), like "
        f"{len(off_scale)} of the first {len(ratings)} values in this field, "
        f"while field {fits + 1} ({shorten(spec.names[fits])}) holds only values on it: "
        "the columns look swapped",
        path=checker.path,
        line=line_no,
        column=rating_column + 1,
        column_name=spec.names[rating_column],
        hint=f"name each field's role with columns=..., for example columns={','.join(roles)} "
        f"(--columns {','.join(roles)} on the command line); check which field holds the "
        "user_id and which the movie_id. If the columns are right and the ratings use another "
        "scale, pass scale='LOW:HIGH:STEP' (--scale)",
    )


def _on_scale(value: float, scale: RatingScale) -> bool:
    """One value's :meth:`RatingScale.on_scale`, without numpy's per-call cost."""
    if not math.isfinite(value):
        return False
    steps = (value - scale.low) / scale.step
    return abs(steps - round(steps)) < 1e-6 and scale.low - 1e-9 <= value <= scale.high + 1e-9
