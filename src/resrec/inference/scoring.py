"""Batch scoring of a CSV file of (user_id, movie_id) pairs, streamed."""

from __future__ import annotations

import gzip
import mmap
import queue
import re
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resrec.errors import ECHO_LIMIT, ConfigError, DataError, quoted, shorten
from resrec.files import AtomicFile, check_input_file, output_problem
from resrec.inference.explain import _fallback_many
from resrec.inference.results import ScoreReport

if TYPE_CHECKING:
    from resrec.inference.recommender import Recommender

# --------------------------------------------------------------------------- batch scoring

_USER_COLUMNS = ("user_id", "userId", "userid", "user")
_MOVIE_COLUMNS = ("movie_id", "movieId", "movieid", "item_id", "itemId", "movie", "item")
_CSV_BLOCK = 1 << 20  # bytes parsed at a time (small: reading, scoring, writing overlap)


def _score_csv(
    rec: Recommender,
    src: Path,
    dst: Path,
    fallback: bool,
    max_reported: int,
    fail_on_bad: bool = False,
) -> ScoreReport:
    """Stream ``src`` through the model into ``dst`` (see :meth:`Recommender.score_file`)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(src)
    columns = (
        _pick_column(header, _USER_COLUMNS, "user_id", src),
        _pick_column(header, _MOVIE_COLUMNS, "movie_id", src),
    )
    try:
        lines = _LineTracker()
        compression = "gzip" if _is_gzip(src) else None
        reader = pacsv.open_csv(
            pa.input_stream(str(src), compression=compression),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK),
            parse_options=pacsv.ParseOptions(
                invalid_row_handler=lines.on_invalid, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={name: pa.string() for name in columns},
                strings_can_be_null=False,
                check_utf8=False,  # a row that is not UTF-8 is a bad row, reported by line
            ),
        )
        report = ScoreReport()
        out = _open_output(dst)
        try:
            _score_stream(rec, reader, out, columns, lines, fallback, report, max_reported, src)
            for line, reason in lines.ready(None):
                _report_bad(report, line, reason, max_reported)
            if fail_on_bad and report.bad:
                out.discard()
                report.written = False
            else:
                out.commit()
        except BaseException:
            out.discard()
            raise
    except (OSError, EOFError, zlib.error) as error:
        if not _is_damaged_stream(error):
            raise
        raise DataError(
            f"cannot be read to its end ({error}); no predictions were written",
            path=src,
            hint="check that the file is complete (gzip -t FILE)",
        ) from None
    report.rows += len(lines.skipped)
    return report


def _score_stream(
    rec: Recommender,
    reader: Iterable[Any],
    out: Any,
    columns: tuple[str, str],
    lines: _LineTracker,
    fallback: bool,
    report: ScoreReport,
    max_reported: int,
    src: Path,
) -> None:
    """Score batch after batch; parsing, scoring and writing overlap in three threads."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = ["user_id", "movie_id", "prediction"] + (["fallback"] if fallback else [])
    types = [pa.int64(), pa.int64(), pa.float32(), pa.int8()]
    schema = pa.schema(list(zip(names, types, strict=False)))
    out.write((",".join(names) + "\n").encode())
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    writing: Future[None] | None = None
    with (
        pacsv.CSVWriter(out, schema, write_options=options) as csv_out,
        ThreadPoolExecutor(1, thread_name_prefix="resrec-write") as writer,
    ):
        try:
            for batch in _read_ahead(reader):
                numbers = lines.next_lines(batch.num_rows)
                _refuse_line_breaks(batch, numbers, src)
                users, movies, good = _batch_ids(batch, *columns)
                report.rows += batch.num_rows
                bad = [(int(numbers[r]), _id_problem(batch, int(r))) for r in np.flatnonzero(~good)]
                table, unknown = _score_batch(
                    rec, users[good], movies[good], numbers[good], fallback, report
                )
                if writing is not None:
                    writing.result()
                writing = writer.submit(csv_out.write_table, pa.Table.from_batches([table], schema))
                done = int(numbers[-1]) if batch.num_rows else 0
                for line, reason in sorted(bad + unknown + lines.ready(done)):
                    _report_bad(report, line, reason, max_reported)
        finally:
            if writing is not None:
                writing.result()


class _LineTracker:
    """Physical line numbers of the rows pyarrow keeps, and the reasons of those it skips.

    Kept rows are the lines 2, 3, ... (line 1 is the header) minus the skipped
    ones; the k-th kept line is ``k + 2`` plus the number of skipped lines at or
    before it. The parser reports skipped lines from the reading thread.
    """

    def __init__(self) -> None:
        self.skipped: list[int] = []
        self._pending: list[tuple[int, str]] = []
        self._kept = 0
        self._lock = threading.Lock()

    def on_invalid(self, row: Any) -> str:
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        with self._lock:
            self.skipped.append(int(row.number))
            self._pending.append((int(row.number), reason))
        return "skip"

    def next_lines(self, count: int) -> np.ndarray:
        ordinal = np.arange(self._kept, self._kept + count, dtype=np.int64) + 2
        self._kept += count
        with self._lock:
            skipped = np.asarray(self.skipped, dtype=np.int64)
        shifted = skipped - np.arange(skipped.size)
        return ordinal + np.searchsorted(shifted, ordinal, side="right")

    def ready(self, done: int | None) -> list[tuple[int, str]]:
        """Skipped lines up to line ``done`` (all when None), each handed out once."""
        with self._lock:
            ready = [item for item in self._pending if done is None or item[0] <= done]
            self._pending = [item for item in self._pending if done is not None and item[0] > done]
        return ready


def _read_ahead(reader: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``reader`` in a background thread, up to ``depth`` items ahead."""
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in reader:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=produce, name="resrec-read", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _is_damaged_stream(error: BaseException) -> bool:
    """Whether reading failed because a compressed input ends early or is corrupt."""
    if isinstance(error, EOFError | zlib.error):
        return True
    text = str(error).lower()
    return "compress" in text or "gzip" in text or "inflate" in text


def _open_output(dst: Path) -> AtomicFile:
    """A new file beside ``dst``, renamed to it when scoring is done; refuses a special ``dst``."""
    problem = output_problem(dst, what="predictions")
    if problem is not None:
        raise ConfigError(f"--out {dst} {problem.message}", hint=problem.hint)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write --out {dst}: {error.strerror or error}") from None
    return AtomicFile(dst)


def _is_gzip(src: Path) -> bool:
    from resrec.data.sniff import GZIP_MAGIC

    with open(src, "rb") as file:
        return file.read(2) == GZIP_MAGIC


def _csv_header(src: Path) -> list[str]:
    check_input_file(src, "a CSV file of user_id,movie_id pairs")
    _check_pairs_text(src)
    opener = gzip.open if _is_gzip(src) else open
    with opener(src, "rt", encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if not first:
        raise DataError(
            "empty first line; expected a header such as user_id,movie_id", path=src, line=1
        )
    return [name.strip().strip('"') for name in first.split(",")]


def _check_pairs_text(src: Path) -> None:
    """Refuse a compressed or binary pairs file before the CSV parser sees it."""
    from resrec.data.sniff import check_text

    if _is_gzip(src):  # the first 64 KiB of what it holds
        try:
            with gzip.open(src, "rb") as packed:
                head = packed.read(1 << 16)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"not a readable gzip file ({error})", path=src) from None
        check_text(head, src, accepted="plain text CSV or .gz", start=_bom(head))
        return
    with open(src, "rb") as file:
        if file.seek(0, 2) == 0:
            return  # empty: the header check says so
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            check_text(data, src, accepted="plain text CSV or .gz", start=_bom(data))


def _bom(data: Any) -> int:
    return 3 if data[:3] == b"\xef\xbb\xbf" else 0


def _pick_column(header: list[str], names: Sequence[str], role: str, src: Path) -> str:
    present = [name for name in names if name in header]
    if len(present) > 1 or (present and header.count(present[0]) > 1):
        raise DataError(
            f"the header names more than one {role} column ({', '.join(present)}); "
            "expected exactly one",
            path=src,
            line=1,
        )
    if present:
        return present[0]
    raise DataError(
        f"the header names no {role} column; expected one of {', '.join(names)}, "
        f"found {shorten(', '.join(header), 2 * ECHO_LIMIT)}",
        path=src,
        line=1,
    )


def _refuse_line_breaks(batch: Any, numbers: np.ndarray, src: Path) -> None:
    """A quoted field holding a line break would shift every later line number: refuse it."""
    import pyarrow.compute as pc

    for name in batch.schema.names:
        column = batch.column(name)
        broken = pc.or_(pc.match_substring(column, "\n"), pc.match_substring(column, "\r"))
        if pc.any(broken).as_py():
            row = int(np.flatnonzero(broken.to_numpy(zero_copy_only=False))[0])
            raise DataError(
                f"a quoted {name} field holds a line break; expected one pair per line",
                path=src,
                line=int(numbers[row]),
            )


def _batch_ids(
    batch: Any, user_col: str, movie_col: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ids of a batch of string columns, and a mask of rows where both parse.

    Arrow's own cast is the fast path, but it also reads ``0x10`` as 16; a
    column holding an ``x`` anywhere, or one the cast refuses, goes through
    :func:`_parse_ids` instead.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    good = np.ones(batch.num_rows, dtype=bool)
    for name in (user_col, movie_col):
        column = batch.column(name)
        if not pc.any(pc.match_substring(column, "x", ignore_case=True)).as_py():
            try:
                columns.append(pc.cast(column, pa.int64()).to_numpy())
                continue
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        values, ok = _parse_ids(column)
        columns.append(values)
        good &= ok
    return columns[0], columns[1], good


def _parse_ids(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Values of a column of decimal integers (spaces and a sign allowed), and which parsed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.replace_substring_regex(pc.ascii_trim_whitespace(column), r"^\+", "")
    short = pc.match_substring_regex(text, r"^-?[0-9]{1,18}$").to_numpy(zero_copy_only=False)
    values = np.zeros(len(column), dtype=np.int64)
    if short.any():
        values[short] = pc.cast(text.filter(pa.array(short)), pa.int64()).to_numpy()
    long = pc.match_substring_regex(text, r"^-?[0-9]{19}$").to_numpy(zero_copy_only=False)
    ok = short.copy()
    for row in np.flatnonzero(long):  # 19 digits: in range or not, one by one (rare)
        value = int(text[int(row)].as_py())
        if -(2**63) <= value < 2**63:
            values[row], ok[row] = value, True
    return values, ok


def _id_problem(batch: Any, row: int) -> str:
    import pyarrow as pa

    values = [
        batch.column(i).cast(pa.binary())[row].as_py().decode("utf-8", errors="replace")
        for i in range(batch.num_columns)
    ]
    if all(not v.strip() for v in values):
        return "empty line"
    for name, value in zip(batch.schema.names, values, strict=True):
        text = value.strip()
        if "\ufffd" in value:
            return f"{name} {quoted(value)} is not valid UTF-8 text"
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            return f"{name} {quoted(value)} is not a whole number"
        if not -(2**63) <= _bounded_int(text) < 2**63:
            return f"{name} {quoted(text)} is out of range: ids are 64-bit integers"
    return "ids out of range"


def _bounded_int(text: str) -> int:
    """The value of a signed digit string, or 2**63 for one too long to be an id."""
    if len(text.lstrip("+-").lstrip("0")) > 19:
        return 2**63
    return int(text)


def _score_batch(
    rec: Recommender,
    user_ids: np.ndarray,
    movie_ids: np.ndarray,
    lines: np.ndarray,
    fallback: bool,
    report: ScoreReport,
) -> tuple[Any, list[tuple[int, str]]]:
    """Predictions of one batch as a record batch, and its rows with unknown ids."""
    import pyarrow as pa

    users = rec.user_map.index_of(user_ids, missing="negative")
    movies = rec.movie_map.index_of(movie_ids, missing="negative")
    user_ok = users >= 0
    user_ok[user_ok] = rec.trained_users[users[user_ok]]
    movie_ok = movies >= 0
    movie_ok[movie_ok] = rec.trained_movies[movies[movie_ok]]
    ok = user_ok & movie_ok
    keep = np.ones(len(users), dtype=bool) if fallback else ok
    unknown = []
    if not fallback:
        for row in np.flatnonzero(~ok):
            kind, raw = ("user", user_ids[row]) if not user_ok[row] else ("movie", movie_ids[row])
            unknown.append((int(lines[row]), f"unknown {kind}_id {raw}"))

    prediction = np.empty(int(keep.sum()), dtype=np.float32)
    known = ok[keep]
    prediction[known] = rec.predict_indices(users[ok], movies[ok])
    if fallback and not ok.all():
        prediction[~known] = _fallback_many(rec, users, movies, user_ok, movie_ok, ~ok)
        report.fallback += int((~ok).sum())
    report.scored += int(keep.sum())
    columns = [
        pa.array(user_ids[keep]),
        pa.array(movie_ids[keep]),
        pa.array(np.round(prediction, 4)),
    ]
    if fallback:
        columns.append(pa.array((~known).astype(np.int8)))
    names = ["user_id", "movie_id", "prediction"] + (["fallback"] if fallback else [])
    return pa.RecordBatch.from_arrays(columns, names=names), unknown


def _report_bad(report: ScoreReport, line: int, reason: str, max_reported: int) -> None:
    report.bad += 1
    if len(report.bad_rows) < max_reported:
        report.bad_rows.append((line, reason))
