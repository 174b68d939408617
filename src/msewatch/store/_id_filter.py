"""Which ids may already be stored: a set of 64-bit id hashes held in memory.

The server answers a request before DuckDB's tables hold its rows (see `_journal`), so it
cannot ask the tables whether an id is new without scanning them (DuckDB uses its id index
for inserts, not for joins). This set holds the hash of every stored or journaled id, so
"none of these hashes is in the set" proves a group new; a hit (a re-sent id, or rarely
another id with the same hash) sends the group to the exact path through the tables. It
may hold more than the stored ids, never fewer.

Sorted runs of geometrically growing size, merged as a binary counter does: adding n
hashes costs O(n log N) over time. 8 bytes per id. A lookup first tests one bit per hash in a
bitmap of 16-32 bits per id (2-4 bytes), so that only the ~5% of fresh hashes whose bit is set
are searched in the runs. A binary search of each probe in each run missed the cache at
every step: 5,000 probes against 20M ids took 7 ms of the answer thread; with the bitmap
0.4 ms.

Merges and bitmap growth that touch more than `inline_limit` ids run in a background thread,
so that the thread which adds and asks never waits for them: merging two runs of 8M ids and
re-marking a bitmap for 16M took 1.26 s, and the server's answers waited that long. Until
such a merge is done, its two runs are searched apart; until a new bitmap is ready, the old
one (a little fuller) is tested. Either way every added hash stays findable.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pyarrow as pa

__all__ = ["IdFilter", "id_hashes"]

log = logging.getLogger("msewatch.store")

_BITS_PER_ID = 16  # bitmap bits per id, at least: a fresh hash finds its bit set ~1/16 of the time
_MIN_BITS = 1 << 20
_INLINE_LIMIT = 1 << 20  # ids: merging two runs of 512k ids takes ~15 ms, a bitmap for 1M ~30 ms


class IdFilter:
    def __init__(self, hashes: np.ndarray | None = None, *, inline_limit: int = _INLINE_LIMIT) -> None:
        self._lock = threading.Lock()  # guards the runs, the bitmap and the background work
        self._runs: list[np.ndarray] = []  # oldest (largest) first
        self._bitmap, self._shift = _bitmap(_MIN_BITS)
        self._inline_limit = inline_limit
        self._worker: threading.Thread | None = None
        self._merging: tuple[np.ndarray, np.ndarray] | None = None  # two neighbouring runs the worker merges
        if hashes is not None and len(hashes):
            self.add(hashes)
            self.wait()  # built whole before its first use

    def __len__(self) -> int:
        """Hashes held; one added twice (an id stored again by the exact path) counts twice."""
        with self._lock:
            return self._held()

    def add(self, hashes: np.ndarray, *, sorted_unique: bool = False) -> None:
        """Add hashes (`sorted_unique`: they are sorted and distinct already)."""
        run = np.asarray(hashes, dtype=np.uint64) if sorted_unique else _sorted_unique(hashes)
        if not len(run):
            return
        with self._lock:
            _mark(self._bitmap, self._shift, run)
            self._runs.append(run)
            self._merge_tail()
            count = self._held()
            if self._worker is None and (count <= self._inline_limit or len(self._runs) == 1) and self._short(count):
                self._bitmap, self._shift = _bitmap(_bits_for(count))  # small, or the first run: at once
                for r in self._runs:
                    _mark(self._bitmap, self._shift, r)
            if self._worker is None and (self._due_pair() is not None or self._short(count)):
                worker = threading.Thread(target=self._maintain, name="msewatch-id-filter", daemon=True)
                worker.start()  # it waits for the lock: set below before it can look
                self._worker = worker

    def any_of(self, hashes: np.ndarray) -> bool:
        """Whether any of `hashes` (sorted: searches touch memory in order) may be in the set."""
        with self._lock:  # a consistent view: a merged run replaces its two, a new bitmap the old
            runs, bitmap, shift = list(self._runs), self._bitmap, self._shift
        probe = np.asarray(hashes, dtype=np.uint64)
        slots = probe >> np.uint64(shift)
        bits = bitmap[slots >> np.uint64(6)] >> (slots & np.uint64(63))
        probe = probe[(bits & np.uint64(1)).astype(bool)]  # the rest are certainly not in the set
        if not len(probe):
            return False
        for run in runs:
            i = np.searchsorted(run, probe)
            i[i == len(run)] = 0
            if len(run) and np.any(run[i] == probe):
                return True
        return False

    def wait(self) -> None:
        """Return once no background merge or growth runs (for a build, tests and benchmarks)."""
        while True:
            with self._lock:
                worker = self._worker
            if worker is None:
                return
            worker.join()

    # -- under the lock ---------------------------------------------------------------------------
    def _held(self) -> int:
        return sum(len(r) for r in self._runs)

    def _merge_tail(self) -> None:
        """Merge the newest runs while the older is at most twice the newer and both are small."""
        runs = self._runs
        while (len(runs) >= 2 and len(runs[-2]) <= 2 * len(runs[-1])
               and len(runs[-2]) + len(runs[-1]) <= self._inline_limit and not self._is_merging(runs[-2])):
            newer = runs.pop()
            runs[-1] = _merge(runs[-1], newer)

    def _due_pair(self) -> int | None:
        """The index of the newest pair of runs the worker should merge (the older at most twice
        the newer), if any."""
        runs = self._runs
        for i in range(len(runs) - 2, -1, -1):
            if len(runs[i]) <= 2 * len(runs[i + 1]) and not self._is_merging(runs[i]) \
                    and not self._is_merging(runs[i + 1]):
                return i
        return None

    def _short(self, count: int) -> bool:
        """Whether the bitmap holds fewer than `_BITS_PER_ID` bits for each of `count` ids."""
        return count * _BITS_PER_ID > len(self._bitmap) * 64

    def _is_merging(self, run: np.ndarray) -> bool:
        return self._merging is not None and any(run is r for r in self._merging)

    # -- the background worker --------------------------------------------------------------------
    def _maintain(self) -> None:
        """Merge due pairs and grow the bitmap until neither is due, outside the lock."""
        try:
            while True:
                with self._lock:
                    i = self._due_pair()
                    count = self._held()
                    grow = self._short(count)
                    if i is None and not grow:
                        self._worker = None  # under the same lock: an add from now on starts another
                        return
                    pair = (self._runs[i], self._runs[i + 1]) if i is not None else None
                    self._merging = pair
                    marked = [] if pair else list(self._runs)  # what a new bitmap is built from (kept alive)
                if pair is not None:
                    merged = _merge(*pair)
                    with self._lock:  # only this thread removes runs it merges: they are still neighbours
                        at = next(k for k, r in enumerate(self._runs) if r is pair[0])
                        self._runs[at:at + 2] = [merged]
                        self._merging = None
                    continue  # merge first: the bitmap is built from fewer, longer runs
                bitmap, shift = _bitmap(_bits_for(count))
                for r in marked:
                    _mark(bitmap, shift, r)
                with self._lock:
                    since = _other_runs(self._runs, marked)
                for r in since:  # runs added (or merged) while it was built: most of them here…
                    _mark(bitmap, shift, r)
                marked += since
                with self._lock:  # …and the few added meanwhile under the lock, then it serves
                    for r in _other_runs(self._runs, marked):
                        _mark(bitmap, shift, r)
                    self._bitmap, self._shift = bitmap, shift
        except Exception:  # the runs and the bitmap are as they were: correct, only slower
            log.exception("the id filter's background merge failed")
            with self._lock:
                self._merging = None
                self._worker = None


def _other_runs(runs: list[np.ndarray], marked: list[np.ndarray]) -> list[np.ndarray]:
    """The runs that are not among `marked` (by identity: runs are never changed in place)."""
    return [r for r in runs if not any(r is m for m in marked)]


def _merge(older: np.ndarray, newer: np.ndarray) -> np.ndarray:
    """Two sorted runs as one (timsort merges two sorted runs in linear time; NumPy sorts
    without the GIL)."""
    run = np.concatenate([older, newer])
    run.sort(kind="stable")
    return run


def _bits_for(count: int) -> int:
    """A power of two of at least `_BITS_PER_ID` bits for each of `count` ids."""
    bits = _MIN_BITS
    while bits < count * _BITS_PER_ID:
        bits *= 2
    return bits


def _bitmap(bits: int) -> tuple[np.ndarray, int]:
    """An empty bitmap of `bits` bits and the shift that takes a hash to its bit (its top bits)."""
    return np.zeros(bits // 64, dtype=np.uint64), 64 - bits.bit_length() + 1


def _mark(bitmap: np.ndarray, shift: int, run: np.ndarray) -> None:
    """Set the bit of each hash of `run` (sorted: equal words are neighbours)."""
    slots = run >> np.uint64(shift)
    words = slots >> np.uint64(6)
    masks = np.left_shift(np.uint64(1), slots & np.uint64(63))
    starts = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
    bitmap[words[starts]] |= np.bitwise_or.reduceat(masks, starts)


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
