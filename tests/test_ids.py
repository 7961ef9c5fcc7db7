from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resrec.errors import UnknownIdError
from resrec.ids import IdMap, encode


def test_encode_gives_contiguous_indices_in_raw_id_order() -> None:
    users, movies, u_idx, m_idx = encode(np.array([30, 10, 30, 20]), np.array([5, 7, 7, 1000]))
    assert users.raw_ids.tolist() == [10, 20, 30]
    assert u_idx.tolist() == [2, 0, 2, 1]
    assert movies.raw_ids.tolist() == [5, 7, 1000]
    assert m_idx.tolist() == [0, 1, 1, 2]
    assert u_idx.dtype == np.int32


def test_encode_handles_huge_ids_by_sorting() -> None:
    users, _, u_idx, _ = encode(np.array([10**15, 3, 10**15]), np.array([1, 1, 2]))
    assert users.raw_ids.tolist() == [3, 10**15]
    assert u_idx.tolist() == [1, 0, 1]


def test_index_of_unknown_id_raises_naming_the_id() -> None:
    ids = IdMap.from_ids(np.array([1, 5, 9]), "movie")
    with pytest.raises(UnknownIdError, match="unknown movie_id 4"):
        ids.index_of([5, 4])


def test_index_of_negative_policy_marks_unknown() -> None:
    ids = IdMap.from_ids(np.array([1, 5, 9]), "user")
    assert ids.index_of([9, 4, 1, 100], missing="negative").tolist() == [2, -1, 0, -1]


def test_raw_of_round_trips_and_rejects_out_of_range() -> None:
    ids = IdMap.from_ids(np.array([42, 7]), "user")
    assert ids.raw_of(ids.index_of([42, 7])).tolist() == [42, 7]
    assert 42 in ids and 8 not in ids
    with pytest.raises(IndexError):
        ids.raw_of([2])


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=200))
def test_id_map_properties(raw: list[int]) -> None:
    array = np.array(raw, dtype=np.int64)
    first, _, index, _ = encode(array, array)
    second = IdMap.from_ids(array[::-1], "user")
    assert first == second
    assert len(first) == len(set(raw))
    assert np.array_equal(first.raw_of(index), array)


def test_index_of_an_id_too_large_for_int64_is_unknown() -> None:
    ids = IdMap.from_ids(np.array([1, 5]), "user")
    with pytest.raises(UnknownIdError, match="too large"):
        ids.index_of([99999999999999999999])


@pytest.mark.parametrize(
    "raw_ids",
    [
        np.array([3, 4, 9, 200]),  # compact: looked up in a table
        np.array([-(2**40), 0, 5, 2**40]),  # sparse: binary search
        np.array([2**63 - 10, 2**63 - 3]),  # compact but near the int64 limit
    ],
)
def test_index_of_agrees_with_a_dictionary(raw_ids: np.ndarray) -> None:
    id_map = IdMap(raw_ids, "movie")
    expected = {int(r): i for i, r in enumerate(raw_ids)}
    probes = np.concatenate(
        [raw_ids, raw_ids + 1, raw_ids - 1, [0, -1, 2**63 - 1, -(2**63), 2**62, -(2**62)]]
    ).astype(np.int64)
    got = id_map.index_of(probes, missing="negative")
    assert got.tolist() == [expected.get(int(r), -1) for r in probes]
    with pytest.raises(UnknownIdError, match="unknown movie_id"):
        id_map.index_of(np.array([raw_ids[0], 12345678]))
