"""Tests for resrec.data.cache: hits skip parsing, changes miss, corrupt entries heal."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from resrec.data import cache, readers
from resrec.data.ratings import Ratings
from resrec.data.readers import read_ratings

ML_HEADER = "userId,movieId,rating,timestamp\n"


@pytest.fixture
def ratings_file(tmp_path: Path) -> Path:
    path = tmp_path / "ratings.csv"
    path.write_text(ML_HEADER + "1,2,3.5,10\n1,3,4.0,20\n2,2,1.0,30\n")
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> Ratings:
        raise AssertionError("the file was parsed although the cache should have answered")

    monkeypatch.setattr(readers, "_parse_file", fail)


def assert_same(a: Ratings, b: Ratings) -> None:
    for column in ("user_id", "movie_id", "rating", "timestamp"):
        left, right = getattr(a, column), getattr(b, column)
        assert (left is None) == (right is None)
        if left is not None:
            np.testing.assert_array_equal(left, right)
            assert left.dtype == right.dtype
    assert (a.scale, a.sha256, a.layout, a.notes, a.source) == (
        b.scale,
        b.sha256,
        b.layout,
        b.notes,
        b.source,
    )


def test_cache_hit_returns_equal_table_without_parsing(
    ratings_file: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = read_ratings(ratings_file, cache_dir=cache_dir)
    forbid_parsing(monkeypatch)

    second = read_ratings(ratings_file, cache_dir=cache_dir)

    assert_same(first, second)
    assert second.user_id.flags.writeable


def test_cache_hit_keeps_the_checksum_without_recomputing_it(
    ratings_file: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)
    monkeypatch.setattr(readers, "_Digest", None)  # hashing the file would fail
    monkeypatch.setattr(cache, "sha256_file", None)

    cached = read_ratings(ratings_file, cache_dir=cache_dir)

    assert cached.sha256 == hashlib.sha256(ratings_file.read_bytes()).hexdigest()


def test_changed_file_misses(ratings_file: Path, cache_dir: Path) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)
    ratings_file.write_text(ML_HEADER + "7,8,5.0,10\n")

    assert read_ratings(ratings_file, cache_dir=cache_dir).user_id.tolist() == [7]


def test_touched_file_misses(
    ratings_file: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)
    stat = ratings_file.stat()
    os.utime(ratings_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    forbid_parsing(monkeypatch)

    with pytest.raises(AssertionError, match="parsed"):
        read_ratings(ratings_file, cache_dir=cache_dir)


def test_other_options_miss(
    ratings_file: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)
    forbid_parsing(monkeypatch)

    with pytest.raises(AssertionError, match="parsed"):
        read_ratings(ratings_file, cache_dir=cache_dir, scale="0:5:0.5")


def test_cache_false_neither_reads_nor_writes(ratings_file: Path, cache_dir: Path) -> None:
    read_ratings(ratings_file, cache=False, cache_dir=cache_dir)

    assert not cache_dir.exists()


def test_entry_is_one_arrow_file_and_no_temp_file_remains(
    ratings_file: Path, cache_dir: Path
) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)

    entries = list(cache_dir.iterdir())
    assert [e.suffix for e in entries] == [".arrow"]
    with pa.memory_map(str(entries[0])) as source:
        table = ipc.open_file(source).read_all()
    assert table.column_names == ["user_id", "movie_id", "rating", "timestamp"]


def test_corrupt_entry_is_ignored_with_a_warning_and_rewritten(
    ratings_file: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = read_ratings(ratings_file, cache_dir=cache_dir)
    (entry,) = cache_dir.iterdir()
    entry.write_bytes(b"not an arrow file")

    with caplog.at_level(logging.WARNING, logger="resrec.data.cache"):
        again = read_ratings(ratings_file, cache_dir=cache_dir)

    assert_same(first, again)
    assert "ignoring unreadable cache entry" in caplog.text
    assert cache.load(
        cache.CacheKey.for_file(ratings_file, _options()), str(ratings_file), cache_dir
    )


def test_truncated_entry_is_ignored(ratings_file: Path, cache_dir: Path) -> None:
    read_ratings(ratings_file, cache_dir=cache_dir)
    (entry,) = cache_dir.iterdir()
    entry.write_bytes(entry.read_bytes()[:-100])

    assert read_ratings(ratings_file, cache_dir=cache_dir).user_id.tolist() == [1, 1, 2]


def test_unwritable_cache_dir_only_logs(
    ratings_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    with caplog.at_level(logging.WARNING, logger="resrec.data.cache"):
        ratings = read_ratings(ratings_file, cache_dir=blocker / "cache")

    assert len(ratings) == 3
    assert "could not write cache entry" in caplog.text


def test_table_without_timestamps_round_trips(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "ml-1m" / "ratings.dat"
    path.parent.mkdir()
    path.write_text("1::2::3\n1::3::4\n")
    first = read_ratings(path, cache_dir=cache_dir)

    second = read_ratings(path, cache_dir=cache_dir)

    assert second.timestamp is None
    assert_same(first, second)


def test_ids_beyond_int32_round_trip(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(ML_HEADER + f"{2**40},{2**35},3.5,{2**33}\n1,2,4.0,0\n")
    first = read_ratings(path, cache_dir=cache_dir)

    second = read_ratings(path, cache_dir=cache_dir)

    assert second.user_id.tolist() == [2**40, 1]
    assert_same(first, second)


def test_default_cache_dir_follows_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESREC_CACHE_DIR", str(tmp_path / "root"))

    assert cache.default_cache_dir() == tmp_path / "root" / "parsed"


def test_sha256_file_matches_hashlib(ratings_file: Path) -> None:
    assert cache.sha256_file(ratings_file) == hashlib.sha256(ratings_file.read_bytes()).hexdigest()


def _options() -> dict[str, object]:
    """The options read_ratings uses for a call with its defaults."""
    return readers._check_options("auto", None, None, None, None, "error")
