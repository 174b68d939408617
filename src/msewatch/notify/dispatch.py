"""Which alerts are notified where and when: grouping, silences, maintenance, Alertmanager.

`Dispatcher.tick(alerts, now)` is called after every evaluation with the current alerts (all
of an `AlertBook`: pending, firing, and resolved ones it still remembers) and the time. It
keeps no threads and never sleeps itself (a `Sender` may sleep between retries), so time can
be simulated: every decision depends on `now` alone.

Webhook and Slack notifiers get Alertmanager's semantics, per notifier:

* An alert reaches a notifier when every one of the notifier's `matchers` equals its label.
* Alerts are grouped by (model, alertname). A group is born with its first firing alert and
  first flushed `group_wait` after; then it is flushed every `group_interval`.
* At a flush the group is notified (one body with all its alerts) when it has a firing alert
  not notified before, when an alert resolved since the last notification, or when nothing
  changed but `repeat_interval` has passed since the last notification while alerts fire.
  Resolved alerts are sent once, then leave the group; a group with no alert left is
  forgotten, and the next firing alert starts a new one (with a new `group_wait`).
* Pending alerts are never notified. A resolved alert joins no group: only an alert a group
  holds can resolve in it (an alert that fired and resolved between two flushes before being
  notified is never notified). A firing alert that disappears from `alerts`, or shows up
  pending again, resolved since the last tick and is treated so.
* An alert muted by an active silence, or covered by a maintenance window, at `now` is left
  out of every body (like Alertmanager's silences: it stays in its group, so the end of a
  silence does not look like a new alert, and it is never announced as resolved by the
  silence). A failed delivery leaves the group as it was: the next flush retries.

An `alertmanager` notifier is not grouped here (Alertmanager groups, waits and repeats): every
tick pushes all firing, unmuted alerts that reach it to `{url}/api/v2/alerts` without an
`endsAt` (Alertmanager resolves them `resolve_timeout` after the last push), and an alert
pushed firing that has resolved since is pushed once with its `endsAt`. An alert muted here
after it was pushed is no longer pushed, so Alertmanager resolves it after its
`resolve_timeout`: silences meant for Alertmanager's receivers belong in Alertmanager.

Every delivery is returned by `tick` and kept in a bounded log (`Dispatcher.log`).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from msewatch.monitor.alerts import Alert
from msewatch.monitor.config import AlertingConfig, Maintenance, Notifier, Silence
from msewatch.notify.payloads import alertmanager_alerts, group_key, slack_payload, webhook_payload
from msewatch.notify.senders import Delivery, Sender

__all__ = ["GROUP_BY", "Dispatcher", "Group", "SenderLike", "group_labels", "routes_to"]

GROUP_BY = ("model", "alertname")
LOG_SIZE = 1000


class SenderLike(Protocol):
    def send(
        self,
        notifier: Notifier,
        payload: Any,
        *,
        group_key: str = "",
        n_alerts: int | None = None,
        at: dt.datetime | None = None,
    ) -> Delivery: ...


def group_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a group is keyed by (those of `GROUP_BY` the alert has)."""
    return {k: labels[k] for k in GROUP_BY if k in labels}


def routes_to(notifier: Notifier, labels: Mapping[str, str]) -> bool:
    """Whether every matcher of the notifier equals the alert's label."""
    return all(labels.get(k) == v for k, v in notifier.matchers.items())


@dataclass
class Group:
    """A group of one notifier: its alerts by fingerprint and when it notified."""

    notifier: str
    key: str
    labels: dict[str, str]
    created: dt.datetime
    next_flush: dt.datetime
    alerts: dict[str, Alert] = field(default_factory=dict)
    last_sent: dt.datetime | None = None
    sent_firing: frozenset[str] = frozenset()
    sent_resolved: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        def iso(t: dt.datetime | None) -> str | None:
            return None if t is None else t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")

        return {
            "notifier": self.notifier,
            "group_key": self.key,
            "labels": dict(self.labels),
            "alerts": sorted(self.alerts),
            "created": iso(self.created),
            "next_flush": iso(self.next_flush),
            "last_sent": iso(self.last_sent),
        }


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


class Dispatcher:
    """Turns alert states into notifications, tick by tick (see the module's docstring).

    `sender` defaults to a `Sender` with its own HTTP client (closed by `close()`).
    """

    def __init__(
        self,
        config: AlertingConfig,
        notifiers: Sequence[Notifier],
        *,
        silences: Iterable[Silence] = (),
        maintenance: Iterable[Maintenance] = (),
        sender: SenderLike | None = None,
        log_size: int = LOG_SIZE,
    ) -> None:
        self.config = config
        self.notifiers = tuple(notifiers)
        self.silences: tuple[Silence, ...] = tuple(silences)
        self.maintenance: tuple[Maintenance, ...] = tuple(maintenance)
        self._own_sender = sender is None
        self.sender: SenderLike = sender if sender is not None else Sender()
        self._groups: dict[str, dict[str, Group]] = {n.name: {} for n in self.notifiers}
        self._pushed: dict[str, dict[str, Alert]] = {n.name: {} for n in self.notifiers}
        self._log: deque[Delivery] = deque(maxlen=log_size)

    # -- run-time changes -----------------------------------------------------------------------
    def set_silences(self, silences: Iterable[Silence]) -> None:
        """Replace the silences (those of the config and those added through the CLI or API)."""
        self.silences = tuple(silences)

    def set_maintenance(self, maintenance: Iterable[Maintenance]) -> None:
        self.maintenance = tuple(maintenance)

    def muted(self, labels: Mapping[str, str], at: dt.datetime) -> bool:
        """Whether an active silence mutes, or a maintenance window covers, the labels at `at`."""
        at = _utc(at)
        return any(s.mutes(labels, at) for s in self.silences) or any(m.covers(labels, at) for m in self.maintenance)

    # -- inspection -------------------------------------------------------------------------------
    @property
    def log(self) -> list[Delivery]:
        """The latest deliveries, oldest first."""
        return list(self._log)

    def groups(self, notifier: str | None = None) -> list[Group]:
        return [g for name, groups in self._groups.items() if notifier in (None, name)
                for _, g in sorted(groups.items())]

    def close(self) -> None:
        if self._own_sender and isinstance(self.sender, Sender):
            self.sender.close()

    # -- the tick ---------------------------------------------------------------------------------
    def tick(self, alerts: Iterable[Alert], now: dt.datetime) -> list[Delivery]:
        """Apply the current alerts at `now`; send what is due; return the deliveries made."""
        now = _utc(now)
        current: dict[str, Alert] = {}
        for alert in alerts:
            current[alert.fingerprint] = alert
        muted = {fp for fp, a in current.items() if self.muted(a.labels, now)}
        deliveries: list[Delivery] = []
        for notifier in self.notifiers:
            routed = {fp: a for fp, a in current.items() if routes_to(notifier, a.labels)}
            if notifier.type == "alertmanager":
                deliveries.extend(self._push(notifier, routed, muted, now))
            else:
                deliveries.extend(self._flush_groups(notifier, routed, muted, now))
        self._log.extend(deliveries)
        return deliveries

    def _flush_groups(self, notifier: Notifier, routed: dict[str, Alert], muted: set[str],
                      now: dt.datetime) -> list[Delivery]:
        groups = self._groups[notifier.name]
        cfg = self.config
        # the alerts groups hold: newer states; gone or pending again means resolved
        members: set[str] = set()
        for g in groups.values():
            for fp, old in list(g.alerts.items()):
                members.add(fp)
                g.alerts[fp] = _follow(old, routed.get(fp), now)
        # new firing alerts join (or start) their group
        for fp, alert in routed.items():
            if alert.state != "firing" or fp in members:
                continue
            labels = group_labels(alert.labels)
            key = group_key(labels)
            g = groups.get(key)
            if g is None:
                g = groups[key] = Group(notifier.name, key, labels, now, now + dt.timedelta(seconds=cfg.group_wait))
            g.alerts[fp] = alert
        deliveries = []
        for key in sorted(groups):
            g = groups[key]
            if now < g.next_flush:
                continue
            g.next_flush = now + dt.timedelta(seconds=cfg.group_interval)
            shown = {fp: a for fp, a in g.alerts.items() if fp not in muted}
            firing = frozenset(fp for fp, a in shown.items() if a.state == "firing")
            resolved = frozenset(shown) - firing
            ok = True
            if shown and self._needs_update(g, firing, resolved, now):
                delivery = self._send_group(notifier, g, list(shown.values()), now)
                deliveries.append(delivery)
                ok = delivery.ok
                if ok:
                    g.last_sent, g.sent_firing, g.sent_resolved = now, firing, resolved
            if ok:  # resolved alerts were told (or need not be): they leave the group
                for fp in [fp for fp, a in g.alerts.items() if a.state == "resolved"]:
                    del g.alerts[fp]
                if not g.alerts:
                    del groups[key]
        return deliveries

    def _needs_update(self, g: Group, firing: frozenset[str], resolved: frozenset[str], now: dt.datetime) -> bool:
        # Alertmanager's DedupStage.needsUpdate, with send_resolved
        if g.last_sent is None:
            return bool(firing)
        if not firing <= g.sent_firing:
            return True
        if not firing:
            return bool(g.sent_firing)
        if not resolved <= g.sent_resolved:
            return True
        return now - g.last_sent >= dt.timedelta(seconds=self.config.repeat_interval)

    def _send_group(self, notifier: Notifier, g: Group, alerts: list[Alert], now: dt.datetime) -> Delivery:
        url = self.config.external_url
        if notifier.type == "slack":
            payload = slack_payload(alerts, group_labels=g.labels, external_url=url)
        else:
            payload = webhook_payload(alerts, receiver=notifier.name, group_labels=g.labels, external_url=url,
                                      key=g.key)
        return self.sender.send(notifier, payload, group_key=g.key, n_alerts=len(alerts), at=now)

    def _push(self, notifier: Notifier, routed: dict[str, Alert], muted: set[str], now: dt.datetime) -> list[Delivery]:
        pushed = self._pushed[notifier.name]
        firing = {fp: a for fp, a in routed.items() if a.state == "firing" and fp not in muted}
        resolved: dict[str, Alert] = {}
        for fp, old in pushed.items():
            if fp in firing:
                continue
            new = _follow(old, routed.get(fp), now)
            if new.state == "resolved":
                resolved[fp] = new
        body = alertmanager_alerts([*firing.values(), *resolved.values()], generator_url=self.config.external_url)
        if not body:
            return []
        delivery = self.sender.send(notifier, body, group_key="", n_alerts=len(body), at=now)
        if delivery.ok:
            for fp in resolved:
                del pushed[fp]
            pushed.update(firing)
        return [delivery]


def _follow(old: Alert, new: Alert | None, now: dt.datetime) -> Alert:
    """The state of an alert a group holds, given what the tick says of it."""
    if new is not None and new.state in ("firing", "resolved"):
        return new
    if old.state == "resolved":
        return old
    # gone from the alerts, or pending again: it resolved since the last tick
    ends = new.active_since if new is not None else now
    return replace(old, state="resolved", ends_at=ends, updated_at=now)
