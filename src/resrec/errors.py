"""Error and warning types raised by resrec.

Every error a user can cause derives from :class:`ResrecError`, so the command
line can turn it into a one-line message and a non-zero exit without a
traceback. Bugs keep their tracebacks.
"""

from __future__ import annotations

from pathlib import Path

ECHO_LIMIT = 40
"""The most characters of a bad value that an error message repeats."""


class ResrecError(Exception):
    """Base class of every error caused by input, configuration or environment.

    ``hint`` is an optional second sentence telling the user what to do.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class DataError(ResrecError):
    """A ratings or metadata file that cannot be read as asked.

    The message starts with ``file:line:column:`` where these are known, so
    editors and terminals can jump to the spot. ``line`` is the 1-based
    physical line number in the (decompressed) file, ``column`` the 1-based
    field number.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: int | None = None,
        column_name: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.column_name = column_name
        where = _location(self.path, line, column, column_name)
        super().__init__(f"{where}{message}", hint=hint)


def _location(
    path: str | None, line: int | None, column: int | None, column_name: str | None
) -> str:
    parts = [p for p in (path, line, column) if p is not None]
    if not parts:
        return ""
    where = ":".join(str(p) for p in parts)
    if column_name is not None:
        where += f" ({shorten(column_name)})"
    return where + ": "


class DownloadError(ResrecError):
    """A release could not be downloaded or failed its checksum."""


class ConfigError(ResrecError):
    """An option or config value outside what is allowed."""


class UnknownIdError(ResrecError, KeyError):
    """A raw ``user_id`` or ``movie_id`` that the id map does not contain."""

    def __str__(self) -> str:  # KeyError would add quotes otherwise
        return ResrecError.__str__(self)


class DivergenceError(ResrecError):
    """Training produced a NaN or infinite loss."""


class ModelFileError(ResrecError):
    """A run directory or weights file that is missing, incomplete or altered."""


class ResrecWarning(UserWarning):
    """Base class of resrec's warnings."""


class DataWarning(ResrecWarning):
    """Something in the data worth knowing that does not stop the run."""


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` as an error message repeats it: cut after ``limit`` characters.

    A longer value keeps its first ``limit`` characters, followed by an
    ellipsis and its length, so a runaway field cannot flood the terminal.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def quoted(text: str, limit: int = ECHO_LIMIT) -> str:
    """``repr(text)`` as an error message repeats it, cut like :func:`shorten`."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def echoed(value: object, limit: int = ECHO_LIMIT) -> str:
    """Any value as an error message repeats it: :func:`quoted` for text, else its repr, cut.

    An integer with more digits than Python converts to text is described
    instead of printed.
    """
    if isinstance(value, str):
        return quoted(value, limit)
    try:
        text = repr(value)
    except ValueError:
        return "a number too long to print"
    return shorten(text, limit)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun`` as a message writes them: ``1 bad row``, ``2 bad rows``.

    The count gets thousands separators; ``plural`` defaults to ``noun + "s"``.
    """
    word = noun if count == 1 else (plural or f"{noun}s")
    return f"{count:,} {word}"
