"""The ``twistd --logger`` observers: info and above by default, the level chosen by env."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from twisted.logger import Logger

from cwmpgw import logs


@pytest.fixture(autouse=True)
def _keep_debug_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Making an observer sets ``debug_wanted`` for the process: put it back after."""
    monkeypatch.setattr(logs, "_debug", [logs.debug_wanted()])


def emit_all(observer: Any) -> None:
    log = Logger(namespace="cwmpgw.test", observer=observer)
    log.debug("a debug line {n}", n=1)
    log.info("an info line {n}", n=2)
    log.warn("a warning {n}", n=3)


def test_text_drops_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.delenv("CWMPGW_LOG_LEVEL", raising=False)
    emit_all(logs.text())
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["an info line 2", "a warning 3"]


def test_json_level_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("CWMPGW_LOG_LEVEL", "debug")
    emit_all(logs.json())
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["n"] for e in events] == [1, 2, 3]
    out.truncate(0)
    out.seek(0)
    monkeypatch.setenv("CWMPGW_LOG_LEVEL", "warn")
    emit_all(logs.json())
    assert [json.loads(line)["n"] for line in out.getvalue().splitlines()] == [3]


def test_unknown_level_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CWMPGW_LOG_LEVEL", "verbose")
    with pytest.raises(SystemExit, match="verbose"):
        logs.text()


def test_debug_wanted_follows_the_observer_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(logs, "_debug", [True])  # as in a process without our observers
    monkeypatch.delenv("CWMPGW_LOG_LEVEL", raising=False)
    logs.text()
    assert not logs.debug_wanted()
    monkeypatch.setenv("CWMPGW_LOG_LEVEL", "debug")
    logs.json()
    assert logs.debug_wanted()
