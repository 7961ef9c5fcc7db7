"""Id maps: the two-way mapping between raw ids and contiguous indices.

Raw ``user_id`` / ``movie_id`` values are whatever the ratings file holds;
the model works with user and movie *indices* ``0..n-1``. Indices follow the
sorted order of the raw ids, so building a map twice from the same ids gives
the same map whatever the row order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from resrec.errors import UnknownIdError

Missing = Literal["error", "negative"]

_DENSE_MIN_SPAN = 1 << 20  # id spans up to this (or 8x the map's size) get a lookup table


class IdMap:
    """A sorted array of raw ids; index ``i`` stands for ``raw_ids[i]``.

    Parameters
    ----------
    raw_ids
        Distinct raw ids, in ascending order.
    kind
        ``"user"`` or ``"movie"``, used in error messages.
    """

    def __init__(self, raw_ids: np.ndarray, kind: str) -> None:
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        if raw_ids.size > 1 and not np.all(raw_ids[1:] > raw_ids[:-1]):
            raise ValueError("IdMap needs distinct raw ids in ascending order")
        self.raw_ids = raw_ids
        self.kind = kind
        self._table: np.ndarray | None = None  # see _lookup_table

    def _lookup_table(self) -> np.ndarray | None:
        """For compact ids, an int32 array holding the index of ``low + i`` (or -1) at ``i``.

        Built on first use when the ids span at most ``max(8 n, 2**20)``
        values (so at most 4 MiB beyond 32 bytes per id); a lookup is then
        one subtraction and one gather instead of a binary search.
        """
        if self._table is None and self.raw_ids.size:
            low, high = int(self.raw_ids[0]), int(self.raw_ids[-1])
            small = low > -(2**62) and high < 2**62  # so that raw - low cannot wrap into range
            if small and high - low < max(8 * self.raw_ids.size, _DENSE_MIN_SPAN):
                table = np.full(high - low + 1, -1, dtype=np.int32)
                table[self.raw_ids - low] = np.arange(self.raw_ids.size, dtype=np.int32)
                self._table = table
        return self._table

    @classmethod
    def from_ids(cls, ids: np.ndarray, kind: str) -> IdMap:
        """Build a map from a column of raw ids (duplicates and any order allowed)."""
        return cls(np.unique(np.asarray(ids, dtype=np.int64)), kind)

    def __len__(self) -> int:
        return int(self.raw_ids.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdMap):
            return NotImplemented
        return self.kind == other.kind and np.array_equal(self.raw_ids, other.raw_ids)

    def __hash__(self) -> int:
        return hash((self.kind, self.raw_ids.tobytes()))

    def __contains__(self, raw_id: object) -> bool:
        if not isinstance(raw_id, int | np.integer):
            return False
        pos = int(np.searchsorted(self.raw_ids, raw_id))
        return pos < self.raw_ids.size and int(self.raw_ids[pos]) == raw_id

    def index_of(self, raw_ids: np.ndarray | list[int], missing: Missing = "error") -> np.ndarray:
        """Indices (int64) of ``raw_ids``.

        ``missing="error"`` raises :class:`UnknownIdError` naming the first unknown
        id; ``missing="negative"`` returns -1 for unknown ids.
        """
        try:
            raw = np.asarray(raw_ids, dtype=np.int64)
        except OverflowError:
            raise UnknownIdError(
                f"unknown {self.kind}_id: {raw_ids!r} holds an id too large for a 64-bit integer"
            ) from None
        table = self._lookup_table()
        if table is not None:
            offset = raw - self.raw_ids[0]
            inside = (offset >= 0) & (offset < table.size)
            pos = table[np.where(inside, offset, 0)].astype(np.int64)
            found = inside & (pos >= 0)
            if np.all(found):
                return pos
            return self._missing(raw, found, pos, missing)
        pos = np.searchsorted(self.raw_ids, raw)
        pos_clipped = np.minimum(pos, max(self.raw_ids.size - 1, 0))
        found = (pos < self.raw_ids.size) & (
            self.raw_ids[pos_clipped] == raw if self.raw_ids.size else False
        )
        if np.all(found):
            return pos.astype(np.int64)
        return self._missing(raw, found, pos, missing)

    def _missing(
        self, raw: np.ndarray, found: np.ndarray, pos: np.ndarray, missing: Missing
    ) -> np.ndarray:
        if missing == "error":
            bad = int(raw[~found][0])
            raise UnknownIdError(
                f"unknown {self.kind}_id {bad}: it does not occur in the training ratings",
                hint=f"the model knows {len(self)} {self.kind}s",
            )
        return np.where(found, pos, -1).astype(np.int64)

    def index(self, raw_id: int) -> int:
        """Index of one raw id; raises :class:`UnknownIdError` if unknown."""
        return int(self.index_of(np.array([raw_id]))[0])

    def raw_of(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Raw ids (int64) of ``indices``; raises ``IndexError`` when out of range."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.kind} index out of range 0..{len(self) - 1}")
        return self.raw_ids[idx]


def encode(
    user_id: np.ndarray, movie_id: np.ndarray
) -> tuple[IdMap, IdMap, np.ndarray, np.ndarray]:
    """Build both id maps and the int32 index columns in one vectorised pass each."""
    user_raw, user_index = _factorize(user_id)
    movie_raw, movie_index = _factorize(movie_id)
    return IdMap(user_raw, "user"), IdMap(movie_raw, "movie"), user_index, movie_index


def _factorize(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids and each row's position among them (int32).

    MovieLens ids are small non-negative integers, so a lookup table indexed by
    the id is linear in the number of rows; other ids fall back to a sort.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids.copy(), np.empty(0, dtype=np.int32)
    low, high = int(ids.min()), int(ids.max())
    if low >= 0 and high < max(4 * ids.size, 1 << 22):
        present = np.zeros(high + 1, dtype=bool)
        present[ids] = True
        lookup = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present).astype(np.int64), lookup[ids].astype(np.int32)
    raw, inverse = np.unique(ids, return_inverse=True)
    return raw, inverse.astype(np.int32).reshape(-1)
