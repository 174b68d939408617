"""Notification bodies: Alertmanager's webhook (version 4), its v2 API, and Slack.

Pure functions of alerts and a few names, no network, so every body can be checked field by
field. Times are RFC 3339 in UTC (`2026-11-01T00:00:00Z`, fractional seconds only when there
are any, like Go's `time.RFC3339Nano`).

* `webhook_payload` is the body Alertmanager itself POSTs to a `webhook_config` receiver
  (version "4"), so any receiver written for Alertmanager understands msewatch directly. As in
  Alertmanager, a firing alert's `endsAt` is Go's zero time `0001-01-01T00:00:00Z`, and the
  group's `status` is "firing" when any alert in it fires.
* `alertmanager_alerts` is the body of `POST /api/v2/alerts`. A firing alert carries no
  `endsAt`: Alertmanager then resolves it by itself `resolve_timeout` (default 5m) after the
  last push, and the dispatcher pushes every evaluation (every 30s by default), so a firing
  alert stays firing as long as msewatch runs and resolves within `resolve_timeout` if msewatch
  stops. (An `endsAt` "a little in the future", as Prometheus sends, would tie the alert to
  msewatch's clock, which the dispatcher lets tests simulate.) A resolved alert carries
  `endsAt` = the time it resolved, which makes Alertmanager mark it resolved at once.
* `slack_payload` is an incoming-webhook body: a plain `text` (what notifications and clients
  without blocks show) and `blocks` that read well on a phone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from msewatch.monitor.alerts import Alert

__all__ = [
    "GO_ZERO_TIME",
    "alertmanager_alerts",
    "common_items",
    "group_key",
    "group_status",
    "rfc3339",
    "slack_payload",
    "webhook_alert",
    "webhook_payload",
]

GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # what Alertmanager sends as endsAt of a firing alert
SLACK_MAX_ALERTS = 10  # alerts listed one by one in a Slack message; the rest are counted
_SLACK_TEXT_MAX = 2900  # a section's text may hold 3000 characters


def rfc3339(t: dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`; fractional seconds only when non-zero (naive means UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    t = t.astimezone(dt.UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _go_quote(value: str) -> str:
    """A string quoted the way Go's %q does for the characters label values usually hold."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def group_key(group_labels: Mapping[str, str], route: str = "{}") -> str:
    """Alertmanager's group key: `{route}:{label="value", ...}` with the labels sorted."""
    inner = ", ".join(f"{k}={_go_quote(group_labels[k])}" for k in sorted(group_labels))
    return f"{route}:{{{inner}}}"


def group_status(alerts: Iterable[Alert]) -> str:
    """"firing" when any alert fires, else "resolved"."""
    return "firing" if any(a.state == "firing" for a in alerts) else "resolved"


def common_items(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every map holds with the same value (Alertmanager's commonLabels)."""
    if not maps:
        return {}
    first, rest = maps[0], maps[1:]
    return {k: v for k, v in sorted(first.items()) if all(m.get(k) == v for m in rest)}


def _starts(alert: Alert) -> dt.datetime:
    return alert.starts_at or alert.active_since


def _status(alert: Alert) -> str:
    return "resolved" if alert.state == "resolved" else "firing"


def webhook_alert(alert: Alert, generator_url: str = "") -> dict[str, Any]:
    """One element of the webhook's `alerts`."""
    resolved = alert.state == "resolved"
    ends = (alert.ends_at or alert.updated_at) if resolved else None
    return {
        "status": _status(alert),
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(_starts(alert)),
        "endsAt": rfc3339(ends) if ends is not None else GO_ZERO_TIME,
        "generatorURL": generator_url,
        "fingerprint": alert.fingerprint,
    }


def webhook_payload(
    alerts: Sequence[Alert],
    *,
    receiver: str,
    group_labels: Mapping[str, str],
    external_url: str = "",
    key: str | None = None,
) -> dict[str, Any]:
    """Alertmanager's webhook body (version "4") for one group of alerts.

    `key` defaults to `group_key(group_labels)`; every alert's generatorURL is `external_url`
    (the msewatch server: there is no page per alert).
    """
    ordered = sorted(alerts, key=lambda a: (a.state != "firing", sorted(a.labels.items())))
    return {  # the fields in the order Alertmanager writes them
        "receiver": receiver,
        "status": group_status(ordered),
        "alerts": [webhook_alert(a, external_url) for a in ordered],
        "groupLabels": dict(sorted(group_labels.items())),
        "commonLabels": common_items([a.labels for a in ordered]),
        "commonAnnotations": common_items([a.annotations for a in ordered]),
        "externalURL": external_url,
        "version": "4",
        "groupKey": key if key is not None else group_key(group_labels),
        "truncatedAlerts": 0,
    }


def alertmanager_alerts(alerts: Iterable[Alert], *, generator_url: str = "") -> list[dict[str, Any]]:
    """The body of Alertmanager's `POST /api/v2/alerts` (pending alerts are left out).

    Firing alerts carry no endsAt (Alertmanager applies `resolve_timeout`); resolved ones carry
    the time they resolved.
    """
    body = []
    for alert in alerts:
        if alert.state not in ("firing", "resolved"):
            continue
        item: dict[str, Any] = {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": rfc3339(_starts(alert)),
        }
        if alert.state == "resolved":
            ends = alert.ends_at or alert.updated_at or _starts(alert)
            item["endsAt"] = rfc3339(max(ends, _starts(alert)))
        if generator_url:
            item["generatorURL"] = generator_url
        body.append(item)
    return body


def _runbook(annotations: Mapping[str, str]) -> str:
    """A runbook URL when there is one, else the runbook's text."""
    return annotations.get("runbook_url") or annotations.get("runbook") or ""


def _summary(annotations: Mapping[str, str]) -> str:
    return annotations.get("summary") or annotations.get("description") or ""


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_alert_lines(alert: Alert) -> list[str]:
    labels, ann = alert.labels, alert.annotations
    icon = ":white_check_mark:" if alert.state == "resolved" else ":rotating_light:"
    head = f"{icon} *{_slack_escape(alert.name or 'alert')}*"
    facts = [f"model `{_slack_escape(labels['model'])}`"] if labels.get("model") else []
    if labels.get("severity"):
        facts.append(f"severity *{_slack_escape(labels['severity'])}*")
    extra = {k: v for k, v in labels.items() if k not in ("alertname", "model", "severity")}
    if extra:
        facts.append(", ".join(f"{k}={_slack_escape(v)}" for k, v in sorted(extra.items())))
    lines = [head + (" · " + " · ".join(facts) if facts else "")]
    if _summary(ann):
        lines.append(_slack_escape(_summary(ann)))
    runbook = _runbook(ann)
    if runbook.startswith(("http://", "https://")):
        lines.append(f"Runbook: <{runbook}|open>")
    elif runbook:
        lines.append(f"Runbook: {_slack_escape(runbook)}")
    lines.append(f"Since {rfc3339(_starts(alert))}" + (
        f", resolved {rfc3339(alert.ends_at)}" if alert.state == "resolved" and alert.ends_at else ""))
    return lines


def slack_payload(
    alerts: Sequence[Alert],
    *,
    group_labels: Mapping[str, str],
    external_url: str = "",
) -> dict[str, Any]:
    """A Slack incoming-webhook body for one group: `text` plus `blocks`.

    The header reads like `[FIRING:2] delta_mse · model price`; each alert (at most
    `SLACK_MAX_ALERTS`, the rest counted) shows its name, model, severity, summary and runbook.
    """
    ordered = sorted(alerts, key=lambda a: (a.state != "firing", sorted(a.labels.items())))
    status = group_status(ordered)
    n_firing = sum(a.state == "firing" for a in ordered)
    name = group_labels.get("alertname") or common_items([a.labels for a in ordered]).get("alertname", "")
    model = group_labels.get("model") or common_items([a.labels for a in ordered]).get("model", "")
    count = n_firing if status == "firing" else len(ordered)
    title = f"[{status.upper()}:{count}] {name or 'alerts'}" + (f" · model {model}" if model else "")
    shown, hidden = ordered[:SLACK_MAX_ALERTS], len(ordered) - SLACK_MAX_ALERTS
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    text_lines = [title]
    for alert in shown:
        lines = _slack_alert_lines(alert)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:_SLACK_TEXT_MAX]}})
        text_lines.extend(lines)
    if hidden > 0:
        more = f"… and {hidden} more"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": more}]})
        text_lines.append(more)
    if external_url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{external_url}|msewatch>"}]})
    return {"text": "\n".join(text_lines), "blocks": blocks}
