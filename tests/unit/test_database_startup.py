"""Processes that open the same new ledger file at the same moment (a multi-worker start, a CLI
command beside a starting gateway) never fail with "database is locked"."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3

from gateway.ledger.database import SqliteDatabase
from gateway.ledger.sqlite import MIGRATIONS, SqliteLedger
from gateway.auth.state import auth_state

PROCESSES = 4
ROUNDS = 60


def _open_and_migrate(path: str, start: multiprocessing.Barrier, errors: multiprocessing.Queue) -> None:
    async def main() -> None:
        db = SqliteDatabase(path)
        try:
            await SqliteLedger(db).open()
            await auth_state(db).open()
        finally:
            await db.close()

    start.wait()  # every process opens the new file at the same moment
    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001 - reported to the test
        errors.put(repr(exc))


def test_processes_opening_a_new_ledger_at_once_never_see_database_is_locked(tmp_path):
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"ledger-{round_}.db")
        start = ctx.Barrier(PROCESSES)
        procs = [ctx.Process(target=_open_and_migrate, args=(path, start, errors)) for _ in range(PROCESSES)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [p.exitcode for p in procs] == [0] * PROCESSES
        assert errors.empty(), errors.get()
        # One schema, migrated once, and one shared nonce secret.
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version FROM schema_versions WHERE component = 'ledger'").fetchone() == (
                len(MIGRATIONS),)
            assert conn.execute("SELECT COUNT(*) FROM auth_secrets").fetchone() == (1,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_config_without_x402_or_oauth_still_creates_their_tables_for_a_later_reload(tmp_path):
    """A reload may turn x402 or OAuth on, and a reload cannot migrate: start-up creates every table."""
    from gateway.app import prepare_database
    from gateway.config.load import parse_config

    data = {"listen": "127.0.0.1:0", "base_domain": "proxy.localhost", "chains": {},
            "services": {"plain": {"upstream": "http://127.0.0.1:9", "open_endpoints": ["GET /"]}},
            "metering": {"ledger": f"sqlite:///{tmp_path / 'ledger.db'}"}}
    config = parse_config(data, {})
    assert not any(s.x402 for s in config.services.values()) and config.tokens.own is None
    prepare_database(config)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"x402_payments", "oauth_clients", "oauth_codes", "oauth_refresh_tokens"} <= tables
