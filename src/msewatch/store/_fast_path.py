"""Deciding a group's outcome before DuckDB's tables hold it: the usual group, proven new.

The server answers a request from the journal (see `_journal`). It may do so only when the
answer is certain without the tables: every row passes the Arrow proof of `schema` (so the
validation SQL would accept it), no id repeats inside the group, and no id is stored or
journaled before (the `IdFilter` of their hashes says none may be). Then every row is
accepted, as the store's own ingest will find when it applies the record. Any other group
(a re-sent id, a doubtful value, a new extra column, shadow rows) takes the exact path: it
waits for the journal to be applied and goes through the store as one transaction.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from msewatch.io import concat_batches
from msewatch.schema import ColumnMap, clean_labels, clean_predictions
from msewatch.store._id_filter import IdFilter

__all__ = ["FastPath"]

_CONTRACT = frozenset(ColumnMap().source_names().values())


class FastPath:
    """The id filters of predictions and labels, and the proof that a group is all new."""

    def __init__(self, prediction_hashes: np.ndarray, label_hashes: np.ndarray) -> None:
        self._hasher = duckdb.connect()  # in memory: hashing never waits for the store
        self.filters = {"predictions": IdFilter(prediction_hashes), "labels": IdFilter(label_hashes)}

    def admit(self, kind: str, batches: list[pa.RecordBatch], known: dict[str, str]) -> pa.RecordBatch | None:
        """The group as one clean batch (with `_row`) when every row is certainly accepted, else None.

        On success the group's ids are in the filter: later groups see them as taken. `known`
        holds the store's extra columns (name → kind); a group with another one is not admitted.
        """
        if kind not in self.filters or not batches:
            return None
        batch = batches[0] if len(batches) == 1 else concat_batches(batches).combine_chunks().to_batches()[0]
        if kind == "predictions":
            extras = {n: known.get(n) for n in batch.schema.names if not n.startswith("_") and n not in _CONTRACT}
            if any(k is None for k in extras.values()):
                return None
            clean = clean_predictions(batch, extras)  # type: ignore[arg-type]
            if clean is not None:
                clean = clean.append_column("_row", batch.column("_row").cast(pa.int64()))
        else:
            clean = clean_labels(batch)
        if clean is None:
            return None
        ids = clean.column("prediction_id")
        hashes = self.hashes(ids)
        if len(np.unique(hashes)) < len(hashes) or self.filters[kind].any_of(hashes):
            return None
        self.filters[kind].add(hashes)
        return clean

    def taken(self, kind: str, hashes: np.ndarray) -> None:
        """Mark the ids a group stored by the exact path (`Store.id_hashes`) as taken."""
        if kind in self.filters and len(hashes):
            self.filters[kind].add(hashes)

    def hashes(self, ids: pa.Array) -> np.ndarray:
        """DuckDB's `hash` of each id: the store computes the same ones for its stored ids."""
        table = pa.table({"id": ids.cast(pa.string())})
        return self._hasher.execute("SELECT hash(id) AS h FROM \"table\"").fetchnumpy()["h"]

    def close(self) -> None:
        self._hasher.close()
