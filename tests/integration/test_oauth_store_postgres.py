"""The OAuth store's PostgreSQL twin (`gateway.oauth.store_postgres`) on a real, throwaway
PostgreSQL: the same rules as on SQLite (single-use codes, rotation, a replayed token revoking its
family), and one winner when two replicas redeem the same code or refresh token at once."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from gateway.ledger.postgres_database import PostgresDatabase
from gateway.oauth.store import oauth_store
from gateway.oauth.store_postgres import PostgresOAuthStore
from tests.support.oauth import prune_scenario
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.asyncio
GRANT = {"client_id": "c", "redirect_uri": "https://c.example/cb", "service": "elvis", "code_challenge": "x",
         "resource": "https://elvis.example.com", "scope": None, "subscriber": "0x" + "11" * 20}


@pytest_asyncio.fixture
async def replicas(postgres_url):
    """Two stores on one database, each with its own pool: two gateways on two machines."""
    dbs = [PostgresDatabase(postgres_url, max_size=5) for _ in range(2)]
    stores = [oauth_store(db) for db in dbs]
    for store in stores:
        await store.open()
    yield stores
    for db in dbs:
        await db.close()


async def test_codes_and_refresh_tokens_follow_the_same_rules_as_on_sqlite(replicas):
    first, second = replicas
    assert isinstance(first, PostgresOAuthStore)
    await first.add_client("dcr_1", {"client_name": "C", "redirect_uris": ["https://c.example/cb"]}, 1.0)
    assert (await second.client("dcr_1"))["client_name"] == "C" and await second.client("nope") is None
    await first.add_code("h1", "fam", GRANT, expires_at=160.0, now=100.0)
    assert await second.take_code("h1", 101.0) == ("ok", "fam", GRANT)
    await second.start_family("fam", GRANT, "r1", "jti-1", expires_at=1000.0, now=101.0)
    assert await first.rotate("r1", "r2", "jti-2", 1000.0, 102.0) == "ok"
    record = await second.refresh_token("r2")
    assert record.grant == GRANT and set(record.access_jtis) == {"jti-1", "jti-2"} and not record.family_revoked
    assert await second.rotate("r1", "r3", "jti-3", 1000.0, 103.0) == "reused"
    assert await first.rotate("r2", "r4", "jti-4", 1000.0, 104.0) == "revoked"
    assert (await first.take_code("h1", 105.0))[0] == "reused"
    await first.add_code("h2", "fam2", GRANT, expires_at=160.0, now=100.0)
    assert (await second.take_code("h2", 170.0))[0] == "expired"


async def test_two_replicas_redeeming_one_code_or_refresh_token_get_one_winner(replicas):
    first, second = replicas
    await first.add_code("h", "fam", GRANT, expires_at=160.0, now=100.0)
    codes = await asyncio.gather(*(store.take_code("h", 101.0) for store in (first, second) * 3))
    assert sorted(c[0] for c in codes) == ["ok"] + ["reused"] * 5
    await first.start_family("fam9", GRANT, "r", "j", expires_at=1000.0, now=101.0)
    rotations = await asyncio.gather(*(store.rotate("r", f"n{i}", f"j{i}", 1000.0, 102.0)
                                       for i, store in enumerate((first, second) * 3)))
    assert rotations.count("ok") == 1 and set(rotations) <= {"ok", "reused", "revoked"}


async def test_registered_clients_that_never_got_a_code_are_pruned_after_a_day(replicas):
    await prune_scenario(replicas[0], GRANT)  # the same scenario as on SQLite (tests/unit/test_oauth.py)
