"""Issue 16: the access log is batched per loop iteration, never blocks the event loop on a pipe
nobody reads, and renders the same line structlog would (gateway/ops/log_writer.py,
gateway/ops/observability.py). Real pipes, no fakes."""

from __future__ import annotations

import asyncio
import json
import os

import structlog

from gateway.ops.log_writer import MAX_PENDING, LineWriter, batch_fd
from gateway.ops.observability import configure_logging, log_request

FIELDS = {"request_id": "0123456789abcdef0123456789abcdef", "method": "GET", "path": "/open", "service": "bench",
          "rule": "GET /open", "decision": "open", "subscriber": None, "status": 200, "upstream_status": 200,
          "credits": None, "code": None, "duration_ms": 1.234}


def read_lines(fd: int, count: int) -> list[str]:
    """Blocking reads until `count` whole lines have arrived (run in a thread)."""
    data = b""
    while data.count(b"\n") < count:
        chunk = os.read(fd, 1 << 16)
        assert chunk, "the pipe closed early"
        data += chunk
    return data.decode().splitlines()


def test_a_pipe_nobody_reads_never_blocks_the_loop_and_whole_lines_arrive_in_order():
    async def scenario() -> tuple[LineWriter, list[str], int]:
        r, w = os.pipe()
        stream = os.fdopen(w, "w")
        writer = LineWriter(stream, batch_fd(stream))
        sent = 20_000  # ~4 MB: far more than the pipe holds (64 KiB) and than MAX_PENDING
        for i in range(sent):
            writer.write_line(f"{i:06d} " + "x" * 200)
        await asyncio.sleep(0)  # one loop iteration: the batch is written, as much as the pipe takes
        dropped = writer.errors
        # Nobody has read yet, and this coroutine runs: the loop was never blocked. The rest waits.
        lines = await asyncio.get_running_loop().run_in_executor(None, read_lines, r, sent - dropped)
        stream.close()
        os.close(r)
        return writer, lines, dropped

    writer, lines, dropped = asyncio.run(scenario())
    assert dropped > 0 and 20_000 - dropped >= MAX_PENDING // 208  # past MAX_PENDING: dropped and counted
    numbers = [int(line.split()[0]) for line in lines]
    assert numbers == sorted(numbers) and numbers[0] == 0  # in order, from the first
    assert all(line == f"{n:06d} " + "x" * 200 for n, line in zip(numbers, lines))  # never cut mid-line


def test_lines_of_one_iteration_go_out_together_and_before_a_later_line_written_at_once():
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    writer = LineWriter(stream, batch_fd(stream))

    async def in_the_loop() -> None:
        writer.write_line("one")
        writer.write_line("two")

    asyncio.run(in_the_loop())
    writer.write_line("three")  # no loop: written at once, after what the loop batched
    assert read_lines(r, 3) == ["one", "two", "three"]
    assert writer.errors == 0
    stream.close()
    os.close(r)


def test_the_fast_access_line_is_the_line_structlog_writes(capsys):
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(worker=3)
    try:
        log_request(dict(FIELDS))
        structlog.get_logger("gateway.access").info("request", **FIELDS)
    finally:
        structlog.contextvars.clear_contextvars()
    fast, slow = capsys.readouterr().out.splitlines()
    structlog.reset_defaults()
    fast_record, slow_record = json.loads(fast), json.loads(slow)
    assert fast_record.pop("timestamp").endswith("Z") and slow_record.pop("timestamp").endswith("Z")
    assert list(fast_record.items()) == list(slow_record.items())  # same keys, same order, same values
    assert fast_record["worker"] == 3 and fast_record["event"] == "request" and fast_record["level"] == "info"


def test_the_access_line_reaches_capture_logs():
    configure_logging("info", "json")
    try:
        with structlog.testing.capture_logs() as logs:
            log_request(dict(FIELDS))
    finally:
        structlog.reset_defaults()
    assert logs and logs[0]["event"] == "request" and logs[0]["path"] == "/open"


def test_no_access_line_above_info(capsys):
    configure_logging("warning", "json")
    log_request(dict(FIELDS))
    structlog.reset_defaults()
    assert capsys.readouterr().out == ""
