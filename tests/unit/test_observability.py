"""Log formats: JSON lines for machines, console lines for people."""

from __future__ import annotations

import json

import structlog

from gateway.ops.observability import configure_logging


def emit(capsys, fmt: str) -> str:
    configure_logging("info", fmt)
    structlog.get_logger("t").info("request", status=200, service="elvis")
    structlog.get_logger("t").debug("hidden")
    out = capsys.readouterr().out
    structlog.reset_defaults()
    return out


def test_json_format_is_one_object_per_line(capsys):
    line, = emit(capsys, "json").splitlines()
    record = json.loads(line)
    assert record["event"] == "request" and record["status"] == 200 and record["level"] == "info"


def test_console_format_is_readable(capsys):
    out = emit(capsys, "console")
    assert "request" in out and "status=200" in out and not out.lstrip().startswith("{")


def test_auto_format_is_json_when_not_a_terminal(capsys):
    json.loads(emit(capsys, "auto"))
