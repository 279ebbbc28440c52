"""At most one gateway, hence one settler, per ledger: an exclusive lock, not a convention.

`gateway serve` takes an exclusive, non-blocking flock on `<ledger>.settler.lock` before it
listens and keeps it for its whole life. The process that settles holds it too: the worker in
slot 0 inherits the locked file (fork shares the open file) and the other workers close their
copy. The kernel releases the lock when the last holder dies, whatever killed it, so a restart
(or a replacement of worker 0) never waits for a stale lock file to be cleaned up.

A second gateway on the same ledger (another listen port, the same file) refuses to start:
two gateways on one single-host ledger file is not a supported topology (replicas share a
PostgreSQL ledger instead, where no file lock is taken and the settler is elected in the
database: `gateway.ledger.settler_lease`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gateway.ledger.database import sqlite_path


class LedgerInUse(Exception):
    """Another running process holds the ledger's settler lock."""


def lock_path(ledger_url: str) -> Path:
    return Path(f"{sqlite_path(ledger_url)}.settler.lock")


def hold_ledger(ledger_url: str) -> int:
    """Lock the ledger for this process (and the children it forks); returns the locked fd."""
    path = lock_path(ledger_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LedgerInUse(f"the ledger {sqlite_path(ledger_url)} is in use by another gateway (pid {holder}; "
                          f"lock {path}): one gateway per ledger") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above: who holds it
    return fd
