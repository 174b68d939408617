"""Delivering one notification over HTTP, with retries, and the record of how it went.

`send` POSTs a JSON body to a notifier and returns a `Delivery`; it never raises for a failed
delivery. A connection error, a timeout, a 5xx or a 429 is retried `notifier.retries` times
with exponential backoff and jitter (a `Retry-After` header is honoured, up to the cap);
any other 4xx is the receiver refusing the body and is not retried. The sleep between attempts
is injectable, so tests run the retries without waiting.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

import httpx

from msewatch import __version__
from msewatch.monitor.config import Notifier

__all__ = ["Backoff", "Delivery", "Sender", "endpoint", "send"]

USER_AGENT = f"msewatch/{__version__}"
_ERROR_BODY_MAX = 200  # characters of a refusing receiver's body kept in the error text


@dataclass(frozen=True)
class Delivery:
    """One notification and its fate.

    `payload` is the body as sent (a dict; for an `alertmanager` notifier the list of alerts);
    `group_key` is the group's key (empty for `alertmanager` notifiers, which push every alert
    at once); `attempts` counts HTTP requests made; `http_status` is the last response's status
    (None when no response came); `error` says why a failed delivery failed.
    """

    at: dt.datetime
    notifier: str
    group_key: str
    status: str  # "sent" | "failed"
    attempts: int
    http_status: int | None
    error: str | None
    n_alerts: int
    payload: Any

    @property
    def ok(self) -> bool:
        return self.status == "sent"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        return out


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: `base · factor^(retry-1)`, at most `cap` seconds.

    `jitter` is the random fraction of each wait (0.5: between half and all of it), so
    receivers that come back are not hit by every sender at once. `cap` also bounds a
    receiver's `Retry-After`.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        full = min(self.cap, self.base * self.factor ** max(0, retry - 1))
        return full * (1.0 - self.jitter) + full * self.jitter * rng()


DEFAULT_BACKOFF = Backoff()


def endpoint(notifier: Notifier) -> str:
    """Where a notifier's body is POSTed: an Alertmanager's `/api/v2/alerts`, else its URL."""
    if notifier.type == "alertmanager":
        return notifier.url.rstrip("/") + "/api/v2/alerts"
    return notifier.url


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def _count(payload: Any) -> int:
    if isinstance(payload, list):
        return len(payload)
    if isinstance(payload, Mapping) and isinstance(payload.get("alerts"), list):
        return len(payload["alerts"])
    return 0


def _body_excerpt(response: httpx.Response) -> str:
    text = response.content.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _ERROR_BODY_MAX else text[:_ERROR_BODY_MAX] + "…"


def send(
    notifier: Notifier,
    payload: Any,
    *,
    client: httpx.Client,
    group_key: str = "",
    n_alerts: int | None = None,
    at: dt.datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
    backoff: Backoff = DEFAULT_BACKOFF,
    rng: Callable[[], float] = random.random,
) -> Delivery:
    """POST `payload` as JSON to the notifier, retrying; never raises for a failed delivery.

    Each request has `notifier.timeout` seconds and carries `notifier.headers`. At most
    `1 + notifier.retries` requests are made; between them `sleep(seconds)` is called with the
    backoff (or the receiver's Retry-After, up to `backoff.cap`).
    """
    at = at or dt.datetime.now(dt.UTC)
    n = _count(payload) if n_alerts is None else n_alerts
    url = endpoint(notifier)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **dict(notifier.headers)}

    def result(status: str, attempts: int, http_status: int | None, error: str | None) -> Delivery:
        return Delivery(at, notifier.name, group_key, status, attempts, http_status, error, n, payload)

    try:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        return result("failed", 0, None, f"the body is not JSON: {exc}")

    max_attempts = 1 + max(0, notifier.retries)
    http_status: int | None = None
    error = ""
    for attempt in range(1, max_attempts + 1):
        wait: float | None = None
        try:
            response = client.post(url, content=body, headers=headers, timeout=notifier.timeout)
        except httpx.TimeoutException as exc:
            http_status, error = None, f"timed out after {notifier.timeout:g}s ({type(exc).__name__})"
        except httpx.UnsupportedProtocol as exc:  # no attempt can succeed
            return result("failed", attempt, None, f"{type(exc).__name__}: {exc}")
        except httpx.TransportError as exc:
            http_status, error = None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            return result("failed", attempt, None, f"{type(exc).__name__}: {exc}")
        else:
            http_status = response.status_code
            if 200 <= http_status < 300:
                return result("sent", attempt, http_status, None)
            excerpt = _body_excerpt(response)
            error = f"HTTP {http_status} {response.reason_phrase}".rstrip() + (f": {excerpt}" if excerpt else "")
            if not (http_status >= 500 or http_status == 429):
                return result("failed", attempt, http_status, error)
            wait = _retry_after(response.headers.get("Retry-After"), time.time())
        if attempt == max_attempts:
            break
        delay = backoff.delay(attempt, rng) if wait is None else min(wait, backoff.cap)
        sleep(delay)
    return result("failed", max_attempts, http_status, f"{error} (after {max_attempts} attempts)")


class Sender:
    """`send` with one HTTP client, a sleep and a backoff: what a `Dispatcher` delivers through.

    Without a client it makes (and `close()` closes) its own.
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._own = client is None
        self.client = client if client is not None else httpx.Client(follow_redirects=False)
        self.sleep = sleep
        self.backoff = backoff
        self.rng = rng

    def send(
        self,
        notifier: Notifier,
        payload: Any,
        *,
        group_key: str = "",
        n_alerts: int | None = None,
        at: dt.datetime | None = None,
    ) -> Delivery:
        return send(notifier, payload, client=self.client, group_key=group_key, n_alerts=n_alerts, at=at,
                    sleep=self.sleep, backoff=self.backoff, rng=self.rng)

    def close(self) -> None:
        if self._own:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
