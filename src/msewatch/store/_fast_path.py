"""Deciding a group's outcome before DuckDB's tables hold it: the usual group, proven new.

The server answers a request from the journal (see `_journal`). It may do so only when the
answer is certain without the tables: every row passes the Arrow proof of `schema` (so the
validation SQL would accept it), no id repeats inside the group, and no id is stored or
journaled before (the `IdFilter` of their hashes says none may be). Then every row is
accepted, as the store's own ingest finds when it applies the record. Any other group (a
re-sent id, a doubtful value, a new extra column, shadow rows) takes the exact path: it waits
for the journal to be applied and goes through the store as one transaction.

`prepare` proves and hashes one request; it runs beside the others, in the request's thread.
`admit` decides a group of prepared requests; one thread calls it, in the order it journals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from msewatch.schema import ColumnMap, clean_labels, clean_predictions
from msewatch.store._id_filter import IdFilter, id_hashes

__all__ = ["FastPath", "Prepared"]

_CONTRACT = frozenset(ColumnMap().source_names().values())


@dataclass(frozen=True)
class Prepared:
    """A request whose every row passes the proof: its rows as stored, and its ids' hashes."""

    batch: pa.RecordBatch  # what `clean_predictions` / `clean_labels` made, with `_row`
    hashes: np.ndarray  # sorted


class FastPath:
    """The id filters of predictions and labels, and the proof that a group is all new."""

    def __init__(self, prediction_hashes: np.ndarray, label_hashes: np.ndarray) -> None:
        self.filters = {"predictions": IdFilter(prediction_hashes), "labels": IdFilter(label_hashes)}

    def prepare(self, kind: str, batch: pa.RecordBatch, known: dict[str, str]) -> Prepared | None:
        """One request's rows as stored and its sorted id hashes, when the proof holds; else None.

        `known` holds the store's extra columns (name → kind): a request with another is not
        proven (the exact path adds the column). Thread-safe.
        """
        if kind not in self.filters or batch.num_rows == 0:
            return None
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
        hashes = np.sort(self.hashes(clean.column("prediction_id")))
        if _repeats(hashes):  # an id twice in the request (or, rarely, a hash)
            return None
        return Prepared(clean, hashes)

    def admit(self, kind: str, requests: list[Prepared]) -> pa.RecordBatch | None:
        """The group as one record (`_row` numbering its rows) when every id is new, else None.

        On success the ids are in the filter: later groups see them as taken.
        """
        if kind not in self.filters or not requests:
            return None
        if len(requests) == 1:
            hashes = requests[0].hashes
        else:
            hashes = np.concatenate([r.hashes for r in requests])
            hashes.sort(kind="stable")  # sorted runs: a linear merge
            if _repeats(hashes):  # an id in two requests of the group
                return None
        if self.filters[kind].any_of(hashes):
            return None
        self.filters[kind].add(hashes, sorted_unique=True)
        if len(requests) == 1:
            return requests[0].batch
        table = pa.Table.from_batches([r.batch for r in requests]) if _same_schema(requests) else \
            pa.concat_tables([pa.Table.from_batches([r.batch]) for r in requests], promote_options="default")
        table = table.set_column(table.schema.get_field_index("_row"), "_row",
                                 pa.array(np.arange(table.num_rows, dtype=np.int64)))
        return table.combine_chunks().to_batches()[0]

    def taken(self, kind: str, hashes: np.ndarray) -> None:
        """Mark the ids a group stored by the exact path (`Store.id_hashes`) as taken."""
        if kind in self.filters and len(hashes):
            self.filters[kind].add(hashes)

    def hashes(self, ids: pa.Array) -> np.ndarray:
        """Python's hash of each id (per process; the store's ids are hashed the same at start)."""
        return id_hashes(ids)


def _same_schema(requests: list[Prepared]) -> bool:
    first = requests[0].batch.schema
    return all(r.batch.schema.equals(first) for r in requests[1:])


def _repeats(hashes: np.ndarray) -> bool:
    """Whether sorted `hashes` hold a value twice."""
    return bool(np.any(hashes[1:] == hashes[:-1]))
