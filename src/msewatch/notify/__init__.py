"""Notifications: grouping and silences (`Dispatcher`), bodies (`payloads`), delivery (`senders`).

    dispatcher = Dispatcher(config.alerting, config.notifiers, silences=config.silences,
                            maintenance=config.maintenance)
    for delivery in dispatcher.tick(book.alerts.values(), now):
        ...  # each one a `Delivery`: sent or failed, attempts, HTTP status, error, body
"""

from msewatch.notify.dispatch import (
    GROUP_BY,
    Dispatcher,
    Group,
    SenderLike,
    group_labels,
    routes_to,
)
from msewatch.notify.payloads import (
    alertmanager_alerts,
    group_key,
    rfc3339,
    slack_payload,
    webhook_payload,
)
from msewatch.notify.senders import Backoff, Delivery, Sender, endpoint, send

__all__ = [
    "GROUP_BY",
    "Backoff",
    "Delivery",
    "Dispatcher",
    "Group",
    "Sender",
    "SenderLike",
    "alertmanager_alerts",
    "endpoint",
    "group_key",
    "group_labels",
    "rfc3339",
    "routes_to",
    "send",
    "slack_payload",
    "webhook_payload",
]
