"""Batch scoring of a CSV file of (user_id, movie_id) pairs, streamed."""

from __future__ import annotations

import mmap
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resrec.errors import ECHO_LIMIT, DataError, quoted, shorten
from resrec.inference.results import ScoreReport

if TYPE_CHECKING:
    from resrec.inference.recommender import Recommender

# --------------------------------------------------------------------------- batch scoring

_USER_COLUMNS = ("user_id", "userId", "userid", "user")
_MOVIE_COLUMNS = ("movie_id", "movieId", "movieid", "item_id", "itemId", "movie", "item")
_CSV_BLOCK = 1 << 20  # bytes parsed at a time (small: reading, scoring, writing overlap)


def _score_csv(
    rec: Recommender, src: Path, dst: Path, fallback: bool, max_reported: int
) -> ScoreReport:
    """Stream ``src`` through the model into ``dst`` (see :meth:`Recommender.score_file`)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = _csv_header(src)
    columns = (
        _pick_column(header, _USER_COLUMNS, "user_id", src),
        _pick_column(header, _MOVIE_COLUMNS, "movie_id", src),
    )
    lines = _LineTracker()
    reader = pacsv.open_csv(
        src,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK),
        parse_options=pacsv.ParseOptions(
            invalid_row_handler=lines.on_invalid, ignore_empty_lines=False
        ),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(columns),
            column_types={name: pa.string() for name in columns},
            strings_can_be_null=False,
        ),
    )
    report = ScoreReport()
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        with open(partial, "wb") as out:
            _score_stream(rec, reader, out, columns, lines, fallback, report, max_reported)
        for line, reason in lines.ready(None):
            _report_bad(report, line, reason, max_reported)
        partial.replace(dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
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
                users, movies, good = _batch_ids(batch, *columns)
                numbers = lines.next_lines(batch.num_rows)
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


def _csv_header(src: Path) -> list[str]:
    if not src.is_file():
        raise DataError("no such file", path=src)
    _check_pairs_text(src)
    with open(src, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().rstrip("\r\n")
    if not first:
        raise DataError(
            "empty first line; expected a header such as user_id,movie_id", path=src, line=1
        )
    return [name.strip().strip('"') for name in first.split(",")]


def _check_pairs_text(src: Path) -> None:
    """Refuse a compressed or binary pairs file before the CSV parser sees it."""
    from resrec.data.sniff import check_text

    with open(src, "rb") as file:
        if file.seek(0, 2) == 0:
            return  # empty: the header check says so
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            bom = 3 if data[:3] == b"\xef\xbb\xbf" else 0
            check_text(data, src, accepted="plain text CSV", start=bom)


def _pick_column(header: list[str], names: Sequence[str], role: str, src: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise DataError(
        f"the header names no {role} column; expected one of {', '.join(names)}, "
        f"found {shorten(', '.join(header), 2 * ECHO_LIMIT)}",
        path=src,
        line=1,
    )


def _batch_ids(
    batch: Any, user_col: str, movie_col: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer ids of a batch of string columns, and a mask of rows where both parse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    good = np.ones(batch.num_rows, dtype=bool)
    for name in (user_col, movie_col):
        column = batch.column(name)
        try:
            columns.append(pc.cast(column, pa.int64()).to_numpy())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        trimmed = pc.utf8_trim_whitespace(column)
        ok = pc.match_substring_regex(trimmed, r"^[+-]?[0-9]{1,18}$").to_numpy(zero_copy_only=False)
        values = np.zeros(batch.num_rows, dtype=np.int64)
        if ok.any():
            values[ok] = pc.cast(trimmed.filter(pa.array(ok)), pa.int64()).to_numpy()
        columns.append(values)
        good &= ok
    return columns[0], columns[1], good


def _id_problem(batch: Any, row: int) -> str:
    values = [str(batch.column(i)[row].as_py()) for i in range(batch.num_columns)]
    if all(not v.strip() for v in values):
        return "empty line"
    for name, value in zip(batch.schema.names, values, strict=True):
        text = value.strip()
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
        prediction[~known] = rec._fallback_many(users, movies, user_ok, movie_ok, ~ok)
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
