"""cwmpgw.config: defaults, every validation rule, error collection, overrides, Redis URLs."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

import cwmpgw.config as config_module
from cwmpgw.config import (
    Config,
    ConfigError,
    GatewayConfig,
    RedisTarget,
    default_config,
    load_config,
    parse_config,
)
from tests.support.paths import REPO

EXAMPLE = REPO / "cwmpgw.example.toml"
# The real schema, so a section added to the config is checked here too.
SECTIONS = dict(config_module._SECTIONS)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths resolve against a fresh directory in every test."""
    monkeypatch.chdir(tmp_path)


def errors_of(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    return info.value.errors


def toml_keys(section: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(section) if "check" in f.metadata]


# -- defaults ----------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    c = default_config()
    assert c.gateway.data_dir == str(tmp_path / "cwmpgw-data")
    assert c.gateway.node == ""
    assert (c.acs.interface, c.acs.port, c.acs.tls) == ("", 7547, True)
    assert (c.acs.cert_file, c.acs.key_file, c.acs.hostname) == ("", "", "")
    assert (c.acs.rsa_cert_file, c.acs.rsa_key_file) == ("", "")
    assert c.acs.max_body_bytes == 262144
    assert (c.acs.session_timeout, c.acs.max_session_timeout) == (30, 300)
    assert c.acs.hold_requests is False
    assert c.acs.path == "/"
    assert c.auth.realm == "cwmpgw"
    assert c.auth.schemes == ("digest",)
    assert c.auth.digest_algorithms == ("MD5", "SHA-256")
    assert c.auth.nonce_lifetime == 300
    assert c.auth.allow_basic_without_tls is False
    assert c.auth.unknown_devices == "reject"
    assert (c.auth.bootstrap_username, c.auth.bootstrap_password) == ("", "")
    assert c.auth.bootstrap_password_file == ""
    assert (c.redis.url, c.redis.prefix, c.redis.target) == ("", "cwmpgw:", None)
    assert c.events.stream_maxlen == 100000
    assert c.source is None


def test_default_config_is_parse_of_empty_and_load_of_none() -> None:
    assert parse_config({}) == default_config() == load_config(None)


def test_dataclass_defaults_match_schema_apart_from_path_resolution() -> None:
    assert dataclasses.replace(default_config(), gateway=GatewayConfig()) == Config()
    assert GatewayConfig().data_dir == "./cwmpgw-data"


def test_config_is_frozen() -> None:
    c = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.acs.port = 1  # type: ignore[misc]


def test_node_name_falls_back_to_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "box7")
    assert default_config().gateway.node_name == "box7"
    assert parse_config({"gateway": {"node": "gw-a"}}).gateway.node_name == "gw-a"


def test_certificate_hostname_falls_back_to_fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: "acs.example.net")
    assert default_config().acs.certificate_hostname == "acs.example.net"
    assert parse_config({"acs": {"hostname": "x.test"}}).acs.certificate_hostname == "x.test"


# -- single keys: accepted values ------------------------------------------------------------

GOOD = [
    ("gateway", "node", "gw-1", "gw-1"),
    ("acs", "interface", "127.0.0.1", "127.0.0.1"),
    ("acs", "interface", "::", "::"),
    ("acs", "port", 0, 0),
    ("acs", "port", 65535, 65535),
    ("acs", "tls", False, False),
    ("acs", "hostname", "acs.example.net", "acs.example.net"),
    ("acs", "max_body_bytes", 1024, 1024),
    ("acs", "max_body_bytes", 16777216, 16777216),
    ("acs", "session_timeout", 5, 5),
    ("acs", "max_session_timeout", 30, 30),
    ("acs", "hold_requests", True, True),
    ("acs", "path", "/cwmp", "/cwmp"),
    ("auth", "realm", "ACS of Example", "ACS of Example"),
    ("auth", "schemes", ["basic", "digest"], ("basic", "digest")),
    ("auth", "digest_algorithms", ["SHA-256"], ("SHA-256",)),
    ("auth", "nonce_lifetime", 10, 10),
    ("auth", "nonce_lifetime", 86400, 86400),
    ("auth", "allow_basic_without_tls", True, True),
    ("redis", "prefix", "fleet1:", "fleet1:"),
    ("events", "stream_maxlen", 100, 100),
    ("events", "stream_maxlen", 100000000, 100000000),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), GOOD)
def test_good_value(section: str, key: str, value: Any, expected: Any) -> None:
    c = parse_config({section: {key: value}})
    assert getattr(getattr(c, section), key) == expected


def test_data_dir_is_made_absolute(tmp_path: Path) -> None:
    c = parse_config({"gateway": {"data_dir": "state/gw"}})
    assert c.gateway.data_dir == str(tmp_path / "state" / "gw")
    assert parse_config({"gateway": {"data_dir": "/var/lib/x"}}).gateway.data_dir == "/var/lib/x"


# -- single keys: rejected values ------------------------------------------------------------

BAD = [
    ("gateway", "data_dir", "", "must not be empty"),
    ("gateway", "data_dir", 3, "must be a string, not an integer"),
    ("gateway", "node", "a\nb", "must not contain control characters"),
    ("acs", "interface", "localhost", "must be an IP address"),
    ("acs", "interface", 0, "must be a string, not an integer"),
    ("acs", "port", True, "must be an integer, not a boolean"),
    ("acs", "port", "7547", "must be an integer, not a string"),
    ("acs", "port", 7547.0, "must be an integer, not a float"),
    ("acs", "port", -1, "must be between 0 and 65535, got -1"),
    ("acs", "port", 65536, "must be between 0 and 65535, got 65536"),
    ("acs", "tls", 1, "must be true or false, not an integer"),
    ("acs", "tls", "false", "must be true or false, not a string"),
    ("acs", "hostname", "a b", "must not contain spaces"),
    ("acs", "max_body_bytes", 1023, "must be between 1024 and 16777216"),
    ("acs", "max_body_bytes", 16777217, "must be between 1024 and 16777216"),
    ("acs", "session_timeout", 4, "must be between 5 and 3600"),
    ("acs", "session_timeout", 3601, "must be between 5 and 3600"),
    ("acs", "max_session_timeout", 86401, "must be between 5 and 86400"),
    ("acs", "hold_requests", "yes", "must be true or false, not a string"),
    ("acs", "path", "cwmp", "must start with '/'"),
    ("acs", "path", "/a b", "without spaces"),
    ("acs", "path", "/a?b=1", "'?'"),
    ("acs", "path", [], "must be a string, not an array"),
    ("auth", "realm", "", "must not be empty"),
    ("auth", "realm", 'a"b', "must not contain quotes or backslashes"),
    ("auth", "realm", "a\\b", "must not contain quotes or backslashes"),
    ("auth", "realm", "a\r\nX-Evil: 1", "control characters"),
    ("auth", "schemes", [], "must not be empty"),
    ("auth", "schemes", "digest", "must be an array, not a string"),
    ("auth", "schemes", ["digest", "ntlm"], "unknown value 'ntlm'"),
    ("auth", "schemes", ["digest", "digest"], "duplicate 'digest'"),
    ("auth", "schemes", [1], "items must be strings, not an integer"),
    ("auth", "digest_algorithms", [], "must not be empty"),
    ("auth", "digest_algorithms", ["md5"], "unknown value 'md5'"),
    ("auth", "digest_algorithms", ["MD5", "SHA-256", "MD5"], "duplicate 'MD5'"),
    ("auth", "nonce_lifetime", 9, "must be between 10 and 86400"),
    ("auth", "nonce_lifetime", 86401, "must be between 10 and 86400"),
    ("auth", "allow_basic_without_tls", 0, "must be true or false, not an integer"),
    ("auth", "unknown_devices", "enrol", "must be one of 'reject', 'enroll', got 'enrol'"),
    ("auth", "bootstrap_username", 5, "must be a string, not an integer"),
    ("auth", "bootstrap_password", 12345, "must be a string, not an integer"),
    ("redis", "url", 6379, "must be a string, not an integer"),
    ("redis", "prefix", "", "must not be empty"),
    ("redis", "prefix", "my prefix:", "must not contain spaces"),
    ("events", "stream_maxlen", 99, "must be between 100 and 100000000"),
    ("events", "stream_maxlen", 100000001, "must be between 100 and 100000000"),
    ("events", "stream_maxlen", {"a": 1}, "must be an integer, not a table"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD)
def test_bad_value(section: str, key: str, value: Any, message: str) -> None:
    errors = errors_of({section: {key: value}})
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{section}.{key}: ")
    assert message in errors[0]


def test_bad_password_value_is_not_echoed() -> None:
    (error,) = errors_of({"auth": {"bootstrap_password": ["hunter2"]}})
    assert error == "auth.bootstrap_password: must be a string, not an array"


# -- unknown names ---------------------------------------------------------------------------


def test_unknown_section_with_suggestion() -> None:
    assert errors_of({"gatway": {"node": "x"}}) == [
        "gatway: unknown section (did you mean 'gateway'?)"
    ]


def test_unknown_section_without_suggestion() -> None:
    assert errors_of({"zzz": {}}) == ["zzz: unknown section"]


def test_unknown_key_with_path_and_suggestion() -> None:
    assert errors_of({"acs": {"prot": 1}}) == ["acs.prot: unknown key (did you mean 'port'?)"]


def test_derived_field_is_not_a_key() -> None:
    assert errors_of({"redis": {"target": "x"}}) == ["redis.target: unknown key"]


def test_section_must_be_a_table() -> None:
    assert errors_of({"acs": 7547}) == ["acs: must be a table, not an integer"]


# -- rules across keys -----------------------------------------------------------------------


def test_max_session_timeout_not_below_session_timeout() -> None:
    assert errors_of({"acs": {"session_timeout": 60, "max_session_timeout": 59}}) == [
        "acs.max_session_timeout: must be at least acs.session_timeout (60), got 59"
    ]
    c = parse_config({"acs": {"session_timeout": 60, "max_session_timeout": 60}})
    assert c.acs.max_session_timeout == 60


def test_default_max_session_timeout_checked_against_given_session_timeout() -> None:
    assert errors_of({"acs": {"session_timeout": 301}}) == [
        "acs.max_session_timeout: must be at least acs.session_timeout (301), got 300"
    ]


def test_cert_and_key_files(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    c = parse_config({"acs": {"cert_file": "c.pem", "key_file": "k.pem"}})
    assert c.acs.cert_file == str(tmp_path / "c.pem")
    assert c.acs.key_file == str(tmp_path / "k.pem")


def test_cert_without_key_and_key_without_cert() -> None:
    Path("c.pem").write_text("cert")
    assert errors_of({"acs": {"cert_file": "c.pem"}}) == [
        "acs.key_file: required when acs.cert_file is set"
    ]
    assert errors_of({"acs": {"key_file": "c.pem"}}) == [
        "acs.cert_file: required when acs.key_file is set"
    ]


def test_rsa_pair_beside_the_certificate(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "r.pem", "rk.pem"):
        (tmp_path / name).write_text("pem")
    both = {"cert_file": "c.pem", "key_file": "k.pem"}
    c = parse_config({"acs": {**both, "rsa_cert_file": "r.pem", "rsa_key_file": "rk.pem"}})
    assert (c.acs.rsa_cert_file, c.acs.rsa_key_file) == (
        str(tmp_path / "r.pem"),
        str(tmp_path / "rk.pem"),
    )
    assert errors_of({"acs": {**both, "rsa_cert_file": "r.pem"}}) == [
        "acs.rsa_cert_file: give both acs.rsa_cert_file and acs.rsa_key_file, or neither"
    ]
    assert errors_of({"acs": {**both, "rsa_key_file": "rk.pem"}}) == [
        "acs.rsa_cert_file: give both acs.rsa_cert_file and acs.rsa_key_file, or neither"
    ]
    # Alone it would silently drop the generated ECDSA pair, or serve it beside a real one.
    [error] = errors_of({"acs": {"rsa_cert_file": "r.pem", "rsa_key_file": "rk.pem"}})
    assert error.startswith("acs.rsa_cert_file: serves beside acs.cert_file")


def test_cert_files_must_exist(tmp_path: Path) -> None:
    errors = errors_of({"acs": {"cert_file": "nope.pem", "key_file": "/nonexistent/k.pem"}})
    assert errors == [
        f"acs.cert_file: no such file: {tmp_path / 'nope.pem'}",
        "acs.key_file: no such file: /nonexistent/k.pem",
    ]


def test_missing_cert_and_missing_partner_reported_together() -> None:
    errors = errors_of({"acs": {"cert_file": "nope.pem"}})
    assert len(errors) == 2
    assert errors[0].startswith("acs.cert_file: no such file")
    assert errors[1] == "acs.key_file: required when acs.cert_file is set"


def test_basic_without_tls_is_refused() -> None:
    (error,) = errors_of({"acs": {"tls": False}, "auth": {"schemes": ["digest", "basic"]}})
    assert error.startswith("auth.schemes: 'basic' sends passwords in clear text")
    assert "auth.allow_basic_without_tls" in error


def test_basic_without_tls_when_allowed() -> None:
    c = parse_config(
        {
            "acs": {"tls": False},
            "auth": {"schemes": ["basic"], "allow_basic_without_tls": True},
        }
    )
    assert (c.acs.tls, c.auth.schemes) == (False, ("basic",))


def test_basic_with_tls_and_digest_without_tls() -> None:
    assert parse_config({"auth": {"schemes": ["basic"]}}).auth.schemes == ("basic",)
    assert parse_config({"acs": {"tls": False}}).acs.tls is False


def test_enroll_requires_bootstrap_credentials() -> None:
    assert errors_of({"auth": {"unknown_devices": "enroll"}}) == [
        "auth.bootstrap_username: required when auth.unknown_devices = 'enroll'",
        "auth.bootstrap_password: required when auth.unknown_devices = 'enroll' "
        "(or set auth.bootstrap_password_file)",
    ]


def test_enroll_with_credentials() -> None:
    auth = {"unknown_devices": "enroll", "bootstrap_username": "boot", "bootstrap_password": "pw"}
    c = parse_config({"auth": auth})
    assert (c.auth.bootstrap_username, c.auth.bootstrap_password) == ("boot", "pw")


def test_bootstrap_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("  s3cret\n")
    auth = {
        "unknown_devices": "enroll",
        "bootstrap_username": "boot",
        "bootstrap_password_file": "pw",
    }
    c = parse_config({"auth": auth})
    assert c.auth.bootstrap_password == "s3cret"
    assert c.auth.bootstrap_password_file == str(tmp_path / "pw")


def test_bootstrap_password_and_file_together_is_an_error() -> None:
    Path("pw").write_text("s3cret")
    (error,) = errors_of({"auth": {"bootstrap_password": "x", "bootstrap_password_file": "pw"}})
    assert error.startswith("auth.bootstrap_password_file: cannot be used together with")


def test_bootstrap_password_file_missing_or_empty(tmp_path: Path) -> None:
    auth = {"unknown_devices": "enroll", "bootstrap_username": "boot"}
    (error,) = errors_of({"auth": {**auth, "bootstrap_password_file": "nope"}})
    assert error == f"auth.bootstrap_password_file: no such file: {tmp_path / 'nope'}"
    Path("empty").write_text(" \n")
    (error,) = errors_of({"auth": {**auth, "bootstrap_password_file": "empty"}})
    assert error == f"auth.bootstrap_password_file: {tmp_path / 'empty'} is empty"


# -- errors together -------------------------------------------------------------------------


def test_all_errors_reported_together() -> None:
    data = {
        "gatewy": {},
        "acs": {"port": 99999, "tls": "no", "bogus": 1},
        "auth": {"schemes": [], "unknown_devices": "enroll"},
        "redis": {"url": "rediss://h"},
        "events": {"stream_maxlen": 1},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    errors = info.value.errors
    assert errors == [
        "gatewy: unknown section (did you mean 'gateway'?)",
        "acs.bogus: unknown key",
        "acs.port: must be between 0 and 65535, got 99999",
        "acs.tls: must be true or false, not a string",
        "auth.schemes: must not be empty (choose from 'digest', 'basic')",
        "redis.url: TLS to Redis is not supported yet",
        "events.stream_maxlen: must be between 100 and 100000000, got 1",
        "auth.bootstrap_username: required when auth.unknown_devices = 'enroll'",
        "auth.bootstrap_password: required when auth.unknown_devices = 'enroll' "
        "(or set auth.bootstrap_password_file)",
    ]
    assert str(info.value) == "\n".join(errors)


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    data = {"acs": {"port": 1000, "tls": True}, "redis": {"prefix": "file:"}}
    overrides = {"acs.port": 2000, "acs.tls": False, "gateway.data_dir": "d"}
    c = parse_config(data, overrides=overrides)
    assert (c.acs.port, c.acs.tls, c.redis.prefix) == (2000, False, "file:")
    assert c.gateway.data_dir == str(tmp_path / "d")


def test_overrides_are_validated_like_the_file() -> None:
    errors = errors_of({}, overrides={"acs.port": "80", "redis.prefix": "a b"})
    assert errors == [
        "acs.port: must be an integer, not a string",
        "redis.prefix: must not contain spaces",
    ]


def test_override_fixes_a_bad_file_value() -> None:
    assert parse_config({"acs": {"port": -5}}, overrides={"acs.port": 5}).acs.port == 5


def test_unknown_override() -> None:
    errors = errors_of({}, overrides={"acs.prot": 1, "nope": 2, "redis.target": 3})
    assert errors == [
        "acs.prot: unknown setting (did you mean 'acs.port'?)",
        "nope: unknown setting",
        "redis.target: unknown setting (did you mean 'redis.url'?)",
    ]


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nnode = "from-file"\n')
    c = load_config(str(path), overrides={"redis.url": "redis://r:6380"})
    assert c.gateway.node == "from-file"
    assert c.redis.target == RedisTarget(host="r", port=6380, path=None, db=0)
    assert c.source == str(path)


# -- Redis URLs --------------------------------------------------------------------------------

REDIS_GOOD = [
    ("redis://localhost", RedisTarget("localhost", 6379, None, 0, None)),
    ("redis://r.example:6380/2", RedisTarget("r.example", 6380, None, 2, None)),
    ("redis://:p%40ss@10.0.0.5/", RedisTarget("10.0.0.5", 6379, None, 0, "p@ss")),
    ("redis://[::1]:7000/15", RedisTarget("::1", 7000, None, 15, None)),
    ("unix:///run/redis.sock", RedisTarget(None, None, "/run/redis.sock", 0, None)),
    ("unix:///run/redis.sock?db=3", RedisTarget(None, None, "/run/redis.sock", 3, None)),
    ("unix:///r.sock?password=x&db=1", RedisTarget(None, None, "/r.sock", 1, "x")),
]


@pytest.mark.parametrize(("url", "target"), REDIS_GOOD)
def test_redis_url(url: str, target: RedisTarget) -> None:
    c = parse_config({"redis": {"url": url}})
    assert c.redis.url == url
    assert c.redis.target == target


REDIS_BAD = [
    ("rediss://:secretpw@host", "TLS to Redis is not supported yet"),
    ("http://host:6379", "must be empty (the embedded Redis) or a redis:// or unix:// URL"),
    ("localhost:6379", "or a redis:// or unix:// URL"),
    ("redis://:secretpw@", "must name a host"),
    ("redis://:secretpw@host:99999", "has an invalid port"),
    ("redis://:secretpw@host:abc", "has an invalid port"),
    ("redis://:secretpw@host:0", "has an invalid port"),
    ("redis://user:secretpw@host", "user names are not supported"),
    ("redis://:secretpw@host/x", "the database must be a number"),
    ("redis://:secretpw@host/1?db=2", "take no query parameters"),
    ("redis://:secretpw@host/#frag", "must not have a '#fragment'"),
    ("redis://:secretpw@[::1", "is not a valid URL"),
    ("unix://host/run/redis.sock?password=secretpw", "take no host"),
    ("unix://?password=secretpw", "must name an absolute socket path"),
    ("unix:///r.sock?db=two&password=secretpw", "the database must be a number"),
    ("unix:///r.sock?password=secretpw&tls=1", "unknown query parameter 'tls'"),
]


@pytest.mark.parametrize(("url", "message"), REDIS_BAD)
def test_bad_redis_url_never_echoes_the_password(url: str, message: str) -> None:
    (error,) = errors_of({"redis": {"url": url}})
    assert error.startswith("redis.url: ")
    assert message in error
    assert "secretpw" not in error


# -- secrets stay out of repr/str ------------------------------------------------------------


def test_secrets_not_in_repr_or_str(tmp_path: Path) -> None:
    c = parse_config(
        {
            "auth": {
                "unknown_devices": "enroll",
                "bootstrap_username": "boot",
                "bootstrap_password": "Hunter2Secret",
            },
            "redis": {"url": "redis://:RedisSecret@r:6379/1"},
        }
    )
    assert c.auth.bootstrap_password == "Hunter2Secret"
    assert c.redis.target is not None and c.redis.target.password == "RedisSecret"
    for text in (repr(c), str(c), repr(c.auth), str(c.auth), repr(c.redis), repr(c.redis.target)):
        assert "Hunter2Secret" not in text
        assert "RedisSecret" not in text
    assert "bootstrap_username='boot'" in repr(c)  # the rest of the section is still shown


def test_password_from_file_not_in_repr(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("FileSecret\n")
    c = parse_config({"auth": {"bootstrap_password_file": "pw"}})
    assert c.auth.bootstrap_password == "FileSecret"
    assert "FileSecret" not in repr(c)


# -- files -------------------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[acs]\nport = 7547\nrealm = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    (error,) = info.value.errors
    assert error.startswith(f"{path}: ")
    assert "line 3" in error


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nnode = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [f"{path}: not UTF-8 text"]


def test_load_config_errors_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[acs]\nport = true\n[auth]\nrealm = ''\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == [
        "acs.port: must be an integer, not a boolean",
        "auth.realm: must not be empty",
    ]


# -- the example file stays in sync with the schema --------------------------------------------


def test_example_parses_to_the_defaults() -> None:
    c = load_config(str(EXAMPLE))
    assert c.source == str(EXAMPLE)
    assert dataclasses.replace(c, source=None) == default_config()


def test_example_sets_or_shows_every_key() -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    assert set(data) == set(SECTIONS)
    for name, section in SECTIONS.items():
        keys = toml_keys(section)
        assert keys, name
        body = re.split(r"^\[", text.split(f"\n[{name}]\n", 1)[1], maxsplit=1, flags=re.M)[0]
        for key in keys:
            assert re.search(rf"^(# )?{key} = ", body, re.M), f"{name}.{key} not in the example"
            assert f"{key}" in data[name] or key.startswith("bootstrap_"), f"{name}.{key} unset"


def test_example_bootstrap_block_is_a_working_example(tmp_path: Path) -> None:
    """Uncommenting the example (minus the file alternative) gives a valid enroll setup."""
    text = EXAMPLE.read_text()
    text = text.replace('unknown_devices = "reject"', 'unknown_devices = "enroll"')
    text = text.replace("# bootstrap_username", "bootstrap_username")
    text = text.replace("# bootstrap_password =", "bootstrap_password =")
    path = tmp_path / "enroll.toml"
    path.write_text(text)
    c = load_config(str(path))
    assert (c.auth.unknown_devices, c.auth.bootstrap_username) == ("enroll", "bootstrap")
    assert os.path.isabs(c.gateway.data_dir)


def test_provision_preset_values() -> None:
    c = parse_config(
        {
            "provision": {
                "values": [
                    {"name": "Time.NTPServer1", "value": "ntp"},
                    {"name": "X.Y", "value": 5, "type": "unsignedInt"},
                ]
            }
        }
    )
    assert c.provision.values == (
        ("Time.NTPServer1", "ntp", "xsd:string"),
        ("X.Y", "5", "xsd:unsignedInt"),
    )
    with pytest.raises(ConfigError) as e:
        parse_config(
            {
                "provision": {
                    "values": [
                        {"name": "X.Y", "value": -1, "type": "xsd:unsignedInt"},
                        {"name": "A.", "value": "x"},
                        "nope",
                    ]
                }
            }
        )
    text = str(e.value)
    assert "provision.values: [0].value:" in text


def test_task_defaults_are_the_configuration_defaults() -> None:
    """One set of task defaults: the providers' (tasks.rules.DEFAULTS) are the config's."""
    from dataclasses import asdict

    from cwmpgw.config import parse_config
    from cwmpgw.tasks.rules import DEFAULTS

    tasks = parse_config({}).tasks
    assert {k: getattr(tasks, k) for k in asdict(DEFAULTS)} == asdict(DEFAULTS)
