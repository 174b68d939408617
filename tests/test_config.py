"""`load_config`: msewatch.toml and MSEWATCH_TOKENS, every error naming its key and value.

Unit tests on temporary files; `msewatch serve` reading a bad file is in test_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msewatch.config import (
    DEFAULT_LATENCY_BUCKETS,
    DEFAULT_SQUARED_ERROR_BUCKETS,
    Config,
    MetricsConfig,
    ModelConfig,
    ServerConfig,
    load_config,
)
from msewatch.errors import InputError

SECRET = "0123456789abcdef"  # 16 characters: the shortest token accepted


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "msewatch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write_config(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_config(path, env=env or {})
    message = str(info.value)
    assert str(path) in message, message  # every file error names the file
    assert "\n" not in message, message
    return message


# -- defaults and a full file --------------------------------------------------------------------
def test_no_file_gives_the_defaults() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.server == ServerConfig()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.max_body_bytes == 16 * 1024 * 1024
    assert config.metrics.squared_error_buckets == DEFAULT_SQUARED_ERROR_BUCKETS
    assert config.metrics.label_latency_buckets == DEFAULT_LATENCY_BUCKETS
    assert config.tokens == ()
    assert config.path is None


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    config = load_config(path, env={})
    assert config.server == ServerConfig()
    assert config.metrics == MetricsConfig()
    assert config.tokens == ()
    assert config.path == str(path)


def test_full_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"""
[server]
host = "0.0.0.0"
port = 9999
max_body_bytes = 1000
max_rows_per_request = 10
max_pending_rows = 20
max_extra_columns = 3
max_group_rows = 5

[metrics]
segments = ["region", "device_type"]
max_segment_values = 7
squared_error_buckets = [0.5, 2, 8]
label_latency_buckets = [60, 3600]

[models.price]
squared_error_buckets = [1, 4, 16]
thresholds = [25.0, 2]

[models.eta]
thresholds = [3]

[[tokens]]
name = "model-servers"
token = "{SECRET}"
scopes = ["ingest"]

[[tokens]]
name = "dashboards"
token_env = "DASH_TOKEN"
scopes = ["read", "admin"]
""",
    )
    config = load_config(path, env={"DASH_TOKEN": "dashboard-secret-0001"})
    assert config.server == ServerConfig(
        host="0.0.0.0", port=9999, max_body_bytes=1000, max_rows_per_request=10,
        max_pending_rows=20, max_extra_columns=3, max_group_rows=5,
    )
    assert config.metrics == MetricsConfig(
        segments=("region", "device_type"),
        max_segment_values=7,
        squared_error_buckets=(0.5, 2.0, 8.0),
        label_latency_buckets=(60.0, 3600.0),
    )
    # thresholds may be given in any order; they are kept sorted
    assert config.models == {
        "price": ModelConfig(squared_error_buckets=(1.0, 4.0, 16.0), thresholds=(2.0, 25.0)),
        "eta": ModelConfig(squared_error_buckets=None, thresholds=(3.0,)),
    }
    first, second = config.tokens
    assert (first.name, first.secret, first.scopes) == ("model-servers", SECRET, {"ingest"})
    assert (second.name, second.secret) == ("dashboards", "dashboard-secret-0001")
    assert second.scopes == {"read", "admin"}


# -- buckets and thresholds ----------------------------------------------------------------------
def test_buckets_for_merges_thresholds(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[metrics]
squared_error_buckets = [1, 10, 100]

[models.own]
squared_error_buckets = [2, 4]
thresholds = [3, 4]

[models.shared]
thresholds = [50, 0.5]

[models.plain]
squared_error_buckets = [7]
""",
    )
    config = load_config(path, env={})
    # own buckets plus its thresholds (4 is in both: once)
    assert config.buckets_for("own") == (2.0, 3.0, 4.0)
    # no own buckets: the global ones plus its thresholds, sorted
    assert config.buckets_for("shared") == (0.5, 1.0, 10.0, 50.0, 100.0)
    assert config.buckets_for("plain") == (7.0,)
    # a model the file does not name: the global buckets
    assert config.buckets_for("unnamed") == (1.0, 10.0, 100.0)


def test_buckets_for_with_defaults() -> None:
    assert Config().buckets_for("any") == DEFAULT_SQUARED_ERROR_BUCKETS


def test_empty_thresholds_list_means_none(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "[models.m]\nthresholds = []\n"), env={})
    assert config.models["m"] == ModelConfig(squared_error_buckets=None, thresholds=())


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[metrics]\nsquared_error_buckets = []", ["metrics.squared_error_buckets", "[]", "non-empty list"]),
        ("[metrics]\nsquared_error_buckets = 5", ["metrics.squared_error_buckets", "5", "list of numbers"]),
        ("[metrics]\nsquared_error_buckets = [-1, 2]", ["metrics.squared_error_buckets", "-1", "> 0"]),
        ("[metrics]\nsquared_error_buckets = [0, 2]", ["metrics.squared_error_buckets", "[0, 2]", "> 0"]),
        ("[metrics]\nsquared_error_buckets = [2, 1]", ["metrics.squared_error_buckets", "[2, 1]", "strictly increasing"]),
        ("[metrics]\nsquared_error_buckets = [1, 1]", ["metrics.squared_error_buckets", "[1, 1]", "strictly increasing"]),
        ("[metrics]\nsquared_error_buckets = [\"1\"]", ["metrics.squared_error_buckets", "'1'", "finite number"]),
        ("[metrics]\nsquared_error_buckets = [true]", ["metrics.squared_error_buckets", "True", "finite number"]),
        ("[metrics]\nsquared_error_buckets = [1, inf]", ["metrics.squared_error_buckets", "inf", "finite number"]),
        ("[metrics]\nlabel_latency_buckets = [nan]", ["metrics.label_latency_buckets", "nan", "finite number"]),
        ("[models.price]\nsquared_error_buckets = []", ["models.price.squared_error_buckets", "non-empty"]),
        ("[models.price]\nsquared_error_buckets = [3, 2]", ["models.price.squared_error_buckets", "strictly increasing"]),
        ("[models.price]\nthresholds = [-1]", ["models.price.thresholds", "-1", "> 0"]),
        ("[models.price]\nthresholds = [1, 1]", ["models.price.thresholds", "strictly increasing"]),
        ("[models.price]\nthresholds = [1, \"a\"]", ["models.price.thresholds", "'a'", "finite number"]),
        ("[models.price]\nthresholds = \"x\"", ["models.price.thresholds", "'x'", "list of numbers"]),
        ("[models.price]\nthresholds = 0", ["models.price.thresholds", "0", "list of numbers"]),
    ],
)
def test_bad_buckets(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = load_error(tmp_path, text)
    for needle in needles:
        assert needle in message, (needle, message)


# -- unknown keys and wrong types ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("colour = 1", ["unknown key 'colour'", "alerting, alerts, canary, engine, maintenance, metrics, models, notifiers, server, silences, sink, slos, tokens"]),
        ("[server]\nmax_bodybytes = 5", ["unknown key 'server.max_bodybytes'", "max_body_bytes"]),
        ("[metrics]\nbucket = [1]", ["unknown key 'metrics.bucket'", "squared_error_buckets"]),
        ("[models.price]\nbuckets = [1]", ["unknown key 'models.price.buckets'", "thresholds"]),
        (f"[[tokens]]\ntoken = \"{SECRET}\"\nscopes = [\"read\"]\nexpires = 1", ["unknown key 'tokens[0].expires'", "token_env"]),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = load_error(tmp_path, text)
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("server = 5", ["server = 5", "expected a table"]),
        ("[server]\nmax_body_bytes = \"big\"", ["server.max_body_bytes = 'big'", "whole number"]),
        ("[server]\nmax_body_bytes = -1", ["server.max_body_bytes = -1", "whole number ≥ 0"]),
        ("[server]\nmax_rows_per_request = 1.5", ["server.max_rows_per_request = 1.5", "whole number"]),
        ("[server]\nmax_pending_rows = true", ["server.max_pending_rows = True", "whole number"]),
        ("[server]\nport = \"8080\"", ["server.port = '8080'", "whole number"]),
        ("[server]\nport = 70000", ["server.port = 70000", "0 to 65535"]),
        ("[server]\nhost = 5", ["server.host = 5", "expected a string"]),
        ("metrics = [1]", ["metrics = [1]", "expected a table"]),
        ("[metrics]\nsegments = \"region\"", ["metrics.segments = 'region'", "list of column names"]),
        ("[metrics]\nsegments = [\"a-b\"]", ["metrics.segments = ['a-b']", "letters, digits"]),
        ("[metrics]\nsegments = [1]", ["metrics.segments = [1]", "list of column names"]),
        ("[metrics]\nsegments = [\"region\", \"le\"]", ["metrics.segments", "'le' is a reserved label name"]),
        ("[metrics]\nsegments = [\"model\"]", ["metrics.segments", "'model' is a reserved label name"]),
        ("[metrics]\nmax_segment_values = 0", ["metrics.max_segment_values = 0", "≥ 1"]),
        ("[metrics]\nmax_segment_values = \"10\"", ["metrics.max_segment_values = '10'", "whole number"]),
        ("models = 3", ["models = 3", "table of models"]),
        ("[models]\nprice = 3", ["models.price = 3", "expected a table"]),
        ("tokens = 5", ["tokens = 5", "[[tokens]]"]),
        ("tokens = [5]", ["tokens[0] = 5", "expected a table"]),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = load_error(tmp_path, text)
    for needle in needles:
        assert needle in message, (needle, message)


def test_not_toml(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[server\nport = 1\n")
    assert "not valid TOML" in message
    assert "line 1" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[server]\nhost = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(path, env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such config file") as info:
        load_config(tmp_path / "absent.toml", env={})
    assert "absent.toml" in str(info.value)
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path, env={})  # a directory is not a config file


# -- tokens from the file ------------------------------------------------------------------------
def test_token_env(tmp_path: Path) -> None:
    text = '[[tokens]]\nname = "ci"\ntoken_env = "MY_TOKEN"\nscopes = ["ingest", "read"]\n'
    path = write_config(tmp_path, text)
    (token,) = load_config(path, env={"MY_TOKEN": "from-the-environment"}).tokens
    assert (token.name, token.secret) == ("ci", "from-the-environment")
    assert token.allows("ingest") and token.allows("read") and not token.allows("admin")
    for env in ({}, {"MY_TOKEN": ""}):
        message = load_error(tmp_path, text, env=env)
        assert "tokens[0].token_env = 'MY_TOKEN'" in message
        assert "empty or unset" in message
    # too short when read from the environment: the same rule as in the file
    message = load_error(tmp_path, text, env={"MY_TOKEN": "zq9x"})
    assert "tokens[0].token" in message and "at least 16" in message
    assert "zq9x" not in message  # the secret is not echoed


def test_token_names_default_by_position(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f'[[tokens]]\ntoken = "{SECRET}"\nscopes = ["read"]\n'
        f'[[tokens]]\ntoken = "{SECRET}-2"\nscopes = ["admin"]\n',
    )
    first, second = load_config(path, env={}).tokens
    assert (first.name, second.name) == ("token0", "token1")
    assert second.allows("ingest") and second.allows("read") and second.allows("admin")
    assert first.allows("read") and not first.allows("ingest") and not first.allows("admin")


@pytest.mark.parametrize(
    ("entry", "needles"),
    [
        ('token = "short"\nscopes = ["read"]', ["tokens[0].token", "at least 16 printable characters"]),
        ('token = "0123456789abcde"\nscopes = ["read"]', ["tokens[0].token", "at least 16"]),  # 15
        ('token = "0123456789 abcdef"\nscopes = ["read"]', ["tokens[0].token", "no spaces"]),
        ('token = "0123456789abcdef\\u0007"\nscopes = ["read"]', ["tokens[0].token", "printable"]),
        ('token = 12345678901234567890\nscopes = ["read"]', ["tokens[0].token", "at least 16"]),
        ('scopes = ["read"]', ["tokens[0].token", "at least 16"]),  # no token at all
        (f'token = "{SECRET}"\ntoken_env = "X"\nscopes = ["read"]', ["tokens[0]", "token or token_env, not both"]),
        (f'token = "{SECRET}"\nscopes = ["write"]', ["tokens[0].scopes = ['write']", "ingest, read, admin"]),
        (f'token = "{SECRET}"\nscopes = []', ["tokens[0].scopes = []", "non-empty list"]),
        (f'token = "{SECRET}"\nscopes = "read"', ["tokens[0].scopes = 'read'", "non-empty list"]),
        (f'token = "{SECRET}"', ["tokens[0].scopes = None", "non-empty list"]),
    ],
)
def test_bad_file_tokens(tmp_path: Path, entry: str, needles: list[str]) -> None:
    message = load_error(tmp_path, "[[tokens]]\n" + entry + "\n")
    for needle in needles:
        assert needle in message, (needle, message)
    assert SECRET not in message  # a secret never appears in an error


def test_second_token_is_named_by_its_index(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        f'[[tokens]]\ntoken = "{SECRET}"\nscopes = ["read"]\n[[tokens]]\ntoken = "tiny"\nscopes = ["read"]\n',
    )
    assert "tokens[1].token" in message


# -- MSEWATCH_TOKENS -----------------------------------------------------------------------------
def test_env_tokens_parsed() -> None:
    config = load_config(
        None,
        env={"MSEWATCH_TOKENS": f"ingest:{SECRET}, read+admin:abcdef0123456789xyz ,read:{SECRET}:with:colons,"},
    )
    one, two, three = config.tokens
    assert (one.name, one.secret, one.scopes) == ("env1", SECRET, {"ingest"})
    assert (two.name, two.secret, two.scopes) == ("env2", "abcdef0123456789xyz", {"read", "admin"})
    # only the first colon separates: a token may hold colons
    assert (three.secret, three.scopes) == (f"{SECRET}:with:colons", {"read"})


def test_env_tokens_add_to_file_tokens(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'[[tokens]]\nname = "file"\ntoken = "{SECRET}"\nscopes = ["read"]\n')
    config = load_config(path, env={"MSEWATCH_TOKENS": "ingest:env-secret-000000001"})
    assert [(t.name, t.secret) for t in config.tokens] == [("file", SECRET), ("env1", "env-secret-000000001")]


@pytest.mark.parametrize("text", ["", " ", ",,", " , "])
def test_env_tokens_empty(text: str) -> None:
    assert load_config(None, env={"MSEWATCH_TOKENS": text}).tokens == ()


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (SECRET, ["MSEWATCH_TOKENS", "scope[+scope]:token"]),
        ("read:short", ["MSEWATCH_TOKENS", "token 1", "at least 16"]),
        ("read:", ["MSEWATCH_TOKENS", "token 1", "at least 16"]),
        (f"read:{SECRET},ingest:0123456789abcde", ["MSEWATCH_TOKENS", "token 2", "at least 16"]),
        (f"read:{SECRET},write:{SECRET}x", ["MSEWATCH_TOKENS", "token 2 scopes", "'write'", "ingest, read, admin"]),
        (f":{SECRET}", ["MSEWATCH_TOKENS", "token 1 scopes", "ingest, read, admin"]),
        (f"read+:{SECRET}", ["MSEWATCH_TOKENS", "token 1 scopes", "ingest, read, admin"]),
        (f"READ:{SECRET}", ["MSEWATCH_TOKENS", "'READ'"]),
        ("read:0123456789 abcdef", ["MSEWATCH_TOKENS", "no spaces"]),
    ],
)
def test_env_tokens_bad(text: str, needles: list[str]) -> None:
    with pytest.raises(InputError) as info:
        load_config(None, env={"MSEWATCH_TOKENS": text})
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert SECRET not in message  # a secret never appears in an error


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSEWATCH_TOKENS", f"admin:{SECRET}")
    (token,) = load_config(None).tokens
    assert token.secret == SECRET and token.allows("ingest")
    monkeypatch.delenv("MSEWATCH_TOKENS")
    assert load_config(None).tokens == ()
