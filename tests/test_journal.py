"""The ingest journal and the fast path: records survive, torn tails end a file, a store applies
each record once, and only a provably new and valid group is answered from the journal."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from msewatch.store import Store
from msewatch.store._fast_path import FastPath
from msewatch.store._id_filter import IdFilter
from msewatch.store._journal import Journal, journal_files, read_records

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def predictions(ids: list[str], **extra: list) -> pa.RecordBatch:
    n = len(ids)
    return pa.RecordBatch.from_pydict({
        "prediction_id": ids, "ts": [T0 + dt.timedelta(seconds=i) for i in range(n)],
        "y_pred": [float(i) for i in range(n)], "_row": list(range(n)), **extra,
    })


def labels(ids: list[str], values: list[float]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"prediction_id": ids, "y_true": values, "_row": list(range(len(ids)))})


def admit(fast: FastPath, kind: str, batches: list[pa.RecordBatch], known: dict[str, str] | None = None
          ) -> pa.RecordBatch | None:
    """A group as the server decides it: each request proven in its thread, then the group."""
    prepared = [fast.prepare(kind, b, known or {}) for b in batches]
    if any(p is None for p in prepared):
        return None
    return fast.admit(kind, prepared)  # type: ignore[arg-type]


def admitted(fast: FastPath, kind: str, batch: pa.RecordBatch, known: dict[str, str] | None = None) -> pa.RecordBatch:
    clean = admit(fast, kind, [batch], known)
    assert clean is not None
    return clean


def test_records_come_back_in_order_and_after_filters(tmp_path: Path) -> None:
    store_path = str(tmp_path / "s.duckdb")
    journal = Journal(store_path, next_seq=7)
    a, b = predictions(["a", "b"]), labels(["a"], [1.5])
    assert journal.append("predictions", a) == 7
    assert journal.append("labels", b) == 8
    journal.close()
    got = list(read_records(store_path))
    assert [(r.seq, r.kind) for r in got] == [(7, "predictions"), (8, "labels")]
    assert got[0].batch.equals(a) and got[1].batch.equals(b)
    assert [r.seq for r in read_records(store_path, after=7)] == [8]


@pytest.mark.parametrize("damage", ["cut", "garbage", "flipped"])
def test_a_torn_last_record_ends_the_file(tmp_path: Path, damage: str) -> None:
    store_path = str(tmp_path / "s.duckdb")
    journal = Journal(store_path, next_seq=1)
    journal.append("predictions", predictions(["a"]))
    journal.append("predictions", predictions(["b", "c"]))
    journal.close()
    [file] = journal_files(store_path)
    data = bytearray(file.read_bytes())
    if damage == "cut":
        data = data[:-5]
    elif damage == "garbage":
        data += b"\x00" * 3 + b"MSJ1" + b"\xff" * 40
        # both records intact, then junk
    else:
        data[-10] ^= 0xFF
    file.write_bytes(bytes(data))
    seqs = [r.seq for r in read_records(store_path)]
    assert seqs == ([1, 2] if damage == "garbage" else [1])


def test_files_rotate_and_are_deleted_once_applied(tmp_path: Path) -> None:
    store_path = str(tmp_path / "s.duckdb")
    journal = Journal(store_path, next_seq=1, rotate_bytes=1)  # every record starts a file
    for i in range(4):
        journal.append("predictions", predictions([f"id{i}"]))
    assert len(journal_files(store_path)) == 4
    journal.applied(2)
    assert [int(f.name.rsplit("-", 1)[1]) for f in journal_files(store_path)] == [3, 4]
    journal.applied(4)  # the current file stays while it is written to
    assert len(journal_files(store_path)) == 1
    journal.close(all_applied=True)
    assert journal_files(store_path) == []


def test_a_store_applies_its_journal_once_when_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "s.duckdb")
    Store(path).close()
    fast = FastPath(np.array([], np.uint64), np.array([], np.uint64))
    journal = Journal(path, next_seq=1)
    journal.append("predictions", admitted(fast, "predictions", predictions(["p1", "p2", "p3"])))
    journal.append("labels", admitted(fast, "labels", labels(["p1", "p2"], [1.0, 2.0])))
    journal.close()
    with Store(path) as store:  # as after a crash: the answered rows were only in the journal
        assert (store.count("predictions"), store.count("labels")) == (3, 2)
        assert store.journal_applied() == 2
        n_logged = store.count("ingest_log")
    assert journal_files(path) == []
    # a record the store already holds (a crash between applying it and deleting its file)
    journal = Journal(path, next_seq=2)
    journal.append("labels", admitted(FastPath(np.array([], np.uint64), np.array([], np.uint64)),
                                      "labels", labels(["p3"], [3.0])))
    journal.close()
    with Store(path) as store:
        assert store.count("labels") == 2 and store.count("ingest_log") == n_logged
        assert store.open_journal().last_seq == 2  # the next record is number 3


def test_a_read_only_open_applies_a_journal_left_behind(tmp_path: Path) -> None:
    path = str(tmp_path / "s.duckdb")
    Store(path).close()
    fast = FastPath(np.array([], np.uint64), np.array([], np.uint64))
    journal = Journal(path, next_seq=1)
    journal.append("predictions", admitted(fast, "predictions", predictions(["x", "y"])))
    journal.close()
    with Store(path, read_only=True) as store:
        assert store.count("predictions") == 2


def test_only_a_provably_new_and_valid_group_is_admitted(tmp_path: Path) -> None:
    path = str(tmp_path / "s.duckdb")
    with Store(path) as store:
        store.ingest_group("predictions", [(predictions(["stored"]), 1)])
        fast = FastPath(store.id_hashes("predictions"), store.id_hashes("labels"))
    assert admit(fast, "predictions", [predictions(["new1", "new2"])], {}) is not None
    assert admit(fast, "predictions", [predictions(["new1"])], {}) is None, "answered before: taken"
    assert admit(fast, "predictions", [predictions(["stored"])], {}) is None, "stored before the server started"
    assert admit(fast, "predictions", [predictions(["r", "r"])], {}) is None, "repeated inside the group"
    assert admit(fast, "predictions", [predictions([" "])], {}) is None, "a blank id is for the SQL to word"
    assert admit(fast, "predictions", [predictions(["f1"], region=["eu"])], {}) is None, "a new column"
    assert admit(fast, "predictions", [predictions(["f2"], region=["eu"])], {"region": "segment"}) is not None
    two = [predictions(["g1"]), predictions(["g1"])]  # two requests of one group
    assert admit(fast, "predictions", two) is None
    group = admit(fast, "predictions", [predictions(["h1", "h2"]), predictions(["h3"], region=["eu"])], {"region": "segment"})
    assert group is not None and group.column("_row").to_pylist() == [0, 1, 2]
    assert group.column("region").to_pylist() == [None, None, "eu"]
    assert admit(fast, "labels", [labels(["stored", "l2"], [1.0, 2.0])], {}) is not None
    assert admit(fast, "labels", [labels(["l2"], [2.0])], {}) is None, "a copy or revision is for the store"
    assert admit(fast, "labels", [labels(["l3"], [float("nan")])], {}) is None
    assert admit(fast, "shadow", [predictions(["s1"])], {}) is None
    fast.taken("labels", fast.hashes(pa.array(["l4"])))
    assert admit(fast, "labels", [labels(["l4"], [1.0])], {}) is None


def test_the_store_and_the_fast_path_hash_ids_alike(tmp_path: Path) -> None:
    ids = ["a", "é", "日本", "x" * 256, "'; DROP TABLE predictions; --", "0", "00"]
    with Store(str(tmp_path / "s.duckdb")) as store:
        store.ingest_group("predictions", [(predictions(ids), len(ids))])
        stored = np.sort(store.id_hashes("predictions"))
        fast = FastPath(np.array([], np.uint64), np.array([], np.uint64))
        assert np.array_equal(stored, np.sort(fast.hashes(pa.array(ids))))
        assert np.array_equal(np.sort(store.id_hashes("predictions", store.last_stamp)), stored)


def test_the_id_filter_never_forgets() -> None:
    rng = np.random.default_rng(5)
    seen = IdFilter()
    added: list[np.ndarray] = []
    for size in rng.integers(1, 3000, 60):
        h = rng.integers(0, 2**64, size, dtype=np.uint64)
        seen.add(h)
        added.append(h)
    everything = np.concatenate(added)
    assert len(seen) == len(np.unique(everything))
    assert all(seen.any_of(everything[i:i + 1]) for i in rng.integers(0, len(everything), 500))
    fresh = np.setdiff1d(rng.integers(0, 2**64, 5000, dtype=np.uint64), everything)
    assert not seen.any_of(fresh)
    assert len(seen._runs) <= 2 * int(np.log2(len(everything)) + 1)
    assert seen._bitmap.nbytes * 8 >= 16 * len(everything)  # grown with the ids: few fresh hashes reach the runs


def test_the_id_filter_bitmap_keeps_every_added_hash_through_growth() -> None:
    """Hashes alike in their top bits (one bitmap word) and at the ends of the range, added in
    many small runs across several doublings of the bitmap: each is found, none is invented."""
    rng = np.random.default_rng(11)
    seen = IdFilter()
    edges = np.array([0, 1, 2**63, 2**64 - 2, 2**64 - 1], dtype=np.uint64)
    crowd = (np.uint64(0xABCD) << np.uint64(48)) + rng.integers(0, 2**20, 3000, dtype=np.uint64)  # one word
    added = [edges, crowd]
    seen.add(edges)
    seen.add(crowd)
    for _ in range(40):
        h = rng.integers(0, 2**64, 4000, dtype=np.uint64)
        seen.add(h)
        added.append(h)
    everything = np.unique(np.concatenate(added))
    assert len(seen._bitmap) * 64 > (1 << 20)  # it grew past its first size
    assert all(seen.any_of(np.array([h], dtype=np.uint64)) for h in everything[rng.integers(0, len(everything), 2000)])
    assert all(seen.any_of(np.array([h], dtype=np.uint64)) for h in [*edges, *crowd[:50]])
    fresh = np.setdiff1d(rng.integers(0, 2**64, 20000, dtype=np.uint64), everything)
    assert not seen.any_of(fresh)


def test_the_id_filter_finds_every_hash_while_its_merges_and_growth_run_in_the_background() -> None:
    """With merges and growth past 2,000 ids sent to the worker, each hash is found right after
    it is added, whatever the worker is doing; once it is done, the runs are few again."""
    rng = np.random.default_rng(23)
    seen = IdFilter(inline_limit=2000)
    added: list[np.ndarray] = []
    workers = 0
    for size in rng.integers(1, 1500, 400):
        h = rng.integers(0, 2**64, size, dtype=np.uint64)
        seen.add(h)
        added.append(h)
        workers += seen._worker is not None
        assert seen.any_of(np.sort(h[rng.integers(0, len(h), 3)]))
        older = added[rng.integers(0, len(added))]
        assert seen.any_of(np.sort(older[:5]))
    assert workers > 0  # the background path ran
    seen.wait()
    assert seen._worker is None and seen._due_pair() is None and not seen._short(len(seen))  # nothing left due
    everything = np.concatenate(added)
    assert len(seen) == len(np.unique(everything))
    assert all(seen.any_of(np.array([h], dtype=np.uint64)) for h in everything[rng.integers(0, len(everything), 3000)])
    fresh = np.setdiff1d(rng.integers(0, 2**64, 20000, dtype=np.uint64), everything)
    assert not seen.any_of(fresh)
    assert len(seen._runs) <= 2 * int(np.log2(len(everything)) + 1)
    assert seen._bitmap.nbytes * 8 >= 16 * len(everything)


def test_the_id_filter_adds_and_answers_while_a_background_merge_is_held_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread that adds and asks never waits for the worker: with the worker's merge held
    up, adds and lookups go on, and the ids they add are found."""
    from msewatch.store import _id_filter

    release, started = threading.Event(), threading.Event()
    plain_merge = _id_filter._merge

    def held_merge(older: np.ndarray, newer: np.ndarray) -> np.ndarray:
        if threading.current_thread().name == "msewatch-id-filter":
            started.set()
            release.wait(30)
        return plain_merge(older, newer)

    monkeypatch.setattr(_id_filter, "_merge", held_merge)
    rng = np.random.default_rng(29)
    seen = IdFilter(inline_limit=1000)
    first = rng.integers(0, 2**64, 900, dtype=np.uint64)
    second = rng.integers(0, 2**64, 900, dtype=np.uint64)
    seen.add(first)
    seen.add(second)  # 900 + 900 > 1,000: the worker merges them
    assert started.wait(30)
    later: list[np.ndarray] = []
    missed: list[int] = []
    done = threading.Event()

    def go_on() -> None:
        for i in range(50):
            h = rng.integers(0, 2**64, 300, dtype=np.uint64)
            seen.add(h)
            later.append(h)
            if not seen.any_of(np.sort(h)):
                missed.append(i)
        done.set()

    adder = threading.Thread(target=go_on)
    adder.start()
    assert done.wait(30), "adding waited for the background merge"
    assert not missed
    assert seen._worker is not None and seen._merging is not None  # still held up
    everything = np.concatenate([first, second, *later])
    assert all(seen.any_of(np.array([h], dtype=np.uint64)) for h in everything)
    release.set()
    adder.join()
    seen.wait()
    assert all(seen.any_of(np.array([h], dtype=np.uint64)) for h in everything)
    assert len(seen) == len(np.unique(everything))


def test_a_failed_write_ends_its_file_so_the_next_record_is_never_behind_a_torn_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msewatch.store._journal as journal_module

    store_path = str(tmp_path / "s.duckdb")
    journal = Journal(store_path, next_seq=1)
    journal.append("predictions", predictions(["a"]))
    real_write = journal_module.os.write

    def half_then_fail(fd: int, data: bytes) -> int:  # a full disk in the middle of a record
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", half_then_fail)
    with pytest.raises(OSError):
        journal.append("predictions", predictions(["b"]))
    monkeypatch.setattr(journal_module.os, "write", real_write)
    assert journal.append("labels", labels(["a"], [1.0])) == 3
    journal.close()
    assert [(r.seq, r.kind) for r in read_records(store_path)] == [(1, "predictions"), (3, "labels")]
    assert len(journal_files(store_path)) == 2
