"""Sign-in is cheap to abuse no more (issue 10, item 11), in-process: the per-address rate-limit
buckets refill (IPv6 hosts share their /64) and the shared balances table stays bounded by rate
times TTL. Against the real app or `gateway serve`: tests/integration/test_edge_signin_abuse_gateway.py."""

from __future__ import annotations

import sqlite3

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.ledger.database import SqliteDatabase
from gateway.credits.shared_balances import PRUNE_BATCH, SharedBalance, SharedBalances
from gateway.auth.signin_rate import SigninRateLimit
from tests.support.stack import HOST


def test_rate_limit_buckets_refill_and_ipv6_hosts_share_their_64():
    now = [1000.0]
    limit = SigninRateLimit((2, 10.0), clock=lambda: now[0])

    def attempt(peer: str) -> int:
        request = make_mocked_request("GET", "/.gateway/nonce", headers={"Host": HOST})
        request = request.clone(remote=peer)
        try:
            limit.check(request)
            return 200
        except Exception as exc:  # Problem
            return exc.status

    assert [attempt("2001:db8:1:2::1"), attempt("2001:db8:1:2:ffff::9"), attempt("2001:db8:1:2::77")] == \
        [200, 200, 429]  # one /64: one bucket
    assert attempt("2001:db8:1:3::1") == 200  # the next /64 is another client
    assert [attempt("::ffff:192.0.2.1"), attempt("192.0.2.1"), attempt("192.0.2.1")] == [200, 200, 429]
    now[0] += 5.0  # 2 per 10 s: one request back after 5 s
    assert [attempt("192.0.2.1"), attempt("192.0.2.1")] == [200, 429]


@pytest.mark.asyncio
async def test_the_shared_balances_table_is_bounded_by_rate_times_ttl(tmp_path):
    """Unit test on the real SQLite table with a controlled clock: 20 new addresses a second for
    60 s with a ttl of 5 s keep at most 20 x (5 + 1 + 1) rows, not 1,200."""
    now = [1_000_000.0]
    db = SqliteDatabase(tmp_path / "ledger.db")
    shared = SharedBalances(db, lease=3.0, clock=lambda: now[0])
    await shared.open()
    sizes = []
    for second in range(60):
        for i in range(20):
            key = f"plan|0x{second:020x}{i:020x}"
            assert await shared.acquire(key, ttl=5.0, negative_ttl=2.0) is None  # new: this worker reads it
            await shared.publish(key, SharedBalance(0, now[0]))
        sizes.append(await shared.count())
        now[0] += 1.0
    bound = 20 * (5 + 1 + 1)  # rows still of use (ttl), the 1 s margin, the second being written
    assert max(sizes) <= bound and sizes[-1] == bound
    assert sizes[4] == 100  # nothing of use is pruned early
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM plan_fetches").fetchone()[0] == 0
    await db.close()
    assert PRUNE_BATCH > 1  # each publish prunes more than it adds: the table cannot outgrow its bound
