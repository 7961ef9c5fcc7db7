"""A columnar cache of parsed ratings files, so a second read skips parsing.

:func:`resrec.data.readers.read_ratings` parses and validates a ratings file
once, then stores the resulting columns here. The next read of the same file
with the same reader options loads the columns instead of parsing again.

An entry is keyed by the file's resolved path, size and modification time
(nanoseconds) and by the reader options, so editing, replacing or touching the
file, or asking for another layout, scale or duplicates policy, misses the
cache. Each entry is one uncompressed ``.npz`` file (``user_id``,
``movie_id``, ``rating``, optionally ``timestamp``, and a JSON ``meta``
record holding the key, the source file's sha256, the layout, the scale and
the notes), written to a temporary file and renamed into place, so readers
never see half an entry. Entries that fail to load are logged, ignored and
rewritten.

The cache lives in :func:`default_cache_dir`: ``$RESREC_CACHE_DIR/parsed``
when that variable is set, else ``parsed`` inside the operating system's
per-user cache folder for resrec (``~/.cache/resrec/parsed`` on Linux).

Limitations
-----------
Entries are never pruned; delete the folder to reclaim the space. A file
rewritten with the same size within the file system's timestamp resolution
would be taken for the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32] + ".npz"


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
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
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
    arrays = {
        "user_id": ratings.user_id,
        "movie_id": ratings.movie_id,
        "rating": ratings.rating,
        "meta": np.array(json.dumps(meta)),
    }
    if ratings.timestamp is not None:
        arrays["timestamp"] = ratings.timestamp

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, arrays)
    except OSError as error:
        logger.warning("could not write cache entry %s (%s)", path, error)
        return None
    return path


def _write_atomically(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed npz next to ``path``, then rename it into place."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _read_entry(path: Path, key: CacheKey, source: str) -> Ratings | None:
    with np.load(path, allow_pickle=False) as entry:
        meta = json.loads(str(entry["meta"]))
        if meta["key"] != json.loads(key.to_json()):
            return None  # a digest collision or an older format: a miss
        timestamp = entry["timestamp"] if "timestamp" in entry.files else None
        user_id, movie_id, rating = entry["user_id"], entry["movie_id"], entry["rating"]

    rows = int(meta["rows"])
    columns = [user_id, movie_id, rating] + ([] if timestamp is None else [timestamp])
    if any(len(column) != rows for column in columns):
        raise ValueError(f"entry holds columns of the wrong length (expected {rows} rows)")
    if (user_id.dtype, movie_id.dtype, rating.dtype) != (np.int64, np.int64, np.float32):
        raise ValueError("entry holds columns of the wrong type")

    return Ratings(
        user_id=user_id,
        movie_id=movie_id,
        rating=rating,
        timestamp=timestamp,
        scale=RatingScale(**meta["scale"]),
        source=source,
        sha256=meta["sha256"],
        layout=meta["layout"],
        notes=list(meta["notes"]),
    )
