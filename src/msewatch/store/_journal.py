"""The ingest journal: rows are durable once appended here, before DuckDB's tables hold them.

A DuckDB commit into the predictions table waits while a checkpoint writes that table (100 ms
and more every few seconds under load), so the server answers a request once its rows are
in this append-only log on disk (fsync) and applies them to the tables right behind. Each
record is one group of one kind (Arrow IPC) with a sequence number; the store keeps the
number of the last record it applied in `journal_applied`, in the same transaction as the
rows, so a store opened after a crash applies exactly the records past it, once.

Files are `<store>.journal-<first seq>`; a new one starts when the current one passes
`rotate_bytes` (and at every open, so a torn tail is never appended to). A file is deleted
once every record in it is applied. A record whose header, length or CRC does not check out
ends its file: it is the torn write of a crash, which no one was answered for.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

__all__ = ["Journal", "Record", "journal_files", "read_records"]

_MAGIC = b"MSJ1"
_HEADER = struct.Struct("<4sBQII")  # magic, kind, seq, payload length, payload CRC-32
_KINDS = ("predictions", "labels")


@dataclass(frozen=True)
class Record:
    seq: int
    kind: str
    batch: pa.RecordBatch


def journal_files(store_path: str) -> list[Path]:
    """The journal files of the store at `store_path`, oldest first."""
    path = Path(store_path)
    prefix = path.name + ".journal-"
    if not path.parent.is_dir():
        return []
    found = [p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(prefix):]))


def read_records(store_path: str, after: int = 0) -> Iterator[Record]:
    """Every intact record of the store's journal with a sequence number past `after`, in order."""
    for file in journal_files(store_path):
        data = file.read_bytes()
        at = 0
        while at + _HEADER.size <= len(data):
            magic, kind, seq, length, crc = _HEADER.unpack_from(data, at)
            start = at + _HEADER.size
            payload = data[start:start + length]
            if magic != _MAGIC or kind >= len(_KINDS) or len(payload) != length or zlib.crc32(payload) != crc:
                break  # a torn write: the rest of this file was never answered for
            at = start + length
            if seq > after:
                with pa.ipc.open_stream(payload) as reader:
                    batches = list(reader)
                batch = batches[0] if len(batches) == 1 else pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
                yield Record(seq, _KINDS[kind], batch)


class Journal:
    """Appends records with fsync; deletes files whose records are all applied. Thread-safe."""

    def __init__(self, store_path: str, next_seq: int, rotate_bytes: int = 64 << 20) -> None:
        self.store_path = store_path
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._next = next_seq
        self._closed: list[tuple[Path, int]] = []  # earlier files and the last seq each holds
        self._file: Path | None = None
        self._fd: int | None = None
        self._size = 0
        self._last_in_file = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record appended (0 before any)."""
        return self._next - 1

    def append(self, kind: str, batch: pa.RecordBatch) -> int:
        """Write one record and fsync it; return its sequence number."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        payload = sink.getvalue().to_pybytes()
        with self._lock:
            seq = self._next
            if self._fd is None or self._size >= self.rotate_bytes:
                self._start_file(seq)
            header = _HEADER.pack(_MAGIC, _KINDS.index(kind), seq, len(payload), zlib.crc32(payload))
            self._next = seq + 1  # a failed record uses its number up too
            try:
                data = memoryview(header + payload)
                while data:  # a write to a regular file may be short (a signal, a full disk)
                    data = data[os.write(self._fd, data):]
                os.fdatasync(self._fd) if hasattr(os, "fdatasync") else os.fsync(self._fd)
            except BaseException:
                self._end_file()  # a torn record ends its file: the next record starts another
                raise
            self._size += len(header) + len(payload)
            self._last_in_file = seq
            return seq

    def applied(self, seq: int) -> None:
        """Records up to `seq` are in the tables: delete the files that hold nothing later."""
        with self._lock:
            keep = []
            for path, last in self._closed:
                if last <= seq:
                    path.unlink(missing_ok=True)
                else:
                    keep.append((path, last))
            self._closed = keep

    def close(self, *, all_applied: bool = False) -> None:
        """Close the current file; with `all_applied`, delete it too (a clean shutdown)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                if all_applied and self._file is not None:
                    self._file.unlink(missing_ok=True)

    def _end_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            assert self._file is not None
            self._closed.append((self._file, self._last_in_file))

    def _start_file(self, seq: int) -> None:
        self._end_file()
        self._file = Path(f"{self.store_path}.journal-{seq:012d}")
        self._fd = os.open(self._file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        _sync_directory(self._file.parent)  # the new file's name is durable before a record in it


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not on every platform (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
