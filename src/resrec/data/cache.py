"""A columnar cache of parsed ratings files, so a second read skips parsing.

:func:`resrec.data.readers.read_ratings` parses and validates a ratings file
once, then stores the resulting columns here. The next read of the same file
with the same reader options loads the columns instead of parsing again.

An entry is keyed by the file's resolved path, size and modification time
(nanoseconds) and by the reader options, so editing, replacing or touching the
file, or asking for another layout, scale or duplicates policy, misses the
cache. Each entry is one uncompressed Arrow IPC file (``.arrow``) with the
columns ``user_id``, ``movie_id``, ``rating`` and, when the file has them,
``timestamp`` (ids and timestamps stored as int32 when they fit, which halves
the entry); its schema metadata holds a JSON record of the key, the source
file's sha256 (so a hit does not hash the file again), the layout, the scale
and the notes. Entries are written to a temporary file and renamed into
place, so readers never see half an entry. An entry that fails to load is
logged, ignored and rewritten. A hit memory-maps the entry and copies the
columns out (about half a second for 20 million ratings), so the arrays are
ordinary writable numpy arrays, as after parsing.

The cache lives in :func:`default_cache_dir`: ``$RESREC_CACHE_DIR/parsed``
when that variable is set, else ``parsed`` inside the operating system's
per-user cache folder for resrec (``~/.cache/resrec/parsed`` on Linux).

Limitations
-----------
Entries are never pruned; delete the folder to reclaim the space. A file
rewritten with the same size within the file system's timestamp resolution
would be taken for the old one. An entry whose column bytes were damaged in
place (not truncated) would load; entries carry no checksum of their own, as
computing one would double the time of a hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from resrec.data.ratings import Ratings, RatingScale

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "RESREC_CACHE_DIR"
"""Environment variable naming resrec's cache root (parsed ratings go in ``parsed/``)."""

FORMAT_VERSION = 1
"""Bumped whenever the stored arrays or the reader's output change meaning."""

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """The folder parsed ratings are kept in unless ``cache_dir`` says otherwise."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser() / "parsed"

    import pooch

    return Path(pooch.os_cache("resrec")) / "parsed"


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What a cache entry was parsed from: the file as it was, and the reader options."""

    path: str
    size: int
    mtime_ns: int
    options: Mapping[str, Any]

    @classmethod
    def for_file(cls, path: str | Path, options: Mapping[str, Any]) -> CacheKey:
        """The key of ``path`` as it is now on disk (``stat`` only, no reading)."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns, dict(options))

    def to_json(self) -> str:
        record = {
            "version": FORMAT_VERSION,
            "path": self.path,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "options": self.options,
        }
        return json.dumps(record, sort_keys=True)

    def file_name(self) -> str:
        """The entry's file name: a digest of the key, so any change misses."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32] + ".arrow"


def entry_path(key: CacheKey, cache_dir: str | Path | None = None) -> Path:
    """Where the entry for ``key`` lives (whether or not it exists)."""
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return folder / key.file_name()


def load(key: CacheKey, source: str, cache_dir: str | Path | None = None) -> Ratings | None:
    """The cached table for ``key``, or None on a miss or an unreadable entry.

    ``source`` becomes the table's ``source`` (the path as the caller spelled
    it). A corrupt entry is logged as a warning and treated as a miss; the
    caller then parses the file and :func:`store` replaces the entry.
    """
    path = entry_path(key, cache_dir)
    if not path.is_file():
        return None

    try:
        ratings = _read_entry(path, key, source)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as error:
        logger.warning("ignoring unreadable cache entry %s (%s); parsing again", path, error)
        return None

    if ratings is not None:
        logger.debug("loaded %d ratings for %s from cache entry %s", len(ratings), source, path)
    return ratings


def store(key: CacheKey, ratings: Ratings, cache_dir: str | Path | None = None) -> Path | None:
    """Write ``ratings`` as the entry for ``key``; returns its path, or None if it failed.

    Failing to write (read-only or full disk) is logged and otherwise ignored:
    the cache only saves time.
    """
    path = entry_path(key, cache_dir)
    meta = {
        "key": json.loads(key.to_json()),
        "sha256": ratings.sha256,
        "layout": ratings.layout,
        "scale": ratings.scale.to_dict(),
        "notes": list(ratings.notes),
        "rows": len(ratings),
    }
    columns = {
        "user_id": _narrow(ratings.user_id),
        "movie_id": _narrow(ratings.movie_id),
        "rating": ratings.rating,
    }
    if ratings.timestamp is not None:
        columns["timestamp"] = _narrow(ratings.timestamp)
    table = pa.table(columns, metadata={"resrec": json.dumps(meta)})

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, table)
    except OSError as error:
        logger.warning("could not write cache entry %s (%s)", path, error)
        return None
    return path


def _write_atomically(path: Path, table: pa.Table) -> None:
    """Write an Arrow IPC file next to ``path``, then rename it into place."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".arrow.tmp")
    os.close(handle)
    try:
        with pa.OSFile(temp_name, "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _narrow(column: np.ndarray) -> np.ndarray:
    """An int64 column as int32 when every value fits: MovieLens ids and timestamps do."""
    int32 = np.iinfo(np.int32)
    if column.size and int32.min <= column.min() and column.max() <= int32.max:
        return column.astype(np.int32)
    return column


_TYPES = {
    "user_id": (pa.int32(), pa.int64()),
    "movie_id": (pa.int32(), pa.int64()),
    "rating": (pa.float32(),),
    "timestamp": (pa.int32(), pa.int64()),
}


def _read_entry(path: Path, key: CacheKey, source: str) -> Ratings | None:
    with pa.memory_map(str(path)) as mapped:
        table = ipc.open_file(mapped).read_all()
        meta = json.loads(table.schema.metadata[b"resrec"])
        if meta["key"] != json.loads(key.to_json()):
            return None  # a digest collision or an older format: a miss
        if table.num_rows != int(meta["rows"]):
            raise ValueError(f"entry holds {table.num_rows} rows, its record says {meta['rows']}")
        columns = {}
        for name in table.column_names:
            if name not in _TYPES or table.schema.field(name).type not in _TYPES[name]:
                raise ValueError(f"entry holds an unexpected column {name!r}")
            array = table.column(name).to_numpy()
            if array.dtype == np.int32:
                array = array.astype(np.int64)
            # a view into the memory map is read-only: copy it out, so the arrays are
            # writable and outlive the file
            columns[name] = array if array.flags.writeable else array.copy()

    return Ratings(
        user_id=columns["user_id"],
        movie_id=columns["movie_id"],
        rating=columns["rating"],
        timestamp=columns.get("timestamp"),
        scale=RatingScale(**meta["scale"]),
        source=source,
        sha256=meta["sha256"],
        layout=meta["layout"],
        notes=list(meta["notes"]),
    )
