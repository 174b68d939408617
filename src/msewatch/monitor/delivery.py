"""Notifications for one-shot evaluations (`msewatch alerts evaluate` from cron).

A long-running server keeps a `notify.Dispatcher` with Alertmanager's group timers. A cron run
lives for one evaluation, so it cannot wait `group_wait`: it notifies, grouped by model and
alert name, what changed since the group's last successful notification in the store's
`notifications` log (alerts that started firing, alerts that resolved), so a failed delivery is
retried by the next run and an identical re-run sends nothing; an unchanged firing group is sent
again once `repeat_interval` has passed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from msewatch.monitor.alerts import Alert
from msewatch.monitor.config import MonitorConfig, Silence
from msewatch.notify.dispatch import group_labels, routes_to
from msewatch.notify.payloads import alertmanager_alerts, group_key, slack_payload, webhook_payload
from msewatch.notify.senders import Delivery, Sender

__all__ = ["OneShotDispatcher", "one_shot_dispatcher"]


class OneShotDispatcher:
    def __init__(self, config: MonitorConfig, con: Any, *, sender: Any = None) -> None:
        self.config = config
        self.con = con
        self.sender = sender or Sender()
        self.silences: tuple[Silence, ...] = tuple(config.silences)

    def set_silences(self, silences: Iterable[Silence]) -> None:
        self.silences = tuple(silences)

    def _muted(self, alert: Alert, at: dt.datetime) -> bool:
        return any(s.mutes(alert.labels, at) for s in self.silences) or any(
            m.covers(alert.labels, at) for m in self.config.maintenance)

    def _last_sent(self, notifier: str, key: str) -> dt.datetime | None:
        row = self.con.execute(
            "SELECT max(\"at\") FROM notifications WHERE notifier = ? AND group_key = ? AND status = 'sent'",
            [notifier, key],
        ).fetchall()
        return row[0][0] if row else None

    def tick(self, alerts: Sequence[Alert], now: dt.datetime) -> list[Delivery]:
        alerting = self.config.alerting
        out: list[Delivery] = []
        visible = [a for a in alerts if a.state != "pending" and not self._muted(a, now)]
        for notifier in self.config.notifiers:
            routed = [a for a in visible if routes_to(notifier, a.labels)]
            if notifier.type == "alertmanager":
                # Alertmanager groups and repeats itself: push every firing alert and the
                # resolutions of this run
                send = [a for a in routed if a.state == "firing" or (a.state == "resolved" and a.ends_at == now)]
                if send:
                    out.append(self.sender.send(notifier, alertmanager_alerts(send, generator_url=alerting.external_url),
                                                group_key="", n_alerts=len(send), at=now))
                continue
            groups: dict[str, tuple[dict[str, str], list[Alert]]] = {}
            for a in routed:
                labels = group_labels(a.labels)
                groups.setdefault(group_key(labels), (labels, []))[1].append(a)
            for key, (labels, members) in sorted(groups.items()):
                # what changed since this group's last successful notification (a failed one is
                # retried by the next run; an identical re-run sends nothing)
                last = self._last_sent(notifier.name, key)
                changed = [a for a in members
                           if (a.state == "firing" and (last is None or (a.starts_at or now) > last))
                           or (a.state == "resolved" and last is not None and (a.ends_at or now) > last)]
                firing = [a for a in members if a.state == "firing"]
                repeat = firing and last is not None and (now - last).total_seconds() >= alerting.repeat_interval
                if not changed and not repeat:
                    continue
                body = firing + [a for a in changed if a.state == "resolved"]
                if notifier.type == "slack":
                    payload = slack_payload(body, group_labels=labels, external_url=alerting.external_url)
                else:
                    payload = webhook_payload(body, receiver=notifier.name, group_labels=labels,
                                              external_url=alerting.external_url, key=key)
                out.append(self.sender.send(notifier, payload, group_key=key, n_alerts=len(body), at=now))
        return out

    def close(self) -> None:
        if hasattr(self.sender, "close"):
            self.sender.close()


def one_shot_dispatcher(config: MonitorConfig, con: Any) -> OneShotDispatcher:
    return OneShotDispatcher(config, con)
