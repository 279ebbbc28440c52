"""The embedded SQLite database behind the ledger and the sign-in state.

One connection, used only by one dedicated thread, so the event loop never
blocks on disk I/O and every statement of a transaction runs in order. The event
loop hands it work through a queue (one cheap `put` per call, no executor future
per call) and is answered with one wake-up per batch. WAL mode
with `synchronous=FULL`: a transaction that returned is on disk, whatever
happens to the process afterwards. Writers take `BEGIN IMMEDIATE`, which also
serializes worker processes sharing the file.

Group commit: write transactions that arrive while the thread is busy are run
together in ONE `BEGIN IMMEDIATE ... COMMIT` (one fsync), each inside its own
SAVEPOINT so that one that fails rolls back alone. Each caller is answered only
after that COMMIT: "returned" still means "on disk". A batch made only of
`pure` transactions (the request path's: nothing but their statements and their
answer, safe to run twice) runs without the savepoints; if one of them fails,
the batch is rolled back and run again with them. Why: every statement hands the
GIL to the event loop and back, and under load that hand-over, not SQLite,
is what a transaction costs (two statements of six for a charge).

Each component (ledger, auth state) owns a list of migrations; the applied
version is kept per component in `schema_versions`.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

T = TypeVar("T")
Migration = str  # one SQL script; its position in the list (from 1) is its version


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/or/absolute/path.db` -> Path (`sqlite:////abs` is also absolute)."""
    if not url.startswith("sqlite:///"):  # a guard: gateway.config.values.ledger_url refuses it first
        raise ValueError(f"not a sqlite:/// URL: {url}")
    return Path(url[len("sqlite:///"):])


class _Work(NamedTuple):
    """One call for the database thread. kind: "write" (group-committed), "run" (alone, outside
    any transaction) or "close" (the last one)."""

    kind: str
    fn: Callable
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    durable: bool
    pure: bool


class SqliteDatabase:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()  # work for the database thread
        self._thread: threading.Thread | None = None  # started with the first call
        self._closed = False
        self._sync = "FULL"
        self._lock_fd: int | None = None
        self.commits = 0       # group commits done (for tests and metrics)
        self.transactions = 0  # transactions they carried

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            file_backed = str(self.path) != ":memory:"
            if file_backed:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Worker processes sharing the file queue for its write lock here, in the kernel:
                # the next writer wakes the moment the lock is free (no polling, no sleeps).
                self._lock_fd = os.open(f"{self.path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
                # Why under the lock: switching a new file to WAL needs an exclusive lock that SQLite
                # may refuse at once (no busy wait) while another process opens the same new file.
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
                conn.row_factory = sqlite3.Row
                # A busy timeout before the first statement: other processes (a CLI command, a
                # worker) may hold a lock that is not ours to queue for on the flock.
                conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                # From here on, write locks held by other worker processes are waited for by `_begin`
                # (short, even retries), not by SQLite's busy handler, whose sleeps grow to 100 ms.
                conn.execute("PRAGMA busy_timeout=0")
            finally:
                if self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._conn = conn
        return self._conn

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run `fn(conn)` on the database thread (reads, or writes that manage their own transaction).
        Queued at once; await the answer."""
        return self._submit("run", fn, True)

    def transaction(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True,
                    pure: bool = False) -> asyncio.Future[T]:
        """Run `fn(conn)` atomically (its own SAVEPOINT inside a group commit); return once committed.

        `durable=False`: the commit need not reach the disk (fsync) before returning, for state that
        is void after a crash anyway (credit holds). Other processes see it at once all the same.
        `pure`: `fn` does nothing but run its statements and return (no other effect), so it may
        run twice; a batch of such transactions needs no savepoints (see the module's doc).
        Queued at once (in call order); await the answer."""
        return self._submit("write", fn, durable, pure)

    def _submit(self, kind: str, fn: Callable, durable: bool, pure: bool = False) -> asyncio.Future:
        if self._closed:
            raise RuntimeError(f"{self.path}: the database is closed")
        if self._thread is None:
            # A daemon: an interpreter that exits without `close` is not held up by it; a commit it
            # cuts short is rolled back by SQLite, and nobody was told it was done.
            self._thread = threading.Thread(target=self._serve, name=f"sqlite-{self.path.name}", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Work(kind, fn, future, loop, durable, pure))
        return future

    def _serve(self) -> None:
        """The database thread: everything queued so far is one batch (its writes one group commit)."""
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            answers: dict[Any, list] = {}  # one wake-up per event loop, not one per call
            writes = [work for work in batch if work.kind == "write"]
            if writes:
                for work, outcome in zip(writes, self._group_commit(writes)):
                    answers.setdefault(work.loop, []).append((work.future, *outcome))
            closing = False
            for work in batch:
                if work.kind == "write":
                    continue
                closing = closing or work.kind == "close"
                try:
                    outcome: tuple[bool, object] = (True, work.fn(self._open() if work.kind == "run" else None))
                except Exception as exc:  # noqa: BLE001 - handed to that caller
                    outcome = (False, exc)
                answers.setdefault(work.loop, []).append((work.future, *outcome))
            for loop, settled in answers.items():
                try:
                    loop.call_soon_threadsafe(_settle_all, settled)
                except RuntimeError:  # (that event loop is closed: nobody is waiting)
                    pass
            if closing:
                return

    def _group_commit(self, batch: list[_Work]) -> list[tuple[bool, object]]:
        """On the database thread: these writes in one transaction; each one's outcome."""
        outcomes: list[tuple[bool, object]] | None
        try:
            conn = self._open()
            # FULL: the WAL is fsynced at COMMIT (and with it every earlier NORMAL commit).
            sync = "FULL" if any(work.durable for work in batch) else "NORMAL"
            if sync != self._sync:
                conn.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            _begin(conn)
            outcomes = _run_bare(conn, batch) if all(work.pure for work in batch) else None
            if outcomes is None:  # not all pure, or one failed (rolled back): each in its savepoint
                if not conn.in_transaction:
                    _begin(conn)
                outcomes = _run_each(conn, batch)
            conn.execute("COMMIT")
            self.commits += 1
            self.transactions += len(batch)
        except Exception as exc:  # noqa: BLE001 - BEGIN/COMMIT failed: nobody's write is durable
            if self._conn is not None and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            outcomes = [(False, exc)] * len(batch)
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return outcomes

    async def writable(self) -> bool:
        """An empty write transaction: takes the write lock and commits nothing (raises if it cannot)."""
        await self.transaction(lambda conn: None, durable=False)
        return True

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply the component's migrations not applied yet; return its schema version."""

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
            current = row[0] if row else 0
            if current > len(migrations):
                raise RuntimeError(f"{self.path}: {component} schema v{current} is newer than this gateway (v{len(migrations)})")
            for version in range(current + 1, len(migrations) + 1):
                for statement in _statements(migrations[version - 1]):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_versions VALUES (?, ?) ON CONFLICT(component) DO UPDATE SET version = ?",
                             (component, version, version))
            return len(migrations)

        return await self.transaction(apply)

    async def close(self) -> None:
        """Finish what is queued, close the connection, stop the thread."""
        def close(_conn: None) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        if self._closed:
            return
        if self._thread is None:
            self._closed = True
            return
        closed = self._submit("close", close, False)
        self._closed = True  # nothing more is taken
        await closed


LOCK_WAIT = 30.0  # seconds a writer waits for another process's transaction before failing


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retrying every ~0.2-1 ms while another process holds the write lock."""
    deadline = time.monotonic() + LOCK_WAIT
    pause = 0.0002
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # on the database thread, never the event loop
        pause = min(pause * 1.5, 0.001)


def _run_each(conn: sqlite3.Connection, batch: list[_Work]) -> list[tuple[bool, object]]:
    """Each transaction in its own SAVEPOINT: one that fails rolls back alone."""
    outcomes: list[tuple[bool, object]] = []
    for work in batch:
        conn.execute("SAVEPOINT one")
        try:
            outcomes.append((True, work.fn(conn)))
            conn.execute("RELEASE one")
        except Exception as exc:  # noqa: BLE001 - handed to that caller
            conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
            outcomes.append((False, exc))
    return outcomes


def _run_bare(conn: sqlite3.Connection, batch: list[_Work]) -> list[tuple[bool, object]] | None:
    """Pure transactions one after the other, no savepoints; None (everything rolled back) if one fails."""
    outcomes: list[tuple[bool, object]] = []
    try:
        for work in batch:
            outcomes.append((True, work.fn(conn)))
    except Exception:  # noqa: BLE001 - the batch runs again with savepoints: its error is seen there
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return None
    return outcomes


def _settle_all(settled: list) -> None:
    for future, ok, value in settled:
        _settle(future, ok, value)


def _settle(future: asyncio.Future, ok: bool, value) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our DDL strings)."""
    return [part.strip() for part in script.split(";") if part.strip()]


def rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(r) for r in cursor.fetchall()]
