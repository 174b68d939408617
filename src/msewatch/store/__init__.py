"""The embedded DuckDB store of predictions and label revisions."""

from msewatch.store._duckdb import IngestResult, Reject, Store, default_db_path, rejects_to_ndjson

__all__ = ["IngestResult", "Reject", "Store", "default_db_path", "rejects_to_ndjson"]
