"""Where log lines go: stdout, without ever blocking the event loop or failing a request.

`LineWriter.write_line` takes one rendered line. Two ways out:

- **In the event loop's thread** (every access-log line), when stdout is a real file: the line is
  appended to a batch, and the batch is written once per loop iteration (`loop.call_soon`), as
  few `write` calls as there are PIPE_BUF-sized groups of whole lines. Why: one write per line is
  one system call per request; a busy worker answers dozens of requests per iteration. When stdout
  is a pipe or a terminal, the batch goes out through a descriptor of our own opened NON-BLOCKING
  on the same pipe (`/proc/self/fd/1`), so a reader that stops reading never stalls a worker: what
  the pipe does not take waits (up to MAX_PENDING bytes) until it drains (`loop.add_writer`), and
  lines past that bound are dropped and counted. Why not O_NONBLOCK on fd 1 itself: that flag
  belongs to the open file, shared with the shell and the supervisor that started us.
- **Anywhere else** (no running loop: start-up, shutdown, a worker thread, a test's buffer): the
  line is written at once, as before (after any batched lines of this thread, so the order holds).

Either way a write that fails (EPIPE: the reader is gone; ENOSPC; a closed file) is counted
(`errors`, and the process's `gateway_log_write_errors` counter) and dropped, never raised. Lines
still batched when the process stops are written by `flush()` (called at exit and by the worker
when its loop ends); a SIGKILL loses at most one loop iteration's lines.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import stat
import threading
from typing import Callable, TextIO

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)  # a pipe write up to this size is never interleaved
MAX_PENDING = 1 << 20  # bytes waiting for a full pipe to drain; past this, new lines are dropped


class LineWriter:
    """Writes whole log lines to a text stream; a failed write is counted and dropped, never raised.

    Why: a request must never fail, nor wait, because its log line could not be written (a closed
    terminal answers EPIPE to every write; a full disk ENOSPC; a pipe nobody reads fills up)."""

    def __init__(self, stream: TextIO, fd: int | None = None, on_dropped: Callable[[int], None] | None = None) -> None:
        """`fd`: a descriptor of the same file for the loop's batched writes (see `batch_fd`); None:
        every line is written at once. `on_dropped(n)`: told of every n lines dropped."""
        self._stream = stream
        self._fd = fd
        self._on_dropped = on_dropped
        self._lock = threading.Lock()  # whole lines, also when a worker thread logs
        self._gone = False
        self.errors = 0
        self._owner: asyncio.AbstractEventLoop | None = None  # the loop whose thread batches
        self._batch: list[str] = []
        self._chunks: list[bytes] = []  # encoded groups of whole lines a full pipe has not taken yet
        self._pending = 0  # bytes in _chunks
        self._scheduled = False  # a flush is due in this loop iteration
        self._waiting = False  # the pipe was full: the loop calls us back once it is writable

    def write_line(self, line: str) -> None:
        if self._fd is not None and not self._gone:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and (self._owner is loop or self._owner is None):
                self._owner = loop
                self._batch.append(line)
                if not self._scheduled and not self._waiting:
                    self._scheduled = True
                    loop.call_soon(self._flush)
                return
            if loop is None and threading.current_thread() is threading.main_thread():
                self.flush()  # the loop has ended: its lines first, then this one
        self._write_now(line)

    def flush(self) -> None:
        """Write what is batched now, without waiting for a full pipe (what it refuses is dropped)."""
        self._flush(final=True)

    # --- batched (event loop thread) ---------------------------------------------------------------

    def _flush(self, final: bool = False) -> None:
        self._scheduled = False
        if self._batch:
            self._take(self._batch)
            self._batch = []
        while self._chunks and not self._gone:
            chunk = self._chunks[0]
            try:
                n = os.write(self._fd, chunk)
            except BlockingIOError:
                if final or not self._wait_writable():
                    self._drop_chunks()
                return
            except BrokenPipeError:
                self._broken()
                return
            except OSError:  # ENOSPC, EBADF ...: these lines are lost
                self._drop(chunk.count(b"\n"))
                self._pending -= len(chunk)
                del self._chunks[0]
                continue
            self._pending -= n
            if n == len(chunk):
                del self._chunks[0]
            else:  # only for a group longer than PIPE_BUF (one long line) or a regular file
                self._chunks[0] = chunk[n:]

    def _take(self, lines: list[str]) -> None:
        """Encode `lines` into groups of whole lines of at most PIPE_BUF bytes (a longer line alone):
        a pipe write of that size is atomic, so the workers' lines never interleave mid-line."""
        group: list[bytes] = []
        size = 0
        for line in lines:
            data = (line + "\n").encode("utf-8", "backslashreplace")
            if self._pending + len(data) > MAX_PENDING:
                self._drop(1)  # the pipe has not drained for a while: this line is dropped, counted
                continue
            if size + len(data) > PIPE_BUF and group:
                self._chunks.append(b"".join(group))
                group, size = [], 0
            group.append(data)
            size += len(data)
            self._pending += len(data)
        if group:
            self._chunks.append(b"".join(group))

    def _wait_writable(self) -> bool:
        """The pipe is full: resume when the loop sees it writable (lines meanwhile are batched)."""
        assert self._owner is not None and self._fd is not None
        try:
            self._owner.add_writer(self._fd, self._writable)
        except (NotImplementedError, RuntimeError, ValueError, OSError):
            return False
        self._waiting = True
        return True

    def _writable(self) -> None:
        assert self._owner is not None and self._fd is not None
        self._owner.remove_writer(self._fd)
        self._waiting = False
        self._flush()

    def _drop_chunks(self) -> None:
        self._drop(sum(chunk.count(b"\n") for chunk in self._chunks))
        self._chunks, self._pending = [], 0

    # --- at once ------------------------------------------------------------------------------------

    def _write_now(self, line: str) -> None:
        with self._lock:
            if self._gone:
                self._drop(1)  # the reader is gone for good: the line is dropped
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except BrokenPipeError:
                self._drop(1)
                self._broken()
            except (OSError, ValueError):  # ENOSPC, EAGAIN, a closed file: this line is lost
                self._drop(1)

    # --- failures -----------------------------------------------------------------------------------

    def _drop(self, n: int) -> None:
        if n:
            self.errors += n
            if self._on_dropped is not None:
                self._on_dropped(n)

    def _broken(self) -> None:
        """The read end is closed and never comes back: stop writing, and point the descriptors at
        /dev/null so that Python's own flush at exit does not fail either."""
        self._gone = True
        self._drop(len(self._batch) + sum(chunk.count(b"\n") for chunk in self._chunks))
        self._batch, self._chunks, self._pending = [], [], 0
        if self._waiting and self._owner is not None and self._fd is not None:
            self._owner.remove_writer(self._fd)
            self._waiting = False
        fds = [self._fd] if self._fd is not None else []
        try:
            fds.append(self._stream.fileno())
        except (OSError, ValueError, AttributeError):  # not a real file (a test's buffer)
            pass
        for fd in fds:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
            except OSError:
                return
            try:
                os.dup2(null, fd)
            except OSError:
                pass
            finally:
                os.close(null)


_batch_fds: dict[tuple[int, int], int] = {}  # (device, inode) of a stdout -> our descriptor for it


def batch_fd(stream: TextIO) -> int | None:
    """A descriptor for batched writes to `stream`: non-blocking of our own for a pipe or a terminal,
    a duplicate for a regular file or a socket; None when `stream` is not a real file (a test's
    buffer). One per file per process (re-configuring the logs reuses it)."""
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return None
    key = (info.st_dev, info.st_ino)
    cached = _batch_fds.get(key)
    if cached is not None:
        try:
            same = os.fstat(cached)
            if (same.st_dev, same.st_ino) == key:
                return cached
        except OSError:
            pass
    own = None
    if stat.S_ISFIFO(info.st_mode) or stat.S_ISCHR(info.st_mode):
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENXIO, errno.EACCES, errno.EPERM):
                raise
            # no /proc, or a pipe with no reader any more: lines are written at once (and fail at once)
            return None
    else:
        # A regular file never answers EAGAIN; a socket (journald's stream) is left blocking, as it
        # was: a new description of it cannot be opened through /proc.
        own = os.dup(fd)
    _batch_fds[key] = own
    return own
