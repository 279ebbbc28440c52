"""Issue 10 item 12: errors and logs stay ours, in-process: a log line that cannot be written is
counted, never raised; a library traceback is one JSON line without locals. Against the real
`gateway serve` process: tests/integration/test_edge_logs_and_errors_gateway.py."""

from __future__ import annotations

import errno
import json

import pytest

from gateway.ops.observability import LineWriter


class FailingStream:
    """A stream whose writes fail with `error` (a fake: the unit under test is LineWriter)."""

    def __init__(self, error: OSError | ValueError) -> None:
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("error", [
    BrokenPipeError(errno.EPIPE, "Broken pipe"),
    BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError("I/O operation on closed file"),
])
def test_a_failed_log_write_is_counted_never_raised(error):
    writer = LineWriter(FailingStream(error))
    for _ in range(3):
        writer.write_line('{"event": "request"}')
    assert writer.errors == 3


def test_library_tracebacks_are_one_json_line_without_locals(capsys):
    import logging

    import structlog

    from gateway.ops.observability import configure_logging

    configure_logging("info", "json")
    try:
        secret = "s3cret-token"  # noqa: F841 - a local a traceback with locals would print
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "10.0.0.1")
    out = capsys.readouterr().out
    structlog.reset_defaults()
    line, = out.splitlines()
    record = json.loads(line)
    assert record["event"] == "Error handling request from 10.0.0.1" and record["logger"] == "aiohttp.server"
    assert record["exception"][0]["exc_type"] == "RuntimeError"
    assert "Traceback" not in out and "s3cret-token" not in out
