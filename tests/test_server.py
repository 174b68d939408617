"""`msewatch serve` through real sockets: hostile input, limits, tokens and scopes, idempotency,
`/v1/metrics` against `msewatch eval`, and a schemathesis fuzz of the OpenAPI document.

Most tests share one server (module scope) on one store; each works on its own model name and
prediction ids, so they never see each other's rows. The fuzz runs last, since it adds random
columns to that store. A few tests need a server of their own (no tokens, a public address, a
store read after the server stops) and start it themselves.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import assert_usage_error, run_cli
from servers import ServerProcess, free_port

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z, epoch seconds

INGEST = "ingest-token-0123456789"  # [[tokens]] token = … in the file
READ = "read-token-from-env-0123"  # [[tokens]] token_env = … in the file
ADMIN = "admin-token-0123456789ab"  # MSEWATCH_TOKENS
BOTH = "ingest-and-read-0123456789"  # MSEWATCH_TOKENS, two scopes
TOKENS = {"ingest": INGEST, "read": READ, "admin": ADMIN, "ingest+read": BOTH}

MAX_BODY = 11_000_000  # over 10 MB, so a 10 MB string fits in a body and is refused by field
MAX_ROWS = 1000

CONFIG = f"""
[server]
max_body_bytes = {MAX_BODY}
max_rows_per_request = {MAX_ROWS}

[[tokens]]
name = "ingester"
token = "{INGEST}"
scopes = ["ingest"]

[[tokens]]
name = "reader"
token_env = "MSEWATCH_TEST_READ_TOKEN"
scopes = ["read"]
"""
SERVER_ENV = {
    "MSEWATCH_TOKENS": f"admin:{ADMIN},ingest+read:{BOTH}",
    "MSEWATCH_TEST_READ_TOKEN": READ,
}
NO_TOKENS = {"MSEWATCH_TOKENS": ""}  # never inherit tokens from the developer's environment


# -- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server")
    config = folder / "msewatch.toml"
    config.write_text(CONFIG, encoding="utf-8")
    with ServerProcess(folder / "store.duckdb", config=config, env=SERVER_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        yield c


def auth(token: str | None = ADMIN) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return orjson.dumps(body)


def post(
    client: httpx.Client,
    kind: str,
    body: Any,
    *,
    token: str | None = ADMIN,
    content_type: str = "application/json",
) -> httpx.Response:
    headers = {**auth(token), "Content-Type": content_type}
    return client.post(f"/v1/{kind}", content=encode(body), headers=headers)


def ndjson(*lines: Any) -> bytes:
    return b"".join(encode(line) + b"\n" for line in lines)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def error_of(response: httpx.Response, status: int) -> str:
    """The message of an error answer: exactly `{"error": "…"}` with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def metrics(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return ok(client.get("/v1/metrics", params=params, headers=auth(READ)))["rows"]


def counts(client: httpx.Client, model: str) -> tuple[int, int]:
    """(n_predictions, n_labeled) of one model."""
    (row,) = metrics(client, model=model)
    return row["n_predictions"], row["n_labeled"]


def pred(pid: str, y_pred: Any = 1.0, model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"prediction_id": pid, "ts": T0, "model": model, "y_pred": y_pred, **extra}


def label(pid: str, y_true: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"prediction_id": pid, "y_true": y_true, **extra}


def rejects(answer: dict[str, Any]) -> dict[int, str]:
    indexes = [r["index"] for r in answer["rejected"]]
    assert indexes == sorted(indexes), answer  # listed in order
    return {r["index"]: r["error"] for r in answer["rejected"]}


# -- health, readiness, the OpenAPI document -----------------------------------------------------
def test_open_endpoints_need_no_token(client: httpx.Client) -> None:
    assert ok(client.get("/healthz")) == {"status": "ok"}
    assert ok(client.get("/readyz")) == {"status": "ready"}
    doc = ok(client.get("/openapi.json"))
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/v1/predictions", "/v1/labels", "/v1/shadow", "/v1/metrics", "/v1/alerts", "/v1/slo",
                                 "/v1/silences", "/v1/silences/{silence_id}", "/v1/canary", "/v1/flagger", "/metrics",
                                 "/healthz", "/readyz"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/v1/predictions", headers=auth()).status_code == 405


# -- tokens and scopes ---------------------------------------------------------------------------
MISSING = "missing bearer token"
INVALID = "invalid token"
BAD_AUTHORIZATION = [
    (None, MISSING),
    ("", MISSING),
    ("Basic dXNlcjpwYXNzd29yZA==", MISSING),
    ("Bearer", MISSING),
    (f"Token {ADMIN}", MISSING),
    (ADMIN, MISSING),
    ("Bearer not-a-configured-token-000", INVALID),
    (f"Bearer {ADMIN[:-1]}", INVALID),  # a prefix of a real token
    (f"Bearer {ADMIN}x", INVALID),  # a real token and more
    (f"Bearer {ADMIN.upper()}", INVALID),  # tokens are case-sensitive
    (f"Bearer {ADMIN} {READ}", INVALID),
    ("Bearer ' OR '1'='1", INVALID),
]
ENDPOINTS = [("POST", "/v1/predictions"), ("POST", "/v1/labels"), ("GET", "/v1/metrics"), ("GET", "/metrics"),
             ("GET", "/v1/alerts"), ("GET", "/v1/slo"), ("GET", "/v1/silences"), ("POST", "/v1/silences"),
             ("DELETE", "/v1/silences/999")]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_missing_or_wrong_token_is_401(client: httpx.Client, method: str, path: str) -> None:
    body = encode([pred("auth-401", model="auth-401")] if "predictions" in path else [label("auth-401")])
    for header, reason in BAD_AUTHORIZATION:
        headers = {} if header is None else {"Authorization": header}
        response = client.request(method, path, headers=headers, content=body if method == "POST" else None)
        assert reason in error_of(response, 401), (header, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), header
    # authentication comes before the body is read: a body over the limit, or not JSON, is
    # still answered 401
    if method == "POST":
        for content in (b"x" * (MAX_BODY + 1), b"{not json"):
            assert MISSING in error_of(client.post(path, content=content), 401)
    assert counts(client, "auth-401") == (0, 0)


SCOPE_MATRIX = {
    # token: statuses for ENDPOINTS in order (silences are written with the admin scope; the
    # silence 999 does not exist)
    "ingest": (200, 200, 403, 403, 403, 403, 403, 403, 403),
    "read": (403, 403, 200, 200, 200, 200, 200, 403, 403),
    "admin": (200, 200, 200, 200, 200, 200, 200, 201, 404),
    "ingest+read": (200, 200, 200, 200, 200, 200, 200, 403, 403),
}


@pytest.mark.parametrize("token_name", SCOPE_MATRIX)
def test_scopes(client: httpx.Client, token_name: str) -> None:
    token = TOKENS[token_name]
    model = f"scopes-{token_name}"
    for (method, path), status in zip(ENDPOINTS, SCOPE_MATRIX[token_name], strict=True):
        if path == "/v1/predictions":
            response = post(client, "predictions", pred(f"{model}-1", model=model), token=token)
        elif path == "/v1/labels":
            response = post(client, "labels", label(f"{model}-1", 2.0), token=token)
        elif method == "POST":
            silence = {"matchers": {"model": model}, "duration": "1h", "comment": "scopes"}
            response = client.post(path, headers=auth(token), json=silence)
        else:
            response = client.request(method, path, headers=auth(token))
        if status == 403:
            needed = {"/v1/predictions": "ingest", "/v1/labels": "ingest"}.get(path, "read")
            if method in ("POST", "DELETE") and path.startswith("/v1/silences"):
                needed = "admin"
            assert error_of(response, 403) == f"this token lacks the {needed!r} scope"
        else:
            assert response.status_code == status, (path, response.text)
    # the scheme name is case-insensitive (RFC 7235)
    lower = client.get("/v1/metrics", headers={"Authorization": f"bearer {ADMIN}"})
    assert lower.status_code == 200
    stored = (1, 1) if "ingest" in token_name or token_name == "admin" else (0, 0)
    assert counts(client, model) == stored


def test_every_token_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: timing cannot be measured reliably over a socket, but the comparisons can.

    Each request compares the given token with every configured one through
    `hmac.compare_digest`, whichever matches (or none), so its timing does not tell which.
    """
    import hmac

    from msewatch.config import load_config
    from msewatch.server import create_app

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    config = load_config(None, env={"MSEWATCH_TOKENS": f"read:{READ},ingest:{INGEST},admin:{ADMIN}"})
    app = create_app(str(tmp_path / "never-opened.duckdb"), config)

    async def requests() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            statuses = []
            for token in (READ, ADMIN, "no-such-token-000000000", INGEST):
                before = len(calls)
                response = await c.get("/v1/metrics", headers=auth(token))
                statuses.append(response.status_code)
                assert len(calls) - before == 3, token  # every token, even after a match
                assert {a for a, _ in calls[before:]} == {READ.encode(), INGEST.encode(), ADMIN.encode()}
            return statuses

    # the store is not opened without the lifespan: an accepted token then gets 503, not 200
    assert asyncio.run(requests()) == [503, 503, 401, 403]


# -- hostile bodies: the request as a whole ------------------------------------------------------
NOT_JSON = "not valid JSON"
NAN = "NaN and Infinity are not JSON"
BAD_BODIES = [
    (b'{"prediction_id": "bb-1", "ts": 0, ', "unexpected end of data"),
    (b'[{"prediction_id": "bb-2", "ts": 0, "y_pred": NaN}]', NAN),
    (b'[{"prediction_id": "bb-3", "ts": 0, "y_pred": Infinity}]', NAN),
    (b'[{"prediction_id": "bb-4", "ts": 0, "y_pred": -Infinity}]', NAN),
    (b'{"prediction_id": "bb-5", "ts": 0, "y_pred": nan}', NAN),
    (b'{"prediction_id": "bb-6", "ts": 0, "y_pred": 1e999}', "infinity"),
    (b"{'prediction_id': 'bb-7'}", NOT_JSON),  # Python, not JSON
    (b'{"prediction_id": "bb-8", "ts": 0, "y_pred": 1,}', NOT_JSON),  # trailing comma
    (b'[{"prediction_id": "bb-9", "ts": 0, "y_pred": 1}] trailing', NOT_JSON),
    (b'[{"prediction_id": "\\ud800", "ts": 0, "y_pred": 1}]', "surrogate"),
    (b'[{"prediction_id": "\xff\xfe", "ts": 0, "y_pred": 1}]', "UTF-8"),
    (b"\x00\x01\x02", NOT_JSON),
    (b"[" * 2000 + b"]" * 2000, "depth limit exceeded"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "depth limit exceeded"),
    (b'[{"prediction_id": "bb-10", "ts": 0, "y_pred": 1, "x": ' + b"[" * 1500 + b"]" * 1500 + b"}]", "depth limit"),
    (b"", "empty body"),
    (b" \n\t ", "empty body"),
    (b'"a string"', "found a string"),
    (b"42", "found a number"),
    (b"null", "found null"),
    (b"true", "found a boolean"),
]


@pytest.mark.parametrize("kind", ["predictions", "labels"])
def test_unusable_body_is_400(client: httpx.Client, kind: str) -> None:
    for body, needle in BAD_BODIES:
        message = error_of(post(client, kind, body), 400)
        assert needle in message, (body[:60], message)
        if needle in (NOT_JSON, NAN, "depth limit exceeded", "infinity", "surrogate", "UTF-8"):
            assert message.startswith(NOT_JSON), message
    assert counts(client, "default") == (0, 0)  # none of the bb-* rows landed


def test_content_length_that_is_not_a_number(server: ServerProcess) -> None:
    answer = raw_request(
        server,
        b"POST /v1/predictions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + ADMIN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: ten\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer


def test_body_cut_short_is_not_stored(client: httpx.Client, server: ServerProcess) -> None:
    """A client that promises more bytes than it sends, then hangs up: nothing is stored."""
    body = encode([pred("short-1", model="short-body")])
    request = (
        b"POST /v1/predictions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + ADMIN.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body) + 100).encode() + b"\r\n\r\n" + body
    )
    raw_request(server, request, half_close=True)
    time.sleep(0.3)
    assert counts(client, "short-body") == (0, 0)
    assert ok(client.get("/readyz")) == {"status": "ready"}


def raw_request(server: ServerProcess, data: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if not half_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


# -- limits --------------------------------------------------------------------------------------
def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    model = "limit-body"
    rows = orjson.dumps([pred(f"lb-{i}", model=model) for i in range(3)])
    padded = rows[:-1] + b" " * (MAX_BODY - len(rows) + 1) + b"]"  # MAX_BODY + 1 bytes, valid JSON
    assert len(padded) == MAX_BODY + 1
    # declared by Content-Length: refused before it is read
    message = error_of(post(client, "predictions", padded), 413)
    assert f"body of {MAX_BODY + 1} bytes is larger than the limit of {MAX_BODY} bytes" in message

    # chunked (no Content-Length): refused once the limit is passed
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(padded), 1 << 20):
            yield padded[start : start + (1 << 20)]

    response = client.post("/v1/predictions", content=chunks(), headers={**auth(), "Content-Type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert f"larger than the limit of {MAX_BODY} bytes" in error_of(response, 413)
    assert counts(client, model) == (0, 0)
    # exactly at the limit: accepted
    at_limit = padded[:-2] + b"]"
    assert len(at_limit) == MAX_BODY
    assert ok(post(client, "predictions", at_limit))["accepted"] == 3
    assert counts(client, model) == (3, 0)


def test_rows_per_request(client: httpx.Client) -> None:
    model = "limit-rows"
    too_many = [pred(f"lr-{i}", model=model) for i in range(MAX_ROWS + 1)]
    message = error_of(post(client, "predictions", too_many), 413)
    assert message == f"{MAX_ROWS + 1} records in one request, more than {MAX_ROWS}; split it."
    message = error_of(post(client, "predictions", ndjson(*too_many), content_type="application/x-ndjson"), 413)
    assert message == f"more than {MAX_ROWS} records in one request; split it."
    labels = [label(f"lr-{i}") for i in range(MAX_ROWS + 1)]
    assert "more than" in error_of(post(client, "labels", labels), 413)
    assert counts(client, model) == (0, 0)
    # blank NDJSON lines are not records: the limit counts records
    body = ndjson(*too_many[:MAX_ROWS]) + b"\n\n\n"
    assert ok(post(client, "predictions", body, content_type="application/x-ndjson"))["accepted"] == MAX_ROWS
    assert counts(client, model) == (MAX_ROWS, 0)


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda big: pred(big, model="limit-10mb"), "field 'prediction_id' is longer than 1024 characters"),
        (lambda big: pred("tm-model", model=big), "field 'model' is longer than 1024 characters"),
        (lambda big: pred("tm-seg", model="limit-10mb", region=big), "field 'region' is longer than 1024 characters"),
        (lambda big: pred("tm-name", model="limit-10mb", **{big: 1}), "is longer than 128 characters"),
        (lambda big: pred("tm-ts", model="limit-10mb") | {"ts": big}, "field 'ts' is longer than 1024 characters"),
    ],
    ids=["id", "model", "segment", "field-name", "ts"],
)
def test_ten_megabyte_string(client: httpx.Client, make: Any, needle: str) -> None:
    big = "é" + "x" * (TEN_MB - 1)
    good = pred(f"tm-good-{needle[:12]}", model="limit-10mb")
    answer = ok(post(client, "predictions", [make(big), good]))
    assert answer["accepted"] == 1 and answer["duplicates"] == 0
    (error,) = rejects(answer).values()
    assert needle in error
    assert rejects(answer).keys() == {0}
    assert len(error) < 300  # the 10 MB value is not echoed


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("p" * 257, "prediction_id is longer than 256 characters"),
        ("p" * 1025, "field 'prediction_id' is longer than 1024 characters"),
    ],
)
def test_long_ids(client: httpx.Client, value: str, needle: str) -> None:
    answer = ok(post(client, "predictions", [pred(value, model="limit-ids"), pred("p" * 256, model="limit-ids")]))
    assert rejects(answer) == {0: needle}
    assert answer["accepted"] + answer["duplicates"] == 1  # 256 characters are fine
    assert counts(client, "limit-ids")[0] == 1


def test_long_strings(client: httpx.Client) -> None:
    model = "limit-strings"
    records = [
        pred("ls-1", model=model, version="v" * 1024),  # at the limit: fine
        pred("ls-2", model=model, version="v" * 1025),
        pred("ls-3", model=model, region="r" * 1024),
        pred("ls-4", model=model, region="r" * 1025),
        pred("ls-5", model="m" * 1025),
        pred("ls-6", model=model, **{"f" * 128: "ok"}),
        pred("ls-7", model=model, **{"f" * 129: "no"}),
        pred("ls-8", model=model, **{f"_pad{i}": i for i in range(64 - 4)}),  # 64 fields in all
        pred("ls-9", model=model, **{f"_pad{i}": i for i in range(64 - 3)}),  # 65
    ]
    answer = ok(post(client, "predictions", records))
    errors = rejects(answer)
    assert errors == {
        1: "field 'version' is longer than 1024 characters",
        3: "field 'region' is longer than 1024 characters",
        4: "field 'model' is longer than 1024 characters",
        6: f"field name {'f' * 40!r}… is longer than 128 characters or not printable",
        8: "more than 64 fields",
    }
    assert answer["accepted"] == 4
    assert answer["ignored_fields"] == sorted(f"_pad{i}" for i in range(60))  # `_` fields: ignored
    assert counts(client, model) == (4, 0)


# -- hostile records: each rejected with its reason, the good ones beside them land -------------
PREDICTION_CASES: list[tuple[Any, str]] = [
    (pred("hr-nan", "NaN"), "y_pred is not a finite number: 'NaN'"),
    (pred("hr-inf", "Infinity"), "y_pred is not a finite number: 'Infinity'"),
    (pred("hr-minf", "-inf"), "y_pred is not a finite number: '-inf'"),
    (pred("hr-text", "abc"), "y_pred is not a number: 'abc'"),
    (pred("hr-true", True), "y_pred is not a number: true"),
    (pred("hr-false", False), "y_pred is not a number: false"),
    (pred("hr-null", None), "y_pred is missing"),
    ({"prediction_id": "hr-noy", "ts": T0}, "y_pred is missing"),
    (pred("hr-list", [1.0]), "field 'y_pred' must be a string, number, boolean or null, not an array"),
    (pred("hr-obj", {"v": 1.0}), "field 'y_pred' must be a string, number, boolean or null, not an object"),
    (pred("hr-ts") | {"ts": "yesterday"}, "ts is not an ISO 8601 time or epoch seconds: 'yesterday'"),
    (pred("hr-tsb") | {"ts": True}, "ts is not an ISO 8601 time or epoch seconds: 'true'"),
    (pred("hr-tsn") | {"ts": None}, "ts is missing"),
    (pred("hr-tsy") | {"ts": "10000-01-01T00:00:00Z"}, "ts is not an ISO 8601 time or epoch seconds"),
    (pred(""), "prediction_id is empty"),
    (pred("   "), "prediction_id is empty"),
    (pred(None), "prediction_id is empty"),
    ({"ts": T0, "y_pred": 1.0}, "prediction_id is empty"),
    (pred("hr-\x00-nul"), "prediction_id contains a NUL character"),
    (pred("hr-nest", meta={"a": {"b": [1]}}), "field 'meta' must be a string, number, boolean or null, not an object"),
    (pred("hr-empty-name", **{"": "x"}), "a field name is empty or blank"),
    (pred("hr-blank-name", **{"  ": "x"}), "a field name is empty or blank"),
    (pred("hr-tab-name", **{"a\tb": "x"}), "not printable"),
    (42, "expected a JSON object, found a number"),
    ("text", "expected a JSON object, found a string"),
    (None, "expected a JSON object, found null"),
    (True, "expected a JSON object, found a boolean"),
    ([pred("hr-inner")], "expected a JSON object, found an array"),
    (pred("hr-ytrue-text", y_true="abc"), "y_true is not a number: 'abc'"),  # optional, but a number when given
]


def test_bad_predictions_beside_good_ones(client: httpx.Client) -> None:
    model = "hostile-records"
    body: list[Any] = []
    expected: dict[int, str] = {}
    for i, (record, reason) in enumerate(PREDICTION_CASES):
        if isinstance(record, dict):
            record = {**record, "model": model}
        body.append(pred(f"hr-good-{i}", 2.5, model=model))  # a good row before each bad one
        expected[len(body)] = reason
        body.append(record)
    body.append(pred("hr-good-last", "3.5", model=model))  # numbers as text are numbers
    answer = ok(post(client, "predictions", body))
    errors = rejects(answer)
    assert errors.keys() == expected.keys(), answer
    for index, reason in expected.items():
        assert reason in errors[index], (index, body[index], errors[index])
    good = len(PREDICTION_CASES) + 1
    assert (answer["accepted"], answer["duplicates"]) == (good, 0)
    assert counts(client, model) == (good, 0)
    # a huge integer is a number (beyond int64 it is read as text, then as a float)
    big = ok(post(client, "predictions", [pred("hr-bigint", 18446744073709551615, model=model)]))
    assert big["accepted"] == 1


def test_a_prediction_s_y_true_is_optional_and_not_kept(client: httpx.Client) -> None:
    """A y_true on a prediction may be null (not known yet) or a number; predictions do not
    keep it (labels come through /v1/labels), so neither labels the prediction."""
    model = "inline-y-true"
    body = [pred("iy-null", 1.0, model=model, y_true=None), pred("iy-num", 2.0, model=model, y_true=2.5),
            pred("iy-none", 3.0, model=model)]
    answer = ok(post(client, "predictions", body))
    assert (answer["accepted"], answer["rejected"]) == (3, [])
    assert counts(client, model) == (3, 0)


LABEL_CASES: list[tuple[Any, str]] = [
    (label("lc-nan", "NaN"), "y_true is not a finite number: 'NaN'"),
    (label("lc-inf", "-Infinity"), "y_true is not a finite number: '-Infinity'"),
    (label("lc-text", "twelve"), "y_true is not a number: 'twelve'"),
    (label("lc-true", True), "y_true is not a number: true"),
    (label("lc-null", None), "y_true is missing"),
    ({"prediction_id": "lc-noy"}, "y_true is missing"),
    (label("lc-list", [2.0]), "field 'y_true' must be a string, number, boolean or null, not an array"),
    (label("lc-ts", label_ts="soon"), "label_ts is not an ISO 8601 time or epoch seconds: 'soon'"),
    (label(""), "prediction_id is empty"),
    (label("lc-\x00"), "prediction_id contains a NUL character"),
    (label("q" * 257), "prediction_id is longer than 256 characters"),
    ("label", "expected a JSON object, found a string"),
]


def test_bad_labels_beside_good_ones(client: httpx.Client) -> None:
    model = "hostile-labels"
    goods = [f"hl-{i}" for i in range(len(LABEL_CASES) + 1)]
    assert ok(post(client, "predictions", [pred(p, 1.0, model=model) for p in goods]))["accepted"] == len(goods)
    body: list[Any] = []
    expected: dict[int, str] = {}
    for pid, (record, reason) in zip(goods, LABEL_CASES, strict=False):
        body.append(label(pid, 3.0, label_ts=T0 + 60))
        expected[len(body)] = reason
        body.append(record)
    body.append(label(goods[-1], "3.0"))
    answer = ok(post(client, "labels", body))
    errors = rejects(answer)
    assert errors.keys() == expected.keys(), answer
    for index, reason in expected.items():
        assert reason in errors[index], (index, body[index], errors[index])
    assert (answer["accepted"], answer["duplicates"]) == (len(goods), 0)
    (row,) = metrics(client, model=model)
    assert (row["n_predictions"], row["n_labeled"], row["mse"]) == (len(goods), len(goods), 4.0)


# -- body shapes ---------------------------------------------------------------------------------
def test_object_array_and_ndjson_bodies(client: httpx.Client) -> None:
    model = "shapes"
    shapes = [
        ("application/json", pred("sh-1", 1.0, model), 1),
        ("application/json; charset=utf-8", [pred("sh-2", 2.0, model), pred("sh-3", 3.0, model)], 2),
        ("application/x-ndjson", ndjson(pred("sh-4", 4.0, model), pred("sh-5", 5.0, model)), 2),
        ("application/ndjson", ndjson(pred("sh-6", 6.0, model)).replace(b"\n", b"\r\n"), 1),  # CRLF
        ("application/jsonl", ndjson(pred("sh-7", 7.0, model))[:-1], 1),  # no final newline
        ("text/plain", pred("sh-8", 8.0, model), 1),  # any other type is read as JSON
        # RFC 7464 JSON text sequences: RS before each record
        ("application/json-seq", b"".join(b"\x1e" + encode(pred(f"sh-{i}", float(i), model)) + b"\n" for i in (9, 10)), 2),
    ]
    for content_type, body, n in shapes:
        answer = ok(post(client, "predictions", body, content_type=content_type))
        assert answer == {"accepted": n, "duplicates": 0, "rejected": []}, content_type
    assert ok(post(client, "predictions", [])) == {"accepted": 0, "duplicates": 0, "rejected": []}
    assert ok(post(client, "predictions", b"\n\n", content_type="application/x-ndjson"))["accepted"] == 0
    label_shapes = [
        ("application/json", label("sh-1", 2.0)),
        ("application/json", [label("sh-2", 3.0), label("sh-3", 4.0)]),
        ("application/x-ndjson", ndjson(*(label(f"sh-{i}", i + 1.0) for i in range(4, 9)))),
    ]
    for content_type, body in label_shapes:
        assert ok(post(client, "labels", body, content_type=content_type))["rejected"] == []
    (row,) = metrics(client, model=model)
    assert (row["n_predictions"], row["n_labeled"], row["mse"], row["bias"]) == (10, 8, 1.0, -1.0)


def test_ndjson_bad_lines_are_listed_by_line(client: httpx.Client) -> None:
    model = "ndjson-lines"
    body = b"".join(
        [
            encode(pred("nd-0", 1.0, model)) + b"\n",  # 0
            b'{"prediction_id": "nd-1", "ts": 0,\n',  # 1: cut short
            b"\n",  # 2: blank, skipped
            encode(pred("nd-3", 1.0, model)) + b"\n",  # 3
            b"[1, 2]\n",  # 4: not an object
            b'{"prediction_id": "nd-5", "ts": 0, "y_pred": NaN}\n',  # 5: NaN literal
            encode(pred("nd-6", "oops", model)) + b"\n",  # 6: rejected by validation
            b"[" * 3000 + b"]" * 3000 + b"\n",  # 7: too deep
            encode(pred("nd-8", 1.0, model)) + b"\n",  # 8
            b'"just text"\n',  # 9
            b"   \t\n",  # 10: blank
            encode(pred("nd-11", 1.0, model, tags=["a"])) + b"\n",  # 11: nested value
            encode(pred("nd-12", 1.0, model)),  # 12, no final newline
        ]
    )
    answer = ok(post(client, "predictions", body, content_type="application/x-ndjson"))
    errors = rejects(answer)
    assert sorted(errors) == [1, 4, 5, 6, 7, 9, 11], answer
    assert errors[1].startswith("not valid JSON")
    assert errors[4] == "expected a JSON object, found an array"
    assert errors[5].startswith("not valid JSON")
    assert errors[6] == "y_pred is not a number: 'oops'"
    assert "depth limit" in errors[7]
    assert errors[9] == "expected a JSON object, found a string"
    assert errors[11].startswith("field 'tags' must be")
    assert (answer["accepted"], answer["duplicates"]) == (4, 0)
    assert counts(client, model) == (4, 0)


# -- unknown fields ------------------------------------------------------------------------------
def test_unknown_fields(client: httpx.Client) -> None:
    model = "unknown-fields"
    answer = ok(
        post(
            client,
            "predictions",
            [
                pred("uf-1", 1.0, model, channel="web", _trace="abc"),
                pred("uf-2", 2.0, model, channel="app", Y_PRED=9.0),  # clashes with a contract name
                pred("uf-3", 3.0, model, Zq_Case="first"),
                pred("uf-4", 4.0, model, zq_case="second"),  # differs only by case from the last
            ],
        )
    )
    assert answer == {
        "accepted": 4,
        "duplicates": 0,
        "rejected": [],
        "ignored_fields": ["Y_PRED", "_trace", "zq_case"],
    }
    rows = metrics(client, model=model, by="channel")
    assert {r["channel"]: r["n_predictions"] for r in rows} == {"web": 1, "app": 1, None: 2}
    rows = metrics(client, model=model, by="Zq_Case")
    assert {r["Zq_Case"]: r["n_predictions"] for r in rows} == {"first": 1, None: 3}
    # labels keep only their own fields
    answer = ok(post(client, "labels", [label("uf-1", 2.0, comment="late", _meta=1, channel="x")]))
    assert answer == {"accepted": 1, "duplicates": 0, "rejected": [], "ignored_fields": ["_meta", "channel", "comment"]}
    assert counts(client, model) == (4, 1)


# -- SQL-looking and unicode input ---------------------------------------------------------------
SQL_IDS = [
    "'; DROP TABLE predictions; --",
    "1 OR 1=1",
    '"; DELETE FROM labels; --',
    "Robert'); DROP TABLE students;--",
    "$1; SELECT * FROM ingest_log",
    "\\'; TRUNCATE labels; --",
]
SQL_MODEL = "sql' OR '1'='1"
SQL_COLUMN = 'x"); DROP TABLE labels; --'


def test_sql_looking_input_is_data(client: httpx.Client) -> None:
    records = [pred(pid, float(i), SQL_MODEL, **{SQL_COLUMN: "v'; --"}) for i, pid in enumerate(SQL_IDS)]
    assert ok(post(client, "predictions", records)) == {"accepted": len(SQL_IDS), "duplicates": 0, "rejected": []}
    # stored verbatim: the same records again are duplicates, and a changed one names its id
    assert ok(post(client, "predictions", records))["duplicates"] == len(SQL_IDS)
    changed = ok(post(client, "predictions", [{**records[0], "y_pred": 99.0}]))
    assert rejects(changed) == {0: f"prediction_id {SQL_IDS[0]!r} is already stored with different content"}
    labels = [label(pid, float(i) + 1.0) for i, pid in enumerate(SQL_IDS)]
    assert ok(post(client, "labels", labels))["accepted"] == len(SQL_IDS)
    (row,) = metrics(client, model=SQL_MODEL)
    assert (row["n_predictions"], row["n_labeled"], row["mse"]) == (len(SQL_IDS), len(SQL_IDS), 1.0)
    # filters are values, not SQL
    for other in ("' OR ''='", "x' OR 1=1 --", SQL_MODEL + "'", "%", "*"):
        assert counts(client, other) == (0, 0), other
    # a column name is matched exactly, never pasted into SQL
    (row,) = metrics(client, model=SQL_MODEL, by=SQL_COLUMN)
    assert row[SQL_COLUMN] == "v'; --" and row["n_labeled"] == len(SQL_IDS)
    for by in ("model; DROP TABLE predictions", "model) --", '"model"', "1=1"):
        message = error_of(client.get("/v1/metrics", params={"by": by}, headers=auth()), 400)
        assert f"no column {by!r}" in message
    # every table is still there and still answers
    assert counts(client, SQL_MODEL) == (len(SQL_IDS), len(SQL_IDS))


UNICODE_IDS = [
    "ünïcødé",
    "日本語-ID",
    "emoji-🙂🚀",
    "rtl-\u05e9\u05dc\u05d5\u05dd",
    "zero\u200bwidth",
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD: another id
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u202eevil",
]
UNICODE_MODEL = "モデル-🙂"


def test_unicode_ids_and_values(client: httpx.Client) -> None:
    regions = ["région-🙂", "東京"]
    records = [pred(pid, 1.0, UNICODE_MODEL, region=regions[i % 2]) for i, pid in enumerate(UNICODE_IDS)]
    assert ok(post(client, "predictions", records))["accepted"] == len(UNICODE_IDS)
    assert ok(post(client, "predictions", records))["duplicates"] == len(UNICODE_IDS)
    answer = ok(post(client, "labels", ndjson(*(label(pid, 3.0) for pid in UNICODE_IDS)), content_type="application/x-ndjson"))
    assert answer["accepted"] == len(UNICODE_IDS)
    rows = metrics(client, model=UNICODE_MODEL, by="region")
    assert {r["region"]: (r["n_labeled"], r["mse"]) for r in rows} == {"région-🙂": (5, 4.0), "東京": (4, 4.0)}
    assert counts(client, "モデル") == (0, 0)  # a prefix is another model


# -- idempotency and label revisions -------------------------------------------------------------
def test_idempotency_and_label_revisions(client: httpx.Client) -> None:
    model = "idempotency"

    def check(n_pred: int, sq_errors: list[float]) -> None:
        (row,) = metrics(client, model=model)
        assert row["n_predictions"] == n_pred
        assert row["n_labeled"] == len(sq_errors)
        assert row["mse"] == pytest.approx(sum(sq_errors) / len(sq_errors), rel=1e-12)

    first = [pred("id-1", 10.0, model), pred("id-2", 20.0, model)]
    assert ok(post(client, "predictions", first)) == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert ok(post(client, "predictions", first)) == {"accepted": 0, "duplicates": 2, "rejected": []}
    # the same record twice in one request: once stored, once a duplicate
    twice = [pred("id-3", 30.0, model)] * 2
    assert ok(post(client, "predictions", twice)) == {"accepted": 1, "duplicates": 1, "rejected": []}
    # the same id with other content is a conflict, not an update
    answer = ok(post(client, "predictions", [pred("id-1", 11.0, model), pred("id-4", 7.0, model)]))
    assert answer["accepted"] == 1
    assert rejects(answer) == {0: "prediction_id 'id-1' is already stored with different content"}

    assert ok(post(client, "labels", label("id-1", 12.0)))["accepted"] == 1
    assert ok(post(client, "labels", label("id-1", 12.0))) == {"accepted": 0, "duplicates": 1, "rejected": []}
    check(4, [4.0])
    # another value: a new revision, and the latest counts
    assert ok(post(client, "labels", label("id-1", 13.0))) == {"accepted": 1, "duplicates": 0, "rejected": []}
    check(4, [9.0])
    # with label times, the latest label time wins, whatever the order of arrival
    assert ok(post(client, "labels", label("id-2", 25.0, label_ts=T0 + 100)))["accepted"] == 1
    check(4, [9.0, 25.0])
    assert ok(post(client, "labels", label("id-2", 21.0, label_ts=T0 + 50)))["accepted"] == 1
    check(4, [9.0, 25.0])
    assert ok(post(client, "labels", label("id-2", 22.0, label_ts=T0 + 200)))["accepted"] == 1
    check(4, [9.0, 4.0])
    assert ok(post(client, "labels", label("id-2", 22.0, label_ts=T0 + 200)))["duplicates"] == 1
    # a label may come before its prediction
    assert ok(post(client, "labels", label("id-5", 5.0)))["accepted"] == 1
    check(4, [9.0, 4.0])
    assert ok(post(client, "predictions", pred("id-5", 7.0, model)))["accepted"] == 1
    check(5, [9.0, 4.0, 4.0])
    (row,) = metrics(client, model=model)
    assert row["bias"] == pytest.approx((-3.0 - 2.0 + 2.0) / 3, rel=1e-12)
    assert row["mae"] == pytest.approx(7.0 / 3, rel=1e-12)


# -- query parameters ----------------------------------------------------------------------------
BAD_QUERIES = [
    ({"window": "zz"}, "window must be a positive whole number"),
    ({"window": "0h"}, "got '0h'"),
    ({"window": "-1h"}, "window must be"),
    ({"rolling": "abc"}, "rolling must be a positive whole number"),
    ({"rolling": "1h", "step": "zz"}, "step must be a positive whole number"),
    ({"step": "1h"}, "step"),
    ({"window": "1h", "rolling": "1h"}, "cannot be used together"),
    ({"by": "nosuch"}, "no column 'nosuch'"),
    ({"by": "_row"}, "no column '_row'"),
    ({"since": "yesterday"}, "since must be an ISO 8601 time"),
    ({"until": "nope"}, "until must be an ISO 8601 time"),
    ({"since": "1e300"}, "since must be"),
    ({"since": "2024-02-01", "until": "2024-01-01"}, "earlier than"),
    ({"huber_delta": "abc"}, "huber_delta must be a number; got 'abc'"),
    ({"huber_delta": "-1"}, "must be a positive number"),
    ({"huber_delta": "nan"}, "must be a positive number"),
    ({"huber_delta": "inf"}, "must be a positive number"),
    ({"modle": "x"}, "unknown query parameter 'modle'"),
    ({"model": "m", "format": "csv"}, "unknown query parameter 'format'"),
]


def test_bad_query_parameters_are_400(client: httpx.Client) -> None:
    for params, needle in BAD_QUERIES:
        message = error_of(client.get("/v1/metrics", params=params, headers=auth()), 400)
        assert needle in message, (params, message)


@pytest.mark.parametrize("params", [{"by": "model,model"}, {"window": "100000000000w"}])
def test_query_parameters_past_the_limits_are_400(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/v1/metrics", params=params, headers=auth())
    assert response.status_code == 400, response.text


def test_good_query_parameters(client: httpx.Client) -> None:
    model = "queries"
    records = [pred(f"q-{i}", float(i), model, version=f"v{i % 2}") | {"ts": T0 + 900 * i} for i in range(8)]
    ok(post(client, "predictions", records))
    ok(post(client, "labels", [label(f"q-{i}", float(i) + 1.0) for i in range(8)]))
    rows = metrics(client, model=model, window="1h", by="version")
    assert all(set(r) >= {"window_start", "window_end", "version", "mse"} for r in rows)
    assert sum(r["n_predictions"] for r in rows) == 8
    assert {r["version"] for r in rows} == {"v0", "v1"}
    (row,) = metrics(client, model=model, version="v1")
    assert row["n_predictions"] == 4
    since = "2023-11-14T22:43:20Z"  # T0 + 1800: q-2 and later
    (row,) = metrics(client, model=model, since=since, until=str(T0 + 3600))
    assert row["n_predictions"] == 2
    (row,) = metrics(client, model=model, huber_delta="0.5")
    assert row["huber"] == pytest.approx(0.5 * (1.0 - 0.25), rel=1e-12)
    rows = metrics(client, model=model, rolling="2h", step="1h")
    assert rows and all("window_start" in r for r in rows)


# -- a server without tokens, on a public address (--insecure) ----------------------------------
def test_insecure_public_bind_without_tokens(tmp_path: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text("[server]\nmax_extra_columns = 3\n", encoding="utf-8")
    with ServerProcess(tmp_path / "open.duckdb", config=config, env=NO_TOKENS, extra_args=["--host", "0.0.0.0", "--insecure"]) as srv:
        with httpx.Client(base_url=srv.url, timeout=60.0) as c:
            assert ok(post(c, "predictions", [pred("o-1", 1.0, "open")], token=None))["accepted"] == 1
            assert ok(post(c, "labels", label("o-1", 2.0), token=None))["accepted"] == 1
            assert c.get("/metrics").status_code == 200
            (row,) = ok(c.get("/v1/metrics"))["rows"]
            assert (row["n_predictions"], row["mse"]) == (1, 1.0)
            # a token is not needed, and one that is sent is not checked
            assert c.get("/v1/metrics", headers=auth("anything")).status_code == 200
            # at most max_extra_columns segment/feature columns are added by HTTP
            answer = ok(post(c, "predictions", pred("o-2", 1.0, "open", c1="a", c2="b", c3="c", c4="d", c5="e")))
            assert (answer["accepted"], answer["ignored_fields"]) == (1, ["c4", "c5"])
            answer = ok(post(c, "predictions", pred("o-3", 1.0, "open", c1="x", c6="y")))
            assert (answer["accepted"], answer["ignored_fields"]) == (1, ["c6"])
            assert {r["c1"] for r in ok(c.get("/v1/metrics", params={"by": "c1"}))["rows"]} == {None, "a", "x"}
            assert "no column 'c4'" in error_of(c.get("/v1/metrics", params={"by": "c4"}), 400)


def test_configured_segment_missing_from_a_request(tmp_path: Path) -> None:
    config = tmp_path / "segments.toml"
    config.write_text('[metrics]\nsegments = ["region"]\n', encoding="utf-8")
    with ServerProcess(tmp_path / "segments.duckdb", config=config, env=NO_TOKENS) as srv:
        with httpx.Client(base_url=srv.url, timeout=60.0) as c:
            assert ok(post(c, "predictions", pred("s-1", 1.0, "seg", region="eu"), token=None))["accepted"] == 1
            response = post(c, "predictions", pred("s-2", 1.0, "seg"), token=None)
            assert response.status_code == 200, response.text
            assert response.json()["accepted"] == 1


# -- serve's own checks: refused binds, bad config, a locked store ------------------------------
REFUSED_IN_A_SUBPROCESS: list[tuple[list[str], dict[str, str], list[str]]] = [
    (["--host", "0.0.0.0"], NO_TOKENS, ["refusing to listen on 0.0.0.0 without tokens", "--insecure", "MSEWATCH_TOKENS"]),
    (["--config", "public.toml"], NO_TOKENS, ["refusing to listen on 0.0.0.0 without tokens"]),
    (["--host", "0.0.0.0"], {"MSEWATCH_TOKENS": f"write:{ADMIN}"}, ["MSEWATCH_TOKENS", "'write'"]),
]
REFUSED_IN_PROCESS: list[tuple[list[str], dict[str, str], list[str]]] = [
    (["--host", "192.0.2.1"], NO_TOKENS, ["refusing to listen on 192.0.2.1 without tokens"]),
    (["--host", "::"], NO_TOKENS, ["refusing to listen on :: without tokens"]),
    (["--host", "example.org"], NO_TOKENS, ["refusing to listen on example.org without tokens"]),
    (["--config", "bad.toml"], NO_TOKENS, ["bad.toml", "server.max_body_bytes = 'lots'", "whole number"]),
    (["--config", "unknown.toml"], NO_TOKENS, ["unknown.toml", "unknown key 'sever'"]),
    (["--config", "port.toml"], NO_TOKENS, ["server.port = 70000", "0 to 65535"]),
    (["--config", "absent.toml"], NO_TOKENS, ["absent.toml", "no such config file"]),
    ([], {"MSEWATCH_TOKENS": "read:short"}, ["MSEWATCH_TOKENS", "at least 16"]),
    ([], {"MSEWATCH_TOKENS": ADMIN}, ["MSEWATCH_TOKENS", "scope[+scope]:token"]),
    (["--port", "70000"], NO_TOKENS, ["--port 70000", "0 to 65535"]),
    (["--port", "-1"], NO_TOKENS, ["--port -1", "0 to 65535"]),
]


def test_serve_refuses_to_start(tmp_path: Path, main_in_process: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A public address without tokens, a bad config file or MSEWATCH_TOKENS: exit 2 with one
    line, before the store is created. The first cases run as a user runs them (a subprocess);
    the long tail runs in this process, where starting a server would fail the test."""
    import uvicorn

    (tmp_path / "public.toml").write_text('[server]\nhost = "0.0.0.0"\n', encoding="utf-8")
    (tmp_path / "bad.toml").write_text('[server]\nmax_body_bytes = "lots"\n', encoding="utf-8")
    (tmp_path / "unknown.toml").write_text("[sever]\nport = 1\n", encoding="utf-8")
    (tmp_path / "port.toml").write_text("[server]\nport = 70000\n", encoding="utf-8")
    port = str(free_port())

    def args_of(case: tuple[list[str], dict[str, str], list[str]]) -> list[str]:
        args = case[0] if "--port" in case[0] else [*case[0], "--port", port]
        return ["serve", "--db", "s.duckdb", *args]

    with ThreadPoolExecutor(max_workers=min(3, os.cpu_count() or 1)) as pool:
        runs = list(
            pool.map(lambda c: run_cli(args_of(c), cwd=tmp_path, env=c[1], timeout=60), REFUSED_IN_A_SUBPROCESS)
        )
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: pytest.fail("the server started"))
    runs += [main_in_process(*args_of(case), env=case[1]) for case in REFUSED_IN_PROCESS]
    for run, (_, _, needles) in zip(runs, REFUSED_IN_A_SUBPROCESS + REFUSED_IN_PROCESS, strict=True):
        assert_usage_error(run, *needles)
        assert run.stdout == ""
    assert ADMIN not in "".join(r.stderr for r in runs)  # a secret is never echoed
    assert not (tmp_path / "s.duckdb").exists()  # refused before the store is created


LOCK_HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("ready", flush=True)
sys.stdin.read()  # hold the write lock until the test closes stdin
"""


def test_serve_on_a_locked_store(tmp_path: Path) -> None:
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        run = run_cli(["serve", "--db", db, "--port", str(free_port())], cwd=tmp_path, env=NO_TOKENS, timeout=60)
    finally:
        holder.communicate(input="", timeout=60)
    assert_usage_error(run, "locked.duckdb", "in use by another process")
    assert run.stdout == ""


# -- /v1/metrics is `msewatch eval --db` ---------------------------------------------------------
def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback, if it has one."""
    candidates = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route's source
            candidates.add(s.getsockname()[0])
    except OSError:
        pass
    try:
        candidates.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    public = sorted(a for a in candidates if not a.startswith("127.") and a != "0.0.0.0")
    return public[0] if public else None


EVAL_QUERIES = [
    {},
    {"window": "1h", "by": "version,region"},
    {"model": "price", "rolling": "2h", "step": "1h", "huber_delta": "0.5"},
    {"since": str(T0 + 1800), "until": "2023-11-15T01:00:00Z", "by": "model", "version": "v2"},
]


def eval_args(params: dict[str, str]) -> list[str]:
    args = []
    for key, value in params.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def test_metrics_match_eval_cli(tmp_path: Path) -> None:
    db = tmp_path / "same.duckdb"
    regions = ["eu", "us", "apac"]
    records = [
        {
            "prediction_id": f"e-{i}",
            "ts": T0 + 97 * i,
            "model": "price" if i % 3 else "eta",
            "version": "v1" if i < 40 else "v2",
            "region": regions[i % 3],
            "y_pred": 10.0 + (i % 7) * 0.75,
        }
        for i in range(90)
    ]
    labels = [
        {"prediction_id": f"e-{i}", "y_true": 10.0 + (i % 5) * 1.1, "label_ts": T0 + 97 * i + 30 * (i % 4)}
        for i in range(90)
        if i % 10 != 3  # some never labeled
    ]
    # revisions without a label time count as older than any with one: only e-33's counts
    revisions = [label(f"e-{i}", 99.0 - i) for i in range(0, 90, 11)]
    with ServerProcess(db, env=NO_TOKENS) as srv:
        # with no tokens the server listens on loopback only
        address = non_loopback_address()
        if address is not None:
            with pytest.raises(OSError), socket.create_connection((address, srv.port), timeout=5):
                pass
        with httpx.Client(base_url=srv.url, timeout=60.0) as c:
            assert ok(post(c, "predictions", records[0], token=None))["accepted"] == 1
            assert ok(post(c, "predictions", records[1:50], token=None))["accepted"] == 49
            answer = ok(post(c, "predictions", ndjson(*records[50:]), token=None, content_type="application/x-ndjson"))
            assert answer["accepted"] == 40
            assert ok(post(c, "labels", labels, token=None))["accepted"] == len(labels)
            assert ok(post(c, "labels", ndjson(*revisions), token=None, content_type="application/x-ndjson"))["accepted"] == len(revisions)
            served = [ok(c.get("/v1/metrics", params=q))["rows"] for q in EVAL_QUERIES]
        assert srv.stop() in (0, -15)  # uvicorn re-raises SIGTERM once drained
    assert all(served)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        runs = list(
            pool.map(
                lambda q: run_cli(["eval", "--db", db, "--format", "json", *eval_args(q)], cwd=tmp_path),
                EVAL_QUERIES,
            )
        )
    for query, rows, run in zip(EVAL_QUERIES, served, runs, strict=True):
        assert run.returncode == 0, str(run)
        assert run.json() == {"rows": rows}, query
    # one check that the data is what was sent: every prediction, labels with the revisions
    (everything,) = served[0]
    assert everything["n_predictions"] == 90
    assert everything["n_labeled"] == len(labels) + sum(1 for i in range(0, 90, 11) if i % 10 == 3)


# -- property-based fuzz of the whole API --------------------------------------------------------
def test_schemathesis_fuzz(server: ServerProcess, client: httpx.Client) -> None:
    """Every operation of /openapi.json, valid and invalid inputs: never a 5xx, always an
    answer the document describes. Runs last: it adds random columns to the store."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    fuzz_settings = settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large, HealthCheck.large_base_example
        ],
    )
    ran: dict[str, int] = {}

    def fuzz(operation: Any, mode: Any, session: requests.Session) -> None:
        key = f"{operation.label} {mode.value}"
        ran[key] = 0

        @fuzz_settings
        @given(case=operation.as_strategy(generation_mode=mode))
        def examples(case: Any) -> None:
            ran[key] += 1
            case.call_and_validate(session=session, headers=auth(ADMIN), checks=checks)

        examples()

    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            fuzz(operation, schemathesis.GenerationMode.POSITIVE, session)
            if len(operation.query) or len(operation.body):  # else there is nothing to get wrong
                fuzz(operation, schemathesis.GenerationMode.NEGATIVE, session)
    assert set(ran) >= {
        "POST /v1/predictions positive", "POST /v1/predictions negative",
        "POST /v1/labels positive", "POST /v1/labels negative",
        "GET /v1/metrics positive", "GET /v1/metrics negative",
        "GET /metrics positive", "GET /healthz positive", "GET /readyz positive",
    }
    assert all(n >= 1 for n in ran.values()), ran
    assert ran["POST /v1/predictions positive"] >= 10, ran
    # and the server still works after it
    assert ok(client.get("/readyz")) == {"status": "ready"}
    assert ok(post(client, "predictions", pred("after-fuzz", 1.0, "after-fuzz")))["accepted"] == 1
    assert ok(post(client, "labels", label("after-fuzz", 3.0)))["accepted"] == 1
    (row,) = metrics(client, model="after-fuzz")
    assert (row["n_labeled"], row["mse"]) == (1, 4.0)
