"""Alerts and their lifecycle: pending → firing → resolved, identified by a fingerprint.

Rules report `Finding`s: conditions that hold right now. `AlertBook.update` turns the findings of
one evaluation into alert states the way Prometheus does: a condition becomes a pending alert,
fires once it has held for the rule's `for` duration, and resolves when it stops holding (a
pending alert that stops holding is dropped without a sound). The same labels always give the
same fingerprint, so an alert is one alert across evaluations, restarts and notifiers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Alert", "AlertBook", "Finding", "fingerprint"]

RESOLVED_RETENTION = dt.timedelta(days=1)


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit identity of a label set (order does not matter)."""
    text = "\x00".join(f"{k}\x01{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Finding:
    """A condition a rule found true at one evaluation."""

    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float | None
    for_seconds: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: str  # "pending" | "firing" | "resolved"
    active_since: dt.datetime  # when the condition started to hold
    value: float | None = None
    starts_at: dt.datetime | None = None  # when it started firing
    ends_at: dt.datetime | None = None  # when it resolved
    updated_at: dt.datetime | None = None
    for_seconds: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    def to_dict(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")

        return {
            "fingerprint": self.fingerprint,
            "state": self.state,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "value": self.value,
            "active_since": iso(self.active_since),
            "starts_at": iso(self.starts_at),
            "ends_at": iso(self.ends_at),
        }


@dataclass
class AlertBook:
    """Every alert not yet forgotten, by fingerprint; `update` applies one evaluation."""

    alerts: dict[str, Alert] = field(default_factory=dict)

    def update(self, findings: Iterable[Finding], now: dt.datetime) -> list[Alert]:
        """Apply the findings of an evaluation at `now`; return the alerts whose state changed."""
        changed: list[Alert] = []
        seen: set[str] = set()
        for f in findings:
            fp = f.fingerprint
            if fp in seen:
                continue
            seen.add(fp)
            old = self.alerts.get(fp)
            if old is None or old.state == "resolved":
                new = Alert(f.labels, f.annotations, "pending", now, f.value, updated_at=now, for_seconds=f.for_seconds)
            else:
                new = replace(old, annotations=f.annotations, value=f.value, updated_at=now, for_seconds=f.for_seconds)
            if new.state == "pending" and (now - new.active_since).total_seconds() >= f.for_seconds:
                new = replace(new, state="firing", starts_at=now)
            if old is None or old.state != new.state:
                changed.append(new)
            self.alerts[fp] = new
        for fp, old in list(self.alerts.items()):
            if fp in seen:
                continue
            if old.state == "pending":
                del self.alerts[fp]
            elif old.state == "firing":
                new = replace(old, state="resolved", ends_at=now, updated_at=now)
                self.alerts[fp] = new
                changed.append(new)
            elif old.ends_at is not None and now - old.ends_at > RESOLVED_RETENTION:
                del self.alerts[fp]
        return changed

    def active(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state != "resolved"]

    def firing(self) -> list[Alert]:
        return [a for a in self.alerts.values() if a.state == "firing"]
