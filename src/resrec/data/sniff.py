"""Tell a text file from a compressed or binary one, before parsing it.

resrec reads ratings, movie metadata and pairs as plain text (ratings and
movies also gzip-compressed). A file in another format would otherwise reach
the parser and fail with a puzzling message about its header or separator.
:func:`text_problem` recognises the common compressed and binary formats by
their first bytes ("magic numbers") and any other binary file by a NUL byte,
which text in UTF-8 or Latin-1 never holds.

>>> check_text(Path("ratings.csv.bz2").read_bytes(), Path("ratings.csv.bz2"))
Traceback (most recent call last):
DataError: ratings.csv.bz2: looks like a bz2-compressed file; resrec reads plain text or .gz
"""

from __future__ import annotations

import gzip
import mmap
import zlib
from dataclasses import dataclass
from pathlib import Path

from resrec.errors import DataError

Buffer = bytes | mmap.mmap

GZIP_MAGIC = b"\x1f\x8b"

_DECOMPRESS = "decompress it first, or compress it with gzip instead"
_UNPACK = "extract the file you need from it and pass that"
_EXPORT = "export the table as CSV"


@dataclass(frozen=True)
class _Signature:
    """The first bytes of a format, its name in messages and what to do about it."""

    magic: tuple[bytes, ...]
    kind: str
    hint: str


_SIGNATURES = (
    _Signature((b"BZh",), "a bz2-compressed file", _DECOMPRESS),
    _Signature((b"\xfd7zXZ\x00",), "an xz-compressed file", _DECOMPRESS),
    _Signature((b"\x5d\x00\x00",), "an lzma-compressed file", _DECOMPRESS),
    _Signature((b"\x28\xb5\x2f\xfd",), "a zstd-compressed file", _DECOMPRESS),
    _Signature((b"\x04\x22\x4d\x18",), "an lz4-compressed file", _DECOMPRESS),
    _Signature((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"), "a zip archive", _UNPACK),
    _Signature((b"7z\xbc\xaf\x27\x1c",), "a 7z archive", _UNPACK),
    _Signature((b"Rar!\x1a\x07",), "a RAR archive", _UNPACK),
    _Signature((b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",), "an Office document", _EXPORT),
    _Signature((b"SQLite format 3\x00",), "an SQLite database", _EXPORT),
    _Signature((b"%PDF-",), "a PDF document", "pass the ratings as a text file"),
)
_BZ2_BLOCKS = (b"1AY&SY", b"\x17rE8P\x90")  # after "BZh" and the block size digit


@dataclass(frozen=True)
class TextProblem:
    """Why a buffer is not text resrec can read: a one-line message and a hint."""

    message: str
    hint: str | None = None


def text_problem(
    data: Buffer, *, accepted: str = "plain text or .gz", start: int = 0
) -> TextProblem | None:
    """Why ``data`` is not a text file, or None when it may be one.

    ``accepted`` names what the caller reads, for the message. ``start`` is
    where the text begins (after a byte order mark); line and column of a
    NUL byte are counted from there, both 1-based, the column in bytes.
    """
    signature = _signature(data)
    if signature is not None:
        return TextProblem(f"looks like {signature.kind}; resrec reads {accepted}", signature.hint)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return TextProblem("is UTF-16 text; resrec reads UTF-8", "save the file as UTF-8")

    offset = data.find(b"\x00", start)
    if offset < 0:
        return None
    line, column = line_and_column(data, offset, start)
    return TextProblem(
        f"not a text file (byte 0x00 at line {line}, column {column}); resrec reads {accepted}",
        "check that this is the file you meant; a spreadsheet must be exported as CSV first",
    )


def check_text(
    data: Buffer, path: str | Path, *, accepted: str = "plain text or .gz", start: int = 0
) -> None:
    """Raise a :class:`DataError` naming ``path`` when ``data`` is not text (see above)."""
    problem = text_problem(data, accepted=accepted, start=start)
    if problem is not None:
        raise DataError(problem.message, path=path, hint=problem.hint)


def gunzip(raw: bytes, path: str | Path) -> bytes:
    """The decompressed bytes of a gzip file, or a :class:`DataError` saying it is damaged."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"not a readable gzip file ({error})", path=path) from None


def line_and_column(data: Buffer, offset: int, start: int = 0) -> tuple[int, int]:
    """1-based physical line (LF, CRLF or CR ends one) and byte column of ``offset``."""
    before = bytes(data[start:offset])
    breaks = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n")
    line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
    return breaks + 1, len(before) - line_start + 1


def _signature(data: Buffer) -> _Signature | None:
    head = bytes(data[:16])
    for signature in _SIGNATURES:
        if not head.startswith(signature.magic):
            continue
        if signature.magic == (b"BZh",) and head[4:10] not in _BZ2_BLOCKS:
            continue  # a text file that happens to start with "BZh"
        return signature
    return None
