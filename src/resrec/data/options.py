"""The options of :func:`resrec.data.readers.read_ratings`: allowed values and checks.

:func:`_check_options` validates them and returns them normalised, as the
reader's part of the parse-cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from resrec.data.ratings import RatingScale
from resrec.errors import ConfigError, shorten

Layout = Literal["auto", "movielens-csv", "kaggle-csv", "tutorial-csv", "dat", "udata", "delimited"]
Role = Literal["user_id", "movie_id", "rating", "timestamp", "-"]
Duplicates = Literal["error", "last", "mean"]

LAYOUTS: tuple[str, ...] = get_args(Layout)
ROLES: tuple[str, ...] = get_args(Role)
DUPLICATES: tuple[str, ...] = get_args(Duplicates)

READER_VERSION = 3
"""Part of every cache key; bump it when the reader's output changes."""


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
    if sep is not None:
        sep = _check_sep(sep)

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


def _check_sep(sep: str) -> str:
    """The separator as the file holds it: ``\\t`` and ``tab`` stand for a tab."""
    if sep == "\\t" or sep.lower() == "tab":
        return "\t"
    if "\\" in sep:
        raise ConfigError(
            f"sep '{shorten(sep)}' holds a backslash; the only escape understood is \\t (a tab)",
            hint="pass the separator itself, or '\\t' or 'tab' for a tab",
        )
    if not sep or any(c in sep for c in '\r\n"'):
        raise ConfigError(
            f"sep must be one or more characters other than quotes and line breaks; got {sep!r}"
        )
    return sep


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
