"""Notifications: grouping in simulated time, bodies, retries against a real HTTP receiver, and
a real Alertmanager.

- The grouping tests drive a `Dispatcher` tick by tick in simulated time with a recording
  sender: nothing sleeps, four hours pass in a loop.
- A local receiver (`http.server` in a thread, on a free loopback port) answers as scripted
  (500 twice then 200, 400, 429 with Retry-After, slow) and records every body; the sender's
  sleep between attempts is recorded instead of slept.
- A real Alertmanager (the Debian package's binary, on a free port with its own storage and no
  cluster) receives our pushes; its API shows our alerts and groups, and its own webhook
  reaches the local receiver, first firing then resolved.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from servers import free_port, require_binary, stop_process

from msewatch.monitor.alerts import Alert, fingerprint
from msewatch.monitor.config import AlertingConfig, Maintenance, Notifier, Silence
from msewatch.notify import (
    Backoff,
    Delivery,
    Dispatcher,
    Sender,
    alertmanager_alerts,
    group_key,
    rfc3339,
    send,
    slack_payload,
    webhook_payload,
)

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
CFG = AlertingConfig(group_wait=30, group_interval=300, repeat_interval=4 * 3600,
                     external_url="http://msewatch.example:8000")
SECOND = dt.timedelta(seconds=1)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def alert(name: str = "delta_mse", model: str = "price", state: str = "firing", since: float = 0,
          ends: float | None = None, **labels: str) -> Alert:
    labels = {"alertname": name, "model": model, "severity": "page", **labels}
    annotations = {"summary": f"MSE of {model} rose 40%", "runbook_url": f"https://runbooks.example/{name}"}
    return Alert(labels, annotations, state, at(since), 1.4,
                 starts_at=at(since) if state != "pending" else None,
                 ends_at=None if ends is None else at(ends), updated_at=at(since))


def resolved(a: Alert, when: float) -> Alert:
    return replace(a, state="resolved", ends_at=at(when), updated_at=at(when))


@dataclass
class Recorder:
    """A sender that records what it is given; `fail` scripted failures come first."""

    sent: list[tuple[str, Any, dt.datetime | None]] = field(default_factory=list)
    fail: int = 0

    def send(self, notifier: Notifier, payload: Any, *, group_key: str = "", n_alerts: int | None = None,
             at: dt.datetime | None = None) -> Delivery:
        self.sent.append((notifier.name, payload, at))
        assert at is not None
        if self.fail > 0:
            self.fail -= 1
            return Delivery(at, notifier.name, group_key, "failed", 1, 503, "HTTP 503", n_alerts or 0, payload)
        return Delivery(at, notifier.name, group_key, "sent", 1, 200, None, n_alerts or 0, payload)


def hook(name: str = "oncall", **kw: Any) -> Notifier:
    return Notifier(name, "webhook", "http://127.0.0.1:9/hook", **kw)


def run(d: Dispatcher, alerts_at: Callable[[float], list[Alert]], until: float, step: float = 30.0
        ) -> list[tuple[float, Delivery]]:
    """Tick every `step` simulated seconds from 0 to `until`; the deliveries with their times."""
    out = []
    t = 0.0
    while t <= until:
        out.extend((t, x) for x in d.tick(alerts_at(t), at(t)))
        t += step
    return out


# -- bodies ----------------------------------------------------------------------------------------
def test_rfc3339_and_group_key() -> None:
    assert rfc3339(dt.datetime(2026, 11, 1, 12, 0, 5, tzinfo=dt.UTC)) == "2026-11-01T12:00:05Z"
    assert rfc3339(dt.datetime(2026, 11, 1, 12, 0, 5, 250000)) == "2026-11-01T12:00:05.25Z"
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert rfc3339(dt.datetime(2026, 11, 1, 14, 0, tzinfo=plus2)) == "2026-11-01T12:00:00Z"
    assert group_key({"model": "price", "alertname": "delta_mse"}) == '{}:{alertname="delta_mse", model="price"}'
    assert group_key({"model": 'a"b\\c'}) == r'{}:{model="a\"b\\c"}'


def test_webhook_payload_fields() -> None:
    a = alert(cohort="eu")
    b = resolved(alert(cohort="us", since=10), 100)
    body = webhook_payload([b, a], receiver="oncall", group_labels={"model": "price", "alertname": "delta_mse"},
                           external_url=CFG.external_url)
    assert list(body) == ["receiver", "status", "alerts", "groupLabels", "commonLabels", "commonAnnotations",
                          "externalURL", "version", "groupKey", "truncatedAlerts"]
    assert body["version"] == "4" and body["truncatedAlerts"] == 0 and body["status"] == "firing"
    assert body["groupKey"] == '{}:{alertname="delta_mse", model="price"}'
    assert body["groupLabels"] == {"alertname": "delta_mse", "model": "price"}
    assert body["commonLabels"] == {"alertname": "delta_mse", "model": "price", "severity": "page"}
    assert body["commonAnnotations"] == dict(a.annotations)
    first, second = body["alerts"]  # firing first
    assert first == {"status": "firing", "labels": dict(a.labels), "annotations": dict(a.annotations),
                     "startsAt": "2026-11-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                     "generatorURL": CFG.external_url, "fingerprint": a.fingerprint}
    assert second["status"] == "resolved" and second["endsAt"] == "2026-11-01T12:01:40Z"
    assert second["startsAt"] == "2026-11-01T12:00:10Z" and second["fingerprint"] == fingerprint(b.labels)
    only_resolved = webhook_payload([b], receiver="r", group_labels={})
    assert only_resolved["status"] == "resolved" and only_resolved["groupKey"] == "{}:{}"


def test_alertmanager_body() -> None:
    a, p = alert(), alert("label_coverage", state="pending")
    r = resolved(alert(model="demand"), 60)
    body = alertmanager_alerts([a, p, r], generator_url="http://x")
    assert body == [
        {"labels": dict(a.labels), "annotations": dict(a.annotations), "startsAt": "2026-11-01T12:00:00Z",
         "generatorURL": "http://x"},  # firing: no endsAt, Alertmanager applies resolve_timeout
        {"labels": dict(r.labels), "annotations": dict(r.annotations), "startsAt": "2026-11-01T12:00:00Z",
         "endsAt": "2026-11-01T12:01:00Z", "generatorURL": "http://x"},
    ]


def test_slack_body_reads_on_a_phone() -> None:
    body = slack_payload([alert()], group_labels={"model": "price", "alertname": "delta_mse"},
                         external_url=CFG.external_url)
    assert body["text"].startswith("[FIRING:1] delta_mse · model price")
    for needle in ("delta_mse", "price", "page", "MSE of price rose 40%", "https://runbooks.example/delta_mse"):
        assert needle in body["text"]
        assert any(needle in json.dumps(b) for b in body["blocks"][1:])
    assert body["blocks"][0]["type"] == "header"
    many = slack_payload([alert(cohort=str(i)) for i in range(25)], group_labels={})
    assert len(many["blocks"]) < 50 and "and 15 more" in many["text"]
    text_runbook = replace(alert(), annotations={"summary": "s", "runbook": "Check the label pipeline first."})
    plain = slack_payload([text_runbook], group_labels={})
    assert "Runbook: Check the label pipeline first." in plain["text"]
    done = slack_payload([resolved(alert(), 60)], group_labels={"model": "price", "alertname": "delta_mse"})
    assert done["text"].startswith("[RESOLVED:1]")


# -- grouping in simulated time --------------------------------------------------------------------
def test_group_wait_group_interval_repeat_interval() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook()], sender=rec)
    a, b = alert(cohort="eu"), alert(cohort="us", since=60)

    def alerts_at(t: float) -> list[Alert]:
        return [a] + ([b] if t >= 60 else [])

    got = run(d, alerts_at, until=4 * 3600 + 400)
    times = [t for t, _ in got]
    # first flush after group_wait; B joins and waits for the next group_interval tick (30 + 300);
    # then nothing changes until repeat_interval after the last notification
    assert times == [30, 330, 330 + 4 * 3600]
    sizes = [x.n_alerts for _, x in got]
    assert sizes == [1, 2, 2]
    assert all(x.payload["status"] == "firing" and x.group_key == '{}:{alertname="delta_mse", model="price"}'
               for _, x in got)
    assert d.log == [x for _, x in got]


def test_resolved_sent_once_then_group_forgotten() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook()], sender=rec)
    a = alert()

    def alerts_at(t: float) -> list[Alert]:
        if t < 100:
            return [a]
        if t < 990:
            return [resolved(a, 100)]  # the AlertBook keeps resolved alerts around
        return [alert(since=990)]  # fires again: a new group, a new group_wait

    got = run(d, alerts_at, until=2000)
    assert [(t, x.payload["status"]) for t, x in got] == [(30, "firing"), (330, "resolved"), (1020, "firing")]
    assert got[1][1].payload["alerts"][0]["endsAt"] == rfc3339(at(100))
    assert [g.labels for g in d.groups()] == [{"model": "price", "alertname": "delta_mse"}]
    d.tick([resolved(alert(since=990), 2010)], at(2010))
    assert d.tick([resolved(alert(since=990), 2010)], at(2400))[0].payload["status"] == "resolved"
    assert d.groups() == []


def test_partial_resolve_and_vanished_alert() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook()], sender=rec)
    a, b = alert(cohort="eu"), alert(cohort="us")
    assert d.tick([a, b], at(0)) == []
    assert d.tick([a, b], at(30))[0].n_alerts == 2
    # b resolves: the next flush tells (both alerts, status firing); b then leaves the group
    x = d.tick([a, resolved(b, 100)], at(330))[0]
    assert x.payload["status"] == "firing"
    assert [al["status"] for al in x.payload["alerts"]] == ["firing", "resolved"]
    assert d.tick([a, resolved(b, 100)], at(630)) == []
    # a disappears (its rule was removed): it resolved, and is said so once
    y = d.tick([], at(930))[0]
    assert y.payload["status"] == "resolved" and y.payload["alerts"][0]["endsAt"] == rfc3339(at(930))
    assert d.tick([], at(1230)) == [] and d.groups() == []


def test_pending_never_and_flapping_between_flushes_never() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook()], sender=rec)
    p = alert(state="pending")
    assert run(d, lambda t: [p], until=3600) == []
    # fired at 0, resolved at 20, before the first flush at 30: the receiver never knew
    a = alert()
    assert d.tick([a], at(0)) == [] and d.tick([resolved(a, 20)], at(30)) == []
    assert d.groups() == [] and rec.sent == []


def test_two_models_two_groups_and_resolved_alerts_start_none() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook()], sender=rec)
    got = d.tick([alert(model="price"), alert(model="demand"), resolved(alert(model="stock"), -5)], at(0))
    assert got == []
    got = d.tick([alert(model="price"), alert(model="demand")], at(30))
    assert sorted(x.group_key for x in got) == ['{}:{alertname="delta_mse", model="demand"}',
                                                  '{}:{alertname="delta_mse", model="price"}']
    assert {x.payload["groupLabels"]["model"] for x in got} == {"price", "demand"}
    assert all(x.n_alerts == 1 for x in got)


def test_matchers_route_to_notifiers() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [hook("all"), hook("price-pages", matchers={"model": "price", "severity": "page"})],
                   sender=rec)
    d.tick([alert(model="price"), alert(model="demand"), alert("tail_error", severity="ticket")], at(0))
    got = d.tick([alert(model="price"), alert(model="demand"), alert("tail_error", severity="ticket")], at(30))
    by = sorted((x.notifier, x.payload["groupLabels"]["model"], x.payload["groupLabels"]["alertname"]) for x in got)
    assert by == [("all", "demand", "delta_mse"), ("all", "price", "delta_mse"), ("all", "price", "tail_error"),
                  ("price-pages", "price", "delta_mse")]
    assert {x.payload["receiver"] for x in got} == {"all", "price-pages"}


def test_silences_mute_and_can_be_replaced_at_run_time() -> None:
    rec = Recorder()
    silence = Silence({"model": "price"}, at(0), at(3600), "known regression")
    d = Dispatcher(CFG, [hook()], silences=[silence], sender=rec)
    price, demand = alert(model="price"), alert(model="demand")
    got = run(d, lambda t: [price, demand], until=3500)
    assert [(t, x.payload["groupLabels"]["model"]) for t, x in got] == [(30, "demand")]
    # the silence ends at 3600: the price group's next flush (30 + 12·300) tells
    got = run(d, lambda t: [price, demand], until=3700)
    assert [(t, x.payload["groupLabels"]["model"]) for t, x in got if t >= 3600] == [(3630, "price")]
    # a silence added through the API mutes from the next tick on; removing it unmutes
    d2 = Dispatcher(CFG, [hook()], sender=Recorder())
    d2.tick([price], at(0))
    d2.set_silences([Silence({"alertname": "delta_mse"}, at(0), at(86400), created_by="api")])
    assert d2.tick([price], at(30)) == []
    d2.set_silences([])
    assert d2.tick([price], at(330))[0].n_alerts == 1
    # an alert that resolves while muted is not announced
    d3 = Dispatcher(CFG, [hook()], sender=Recorder())
    d3.tick([price], at(0))
    assert len(d3.tick([price], at(30))) == 1
    d3.set_silences([silence])
    assert d3.tick([resolved(price, 100)], at(330)) == [] and d3.groups() == []


def test_maintenance_suppresses_the_model() -> None:
    rec = Recorder()
    window = Maintenance("price", at(0), at(600), "label backfill")
    d = Dispatcher(CFG, [hook()], maintenance=[window], sender=rec)
    got = run(d, lambda t: [alert(model="price"), alert("label_coverage", model="demand")], until=1000)
    assert [(t, x.payload["groupLabels"]["model"]) for t, x in got] == [(30, "demand"), (630, "price")]


def test_failed_delivery_is_retried_at_the_next_flush() -> None:
    rec = Recorder(fail=1)
    d = Dispatcher(CFG, [hook()], sender=rec)
    got = run(d, lambda t: [alert()], until=700)
    assert [(t, x.status) for t, x in got] == [(30, "failed"), (330, "sent")]
    assert [x.status for x in d.log] == ["failed", "sent"]


def test_alertmanager_notifier_pushes_every_tick_and_resolved_once() -> None:
    rec = Recorder()
    am = Notifier("am", "alertmanager", "http://127.0.0.1:9093")
    d = Dispatcher(CFG, [am], sender=rec)
    a, b, p = alert(model="price"), alert(model="demand"), alert("tail_error", state="pending")
    first = d.tick([a, b, p], at(0))  # no group_wait here: Alertmanager waits
    assert len(first) == 1 and first[0].n_alerts == 2 and first[0].group_key == ""
    assert all("endsAt" not in x for x in first[0].payload)
    assert d.tick([a, b, p], at(30))[0].n_alerts == 2
    pushed = d.tick([a, resolved(b, 40)], at(60))[0].payload
    assert [(x["labels"]["model"], x.get("endsAt")) for x in pushed] == [("price", None), ("demand", rfc3339(at(40)))]
    assert d.tick([a, resolved(b, 40)], at(90))[0].n_alerts == 1  # resolved is pushed once
    d.set_silences([Silence({"model": "price"}, at(0), at(1000))])
    assert d.tick([a, resolved(b, 40)], at(120)) == []
    d.set_silences([])
    assert d.tick([resolved(a, 130)], at(150))[0].payload[0]["endsAt"] == rfc3339(at(130))
    assert d.tick([resolved(a, 130)], at(180)) == []


def test_slack_notifier_gets_slack_bodies() -> None:
    rec = Recorder()
    d = Dispatcher(CFG, [Notifier("chat", "slack", "https://hooks.slack.example/T/B/X")], sender=rec)
    d.tick([alert()], at(0))
    (x,) = d.tick([alert()], at(30))
    assert set(x.payload) == {"text", "blocks"} and "delta_mse" in x.payload["text"] and x.n_alerts == 1


# -- a real HTTP receiver -------------------------------------------------------------------------
@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b"ok"


class Receiver:
    """An HTTP server in a thread that records every POST and answers as scripted."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: deque[Reply] = deque()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                              "body": json.loads(raw or b"null")})
                    reply = receiver.script.popleft() if receiver.script else Reply()
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [r["body"] for r in self.requests if r["path"] == path]

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False) as c:
        yield c


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_webhook_reaches_the_receiver_field_by_field(receiver: Receiver, client: httpx.Client) -> None:
    n = Notifier("oncall", "webhook", receiver.url + "/hook", headers={"Authorization": "Bearer t0k3n"})
    d = Dispatcher(CFG, [n], sender=Sender(client, sleep=Sleeps()))
    a, b = alert(cohort="eu"), alert(cohort="us")
    d.tick([a, b], at(0))
    (x,) = d.tick([a, b], at(30))
    assert (x.status, x.attempts, x.http_status, x.error, x.n_alerts) == ("sent", 1, 200, None, 2)
    (req,) = receiver.requests
    assert req["path"] == "/hook"
    assert req["headers"]["Authorization"] == "Bearer t0k3n"
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body == x.payload
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "oncall"
    assert body["groupKey"] == '{}:{alertname="delta_mse", model="price"}'
    assert body["groupLabels"] == {"alertname": "delta_mse", "model": "price"}
    assert body["commonLabels"] == {"alertname": "delta_mse", "model": "price", "severity": "page"}
    assert body["externalURL"] == CFG.external_url
    sent = {al["fingerprint"]: al for al in body["alerts"]}
    assert set(sent) == {a.fingerprint, b.fingerprint}
    for original in (a, b):
        got = sent[original.fingerprint]
        assert got["labels"] == dict(original.labels) and got["annotations"] == dict(original.annotations)
        assert got["status"] == "firing" and got["startsAt"] == "2026-11-01T12:00:00Z"
        assert got["endsAt"] == "0001-01-01T00:00:00Z"
    (y,) = d.tick([a, resolved(b, 100)], at(330))
    assert y.ok and receiver.requests[-1]["body"]["alerts"][1]["status"] == "resolved"
    assert receiver.requests[-1]["body"]["alerts"][1]["endsAt"] == "2026-11-01T12:01:40Z"


def test_500_twice_then_200_is_delivered_on_the_third_attempt(receiver: Receiver, client: httpx.Client) -> None:
    receiver.script.extend([Reply(500), Reply(503), Reply(200)])
    sleeps = Sleeps()
    n = Notifier("oncall", "webhook", receiver.url + "/hook", retries=3)
    x = send(n, {"alerts": [1, 2]}, client=client, sleep=sleeps, backoff=Backoff(base=0.5, cap=30), rng=lambda: 1.0)
    assert (x.status, x.attempts, x.http_status, x.error, x.n_alerts) == ("sent", 3, 200, None, 2)
    assert sleeps == [0.5, 1.0]  # exponential (the jitter drawn at its maximum)
    assert len(receiver.requests) == 3


def test_jitter_keeps_waits_between_half_and_all() -> None:
    b = Backoff(base=1.0, cap=8.0, jitter=0.5)
    assert [b.delay(r, lambda: 0.0) for r in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [b.delay(r, lambda: 1.0) for r in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_400_is_not_retried_and_recorded(receiver: Receiver, client: httpx.Client) -> None:
    receiver.script.append(Reply(400, body=b"unknown field 'blocks'"))
    sleeps = Sleeps()
    n = Notifier("oncall", "webhook", receiver.url + "/hook", retries=3)
    d = Dispatcher(CFG, [n], sender=Sender(client, sleep=sleeps))
    d.tick([alert()], at(0))
    (x,) = d.tick([alert()], at(30))
    assert (x.status, x.attempts, x.http_status) == ("failed", 1, 400)
    assert "400" in x.error and "unknown field" in x.error
    assert sleeps == [] and len(receiver.requests) == 1 and d.log == [x]


def test_429_retry_after_is_honoured_up_to_the_cap(receiver: Receiver, client: httpx.Client) -> None:
    receiver.script.extend([Reply(429, {"Retry-After": "2"}), Reply(429, {"Retry-After": "3600"}), Reply(200)])
    sleeps = Sleeps()
    n = Notifier("oncall", "webhook", receiver.url + "/hook", retries=2)
    x = send(n, {}, client=client, sleep=sleeps, backoff=Backoff(cap=10.0))
    assert (x.status, x.attempts) == ("sent", 3)
    assert sleeps == [2.0, 10.0]


def test_receiver_down_fails_after_retries_without_raising(client: httpx.Client) -> None:
    sleeps = Sleeps()
    n = Notifier("oncall", "webhook", f"http://127.0.0.1:{free_port()}/hook", retries=2)
    x = send(n, {"alerts": []}, client=client, sleep=sleeps)
    assert (x.status, x.attempts, x.http_status) == ("failed", 3, None)
    assert "ConnectError" in x.error and "3 attempts" in x.error
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1]
    bad = send(Notifier("oncall", "webhook", "http://[not a host/"), {}, client=client, sleep=sleeps)
    assert bad.status == "failed" and bad.error
    sleeps.clear()
    ftp = send(Notifier("oncall", "webhook", "ftp://127.0.0.1/hook", retries=3), {}, client=client, sleep=sleeps)
    assert (ftp.status, ftp.attempts) == ("failed", 1) and "UnsupportedProtocol" in ftp.error
    assert sleeps == []


def test_timeouts_are_retried(receiver: Receiver, client: httpx.Client) -> None:
    receiver.script.extend([Reply(200, delay=0.6), Reply(200)])
    n = Notifier("oncall", "webhook", receiver.url + "/hook", timeout=0.2, retries=1)
    x = send(n, {}, client=client, sleep=Sleeps())
    assert (x.status, x.attempts) == ("sent", 2)
    receiver.script.extend([Reply(200, delay=0.6), Reply(200, delay=0.6)])
    y = send(n, {}, client=client, sleep=Sleeps())
    assert (y.status, y.attempts) == ("failed", 2) and "timed out after 0.2s" in y.error


# -- a real Alertmanager ---------------------------------------------------------------------------
AM_DEADLINE = 30.0


class Alertmanager:
    def __init__(self, binary: str, workdir: Path, webhook: str) -> None:
        self.binary, self.workdir = binary, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "alertmanager.log"
        self.config = workdir / "alertmanager.yml"
        self.config.write_text(f"""
route:
  receiver: local
  group_by: [model, alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: local
    webhook_configs:
      - url: "{webhook}"
        send_resolved: true
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        try:
            eventually(self._ready, "alertmanager ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"alertmanager exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=1.0, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, timeout=5.0, trust_env=False)
        assert r.status_code == 200, r.text
        return r.json()

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc, getattr(self, "_log", None), wait=10)


def eventually(check: Callable[[], Any], what: str, deadline: float = AM_DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(0.1)


def test_real_alertmanager_groups_our_alerts_and_notifies(tmp_path: Path, receiver: Receiver,
                                                         client: httpx.Client) -> None:
    binary = require_binary("prometheus-alertmanager", "the Alertmanager integration test")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    since = now - dt.timedelta(minutes=5)
    price = Alert({"alertname": "delta_mse", "model": "price", "severity": "page"},
                  {"summary": "MSE of price rose 40%", "runbook_url": "https://runbooks.example/delta_mse"},
                  "firing", since, 1.4, starts_at=since, updated_at=now)
    demand = replace(price, labels={**price.labels, "model": "demand"},
                     annotations={**price.annotations, "summary": "MSE of demand rose 40%"})
    cohort = replace(price, labels={**price.labels, "cohort": "eu"})
    with Alertmanager(binary, tmp_path, receiver.url + "/am") as am:
        n = Notifier("am", "alertmanager", am.url, retries=2)
        d = Dispatcher(AlertingConfig(external_url="http://msewatch.example:8000"), [n],
                       sender=Sender(client, sleep=lambda s: None))
        (x,) = d.tick([price, demand, cohort], now)
        assert (x.status, x.http_status, x.n_alerts) == ("sent", 200, 3), x

        def listed() -> list[dict[str, Any]]:
            alerts = am.get("/api/v2/alerts")
            return alerts if len(alerts) == 3 else []

        by_fp = {fingerprint(a["labels"]): a for a in eventually(listed, "3 alerts in /api/v2/alerts")}
        for ours in (price, demand, cohort):
            theirs = by_fp[ours.fingerprint]
            assert theirs["labels"] == dict(ours.labels) and theirs["annotations"] == dict(ours.annotations)
            assert theirs["status"]["state"] == "active"
            assert dt.datetime.fromisoformat(theirs["startsAt"]) == since
            assert theirs["generatorURL"] == "http://msewatch.example:8000"

        groups = am.get("/api/v2/alerts/groups")
        shape = sorted((g["labels"]["model"], g["labels"]["alertname"], len(g["alerts"])) for g in groups)
        assert shape == [("demand", "delta_mse", 1), ("price", "delta_mse", 2)]
        assert all(set(g["labels"]) == {"model", "alertname"} for g in groups)

        # Alertmanager's own webhook reaches the receiver, one body per group, with our labels.
        # (Our alerts started before group_wait, so Alertmanager may flush a group as soon as
        # its first alert is in and send the second one group_interval later: wait for a body
        # with all the group's alerts.)
        def firing_hooks() -> dict[str, Any]:
            size = {"price": 2, "demand": 1}
            got = {b["groupLabels"]["model"]: b for b in receiver.bodies("/am")
                   if b["status"] == "firing" and len(b["alerts"]) == size[b["groupLabels"]["model"]]}
            return got if len(got) == 2 else {}

        hooks = eventually(firing_hooks, "Alertmanager's firing webhooks")
        ours = webhook_payload([price, cohort], receiver="local", group_labels=group_labels_of(price))
        theirs = hooks["price"]
        assert list(theirs) == list(ours)  # the same fields, in the same order
        assert theirs["groupKey"] == ours["groupKey"] == '{}:{alertname="delta_mse", model="price"}'
        assert theirs["version"] == "4" and theirs["receiver"] == "local"
        assert theirs["groupLabels"] == {"alertname": "delta_mse", "model": "price"}
        assert theirs["commonLabels"] == ours["commonLabels"]
        assert theirs["commonAnnotations"] == ours["commonAnnotations"]
        assert sorted(a["labels"].get("cohort", "") for a in theirs["alerts"]) == ["", "eu"]
        for a in theirs["alerts"]:
            assert set(a) == set(ours["alerts"][0])
            assert a["status"] == "firing" and a["endsAt"] == "0001-01-01T00:00:00Z"
            assert a["annotations"] == dict(price.annotations)
        assert hooks["demand"]["alerts"][0]["annotations"]["summary"] == "MSE of demand rose 40%"

        # price resolves: pushed once with its endsAt; Alertmanager drops it from the active
        # alerts and tells its receiver
        done = now + dt.timedelta(seconds=1)
        (y,) = d.tick([resolved_at(price, done), demand, cohort], done)
        assert y.ok and y.n_alerts == 3 and [a.get("endsAt") for a in y.payload].count(rfc3339(done)) == 1

        def price_gone() -> bool:
            return {fingerprint(a["labels"]) for a in am.get("/api/v2/alerts")} == {demand.fingerprint,
                                                                                   cohort.fingerprint}

        eventually(price_gone, "the resolved alert to leave /api/v2/alerts")

        def resolved_hook() -> list[dict[str, Any]]:
            return [a for b in receiver.bodies("/am") for a in b["alerts"]
                    if a["status"] == "resolved" and a["labels"] == dict(price.labels)]

        (r,) = eventually(resolved_hook, "Alertmanager's webhook with the resolved alert")[:1]
        assert dt.datetime.fromisoformat(r["endsAt"]) == done
        (z,) = d.tick([resolved_at(price, done), demand, cohort], done + SECOND)
        assert z.n_alerts == 2  # the resolved alert is not pushed again
        assert am.proc is not None and am.proc.poll() is None, am.log_text()


def group_labels_of(a: Alert) -> dict[str, str]:
    return {"model": a.labels["model"], "alertname": a.labels["alertname"]}


def resolved_at(a: Alert, when: dt.datetime) -> Alert:
    return replace(a, state="resolved", ends_at=when, updated_at=when)
