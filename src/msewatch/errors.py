"""Exceptions msewatch raises on purpose.

    MsewatchError
    ├── InputError (ValueError)      a file, column, option or value the user gave is unusable
    └── StoreError (RuntimeError)    the store cannot be opened or written
        └── StoreLockedError         another process holds the DuckDB file

Each message is one sentence naming what was expected and what was found; the CLI prints it on
one line of stderr and exits with status 2.
"""

from __future__ import annotations

__all__ = ["InputError", "MsewatchError", "StoreError", "StoreLockedError"]


class MsewatchError(Exception):
    """Base class of the errors msewatch raises deliberately."""


class InputError(MsewatchError, ValueError):
    """Input that cannot be used at all (as opposed to a single bad row, which is a reject)."""


class StoreError(MsewatchError, RuntimeError):
    """The embedded store cannot be opened or written."""


class StoreLockedError(StoreError):
    """Another process holds the write lock of the DuckDB file."""
