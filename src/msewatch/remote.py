"""Queries to a running `msewatch serve`, for commands given `--server URL`.

While a server runs it owns its store file (DuckDB allows one writing process), so the CLI
asks the server instead of opening the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from msewatch.errors import MsewatchError

__all__ = ["RemoteError", "get_json"]


class RemoteError(MsewatchError):
    """The server could not be reached or refused the query."""


def get_json(
    server: str, path: str, params: Mapping[str, str | None], *, token: str | None = None, timeout: float = 300.0
) -> Any:
    """GET `path` on `server` with the non-empty `params`; the decoded JSON answer."""
    token = token or os.environ.get("MSEWATCH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = server.rstrip("/") + path
    query = {k: v for k, v in params.items() if v not in (None, "")}
    try:
        response = httpx.get(url, params=query, headers=headers, timeout=timeout)
    except httpx.InvalidURL as exc:
        raise RemoteError(f"{server}: not a valid server URL ({exc}).") from exc
    except httpx.UnsupportedProtocol:
        raise RemoteError(f"{server}: the server URL must start with http:// or https://.") from None
    except httpx.TransportError as exc:
        raise RemoteError(f"cannot reach {server} ({type(exc).__name__}: {exc}); is `msewatch serve` running?") from exc
    if response.status_code != 200:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text[:200]
        hint = " (set MSEWATCH_TOKEN or --token)" if response.status_code in (401, 403) else ""
        raise RemoteError(f"{server} answered {response.status_code}: {message}{hint}")
    return orjson.loads(response.content)
