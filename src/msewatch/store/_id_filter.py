"""Which ids may already be stored: a set of 64-bit id hashes held in memory.

The server answers a request before DuckDB's tables hold its rows (see `_journal`), so it
cannot ask the tables whether an id is new without scanning them (DuckDB uses its id index
for inserts, not for joins). This set holds the hash of every stored or journaled id, so
"none of these hashes is in the set" proves a group new; a hit (a re-sent id, or rarely
another id with the same hash) sends the group to the exact path through the tables. It
may hold more than the stored ids, never fewer.

Sorted runs of geometrically growing size, merged as a binary counter does: adding n
hashes costs O(n log N) over time, a lookup one binary search per run. 8 bytes per id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["IdFilter", "id_hashes"]


class IdFilter:
    def __init__(self, hashes: np.ndarray | None = None) -> None:
        self._runs: list[np.ndarray] = []
        if hashes is not None and len(hashes):
            self.add(hashes)

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def add(self, hashes: np.ndarray, *, sorted_unique: bool = False) -> None:
        """Add hashes (`sorted_unique`: they are sorted and distinct already)."""
        run = np.asarray(hashes, dtype=np.uint64) if sorted_unique else _sorted_unique(hashes)
        if not len(run):
            return
        # merge while the newest run is at least half the size of the one before it
        while self._runs and len(self._runs[-1]) <= 2 * len(run):
            older = self._runs.pop()
            run = np.concatenate([older, run])
            run.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
        self._runs.append(run)

    def any_of(self, hashes: np.ndarray) -> bool:
        """Whether any of `hashes` (sorted: searches touch memory in order) may be in the set."""
        probe = np.asarray(hashes, dtype=np.uint64)
        for run in self._runs:
            i = np.searchsorted(run, probe)
            i[i == len(run)] = 0
            if len(run) and np.any(run[i] == probe):
                return True
        return False


def _sorted_unique(hashes: np.ndarray) -> np.ndarray:
    """`np.unique` by a sort (NumPy 2's `np.unique` of 10M uint64 takes 17 s here, a sort 0.25 s)."""
    run = np.sort(np.asarray(hashes, dtype=np.uint64))
    if len(run) < 2:
        return run
    keep = np.empty(len(run), dtype=bool)
    keep[0] = True
    np.not_equal(run[1:], run[:-1], out=keep[1:])
    return run[keep]


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each id: Python's string hash, 0.2 ms per 1,000 ids (DuckDB's `hash`
    through a registered Arrow table: 2.1 ms). Seeded per process: the filter is built anew at
    every start (`Store.id_hashes`), never stored."""
    return np.fromiter(map(hash, ids.to_pylist()), dtype=np.int64, count=len(ids)).view(np.uint64)
