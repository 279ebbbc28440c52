"""Child processes for the demo and the integration tests: start, wait until a
line says it is ready, keep draining its output, stop it by PID.

A child dies with this process (kill -9 included): it is started with the parent-death signal
(`gateway.process.parent_death`). Linux sends it when the *thread* that started the child exits, so start
children from a thread that lives as long as they should (the main thread, in the demo and tests).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from functools import partial
from typing import Sequence

from gateway.process.parent_death import die_with_parent

REPO = Path(__file__).resolve().parents[2]


class ChildProcess:
    """A running child whose combined output is collected line by line in `lines`."""

    def __init__(self, cmd: Sequence[str], ready: str, env: dict[str, str] | None = None,
                 cwd: Path = REPO, timeout: float = 20.0) -> None:
        self.cmd = list(cmd)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            self.cmd, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=partial(die_with_parent, os.getpid()),
        )
        threading.Thread(target=self._drain, daemon=True).start()
        self.ready_match = self.wait_for(ready, timeout)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0) -> re.Match[str]:
        """Block until an output line (from index `start`) matches; fail if the child exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None and seen == len(self.lines):
                    raise RuntimeError(f"{self.cmd[0]} exited ({self.proc.returncode}) before {pattern!r}:\n"
                                       + "\n".join(self.lines[-30:]))
                if remaining <= 0:
                    raise TimeoutError(f"no {pattern!r} from {' '.join(self.cmd)} in {timeout}s:\n"
                                       + "\n".join(self.lines[-30:]))
                self._cond.wait(min(remaining, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
