"""`indexer.rows.SparseRows`: the reservoirs' sparse rows against dense float16 rows."""

from __future__ import annotations

import numpy as np

from indexer.rows import SparseRows


def _random_rows(rng: np.random.Generator, m: int, width: int) -> tuple[SparseRows, np.ndarray]:
    dense = np.where(rng.random((m, width)) < 0.2, rng.random((m, width)) * 5, 0.0)
    row, position = np.nonzero(dense)  # by row, then position
    values = dense[row, position].astype(np.float32)
    rows = SparseRows.of_fires(row, position, values, m=m, width=width)
    return rows, dense.astype(np.float32).astype(np.float16)


def test_take_concat_and_dense_match_dense_rows() -> None:
    rng = np.random.default_rng(0)
    a, dense_a = _random_rows(rng, 7, 9)
    b, dense_b = _random_rows(rng, 5, 9)
    np.testing.assert_array_equal(a.dense(), dense_a)
    both = SparseRows.concat([a, SparseRows.empty(9), b])
    np.testing.assert_array_equal(both.dense(), np.concatenate([dense_a, dense_b]))
    index = np.array([11, 0, 3, 3, 8])
    np.testing.assert_array_equal(
        both.take(index).dense(), np.concatenate([dense_a, dense_b])[index]
    )
    assert len(both.take(np.zeros(0, np.int64))) == 0
