"""Helpers for the hardened-edge tests: a `gateway serve` process with config changes, the pids
its workers log, and polls (with deadlines) for ports and processes going away."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import yaml
from tests.support.served import Served


def served_with(chain, plugin, signing_key, tmp_path: Path, **changes) -> Served:
    """`Served` (tests/support/served.py) with top-level config keys changed, e.g. workers=2."""
    served = Served(chain, plugin, signing_key, tmp_path)
    data = yaml.safe_load(served.path.read_text())
    data.update(changes)
    served.path.write_text(yaml.safe_dump(data))
    return served


def listening(served: Served, start: int = 0) -> list[dict]:
    """The `listening` log lines (one per worker start) from line `start` on."""
    return [json.loads(line) for line in served.child.lines[start:] if '"event": "listening"' in line]


def wait_for_workers(served: Served, count: int, timeout: float = 30.0) -> dict[int, int]:
    """Wait until `count` workers listen; {slot: pid} of the latest start of each slot."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {line["worker"]: line["pid"] for line in listening(served)}
        if len(pids) >= count:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not listen in {timeout}s:\n" + "\n".join(served.child.lines[-20:]))
        served.child.wait_for(r'"event": "listening"', timeout=max(0.1, deadline - time.monotonic()),
                              start=len(served.child.lines))


def accepts(port: int) -> bool:
    """Does anything accept a TCP connection on 127.0.0.1:port right now?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def gone(pid: int) -> bool:
    """The process is no more (or a zombie nobody reaped yet: it runs nothing and holds no socket)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def descendants_of(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            out.append(child)
            todo.append(child)
    return out
