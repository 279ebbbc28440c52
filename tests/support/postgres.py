"""A real PostgreSQL for the tests: one throwaway cluster per test session, a new database per test.

`initdb` + `pg_ctl` from Debian's `postgresql` package (scripts/install-postgres puts it there;
scripts/test runs it) in a temp folder, trust auth on 127.0.0.1 and a free port, stopped and
deleted at the end of the session. The server refuses to run as root, and CI runs as root: then
it runs as the `postgres` user (runuser). fsync stays on: the ledger's durability is what it is
in production.

Test modules import the `postgres` fixture (session) and `postgres_url` (a new database). Without
the server binaries the fixture fails in CI (CI must install them) and skips elsewhere, saying how
to install them.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from gateway.dev.chain import free_port

INSTALL_HINT = "run scripts/install-postgres (Debian's postgresql package)"


def server_binaries() -> Path | None:
    """The newest PostgreSQL's bin folder (Debian's layout, or initdb on the PATH), None if absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]))  # /usr/lib/postgresql/<15>/bin/initdb
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """One cluster: `url(dbname)` to connect, `new_database()` for a fresh, empty database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.port = 0
        self.user = "gw"
        self._as: list[str] = []
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        if os.geteuid() == 0:
            # Why another user: postgres refuses to run as root, and CI runs as root.
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"running as root and there is no 'postgres' user: {INSTALL_HINT}") from None
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}\n{log}")

    def start(self) -> "PostgresServer":
        self._run(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", self.user,
                  "-E", "UTF8", "--no-locale", "--no-sync")  # no-sync: only initdb's own files, not the server's
        for attempt in range(3):  # a free port may be taken by someone else before the server binds it
            self.port = free_port()
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                          "-w", "-t", "30", "start",
                          "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300")
                return self
            except RuntimeError:
                if attempt == 2:
                    raise
        return self

    def stop(self) -> None:
        if self.dir.exists():
            if (self.dir / "data" / "postmaster.pid").exists():
                subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                                "-w", "stop"], capture_output=True, timeout=60)
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def psql(self, url: str, sql: str) -> str:
        """Run SQL with psql (synchronous: for fixtures and clocks outside the event loop)."""
        psql = self.bin / "psql" if (self.bin / "psql").exists() else shutil.which("psql") or "psql"
        done = subprocess.run([str(psql), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def new_database(self) -> str:
        with self._lock:
            name = f"test_{next(self._names)}"
        self.psql(self.url(), f'CREATE DATABASE "{name}"')
        return self.url(name)


_server: PostgresServer | None = None


def shared_server() -> PostgresServer:
    """The session's one cluster, started on first use (several test modules import the fixture)."""
    global _server
    if _server is None:
        bin_dir = server_binaries()
        if bin_dir is None:
            message = f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}"
            if os.environ.get("CI"):
                pytest.fail(message, pytrace=False)  # CI must install them: never a silent pass
            pytest.skip(message)
        server = PostgresServer(bin_dir)
        atexit.register(server.stop)  # also when the session dies before the fixture's teardown
        _server = server.start()
    return _server


@pytest.fixture(scope="session")
def postgres():
    server = shared_server()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres) -> str:
    """A new, empty database on the session's cluster."""
    return postgres.new_database()


class ShiftedClock:
    """A test clock for the PostgreSQL ledger: moving `now` moves the host's clock (what the
    ledger measures ages with) AND the database's `ledger_now()` of this test's database by as
    much, so expiry tests need not sleep. Install after the ledger's migrations."""

    def __init__(self, server: PostgresServer, url: str, start: float = 1_000_000.0) -> None:
        self._now = start
        self._server, self._url = server, url

    def install(self) -> None:
        self._server.psql(self._url, (
            "CREATE TABLE test_clock_shift (secs FLOAT8 NOT NULL); INSERT INTO test_clock_shift VALUES (0);"
            " CREATE OR REPLACE FUNCTION ledger_now() RETURNS timestamptz LANGUAGE sql VOLATILE AS"
            " 'SELECT clock_timestamp() + make_interval(secs => (SELECT secs FROM test_clock_shift))'"))

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        self._server.psql(self._url, f"UPDATE test_clock_shift SET secs = secs + {float(value - self._now)!r}")
        self._now = value
