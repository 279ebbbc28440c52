"""The x402 payments' record on a real PostgreSQL (gateway.x402.store_postgres), as two replicas
see it: one authorization accepted once across replicas, transitions only from the expected status,
the reconciler's selection, and `gateway usage`'s sums (uint256 amounts as integers)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from gateway.ledger.backends import open_database
from gateway.x402.store import AlreadySeen, Payment, x402_store
from gateway.x402.store_postgres import PostgresX402Store
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.asyncio
NOW = 1_800_000_000.0
PAYER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"


def payment(nonce: int, amount: int = 10_000, expires_at: float = NOW + 120) -> Payment:
    return Payment(service="elvis", request_id=f"r{nonce}", network="eip155:31337",
                   asset="0x5FbDB2315678afecb367f032d93F642f64180aa3", payer=PAYER, nonce="0x%064x" % nonce,
                   pay_to="0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65", amount=amount, valid_before=int(NOW) + 60,
                   payload={"payload": {"authorization": {"nonce": "0x%064x" % nonce}}}, requirements={"scheme": "exact"},
                   expires_at=expires_at)


@pytest_asyncio.fixture
async def replicas(postgres_url):
    dbs = [open_database(postgres_url) for _ in range(2)]
    stores = [x402_store(db, clock=lambda: NOW) for db in dbs]
    for store in stores:
        await store.open()
    yield stores
    for db in dbs:
        await db.close()


async def test_one_authorization_is_accepted_once_across_replicas(replicas):
    assert all(isinstance(s, PostgresX402Store) for s in replicas)
    tries = await asyncio.gather(*(s.record(payment(1)) for s in replicas for _ in range(4)), return_exceptions=True)
    assert sum(isinstance(t, int) for t in tries) == 1 and sum(isinstance(t, AlreadySeen) for t in tries) == 7
    assert await replicas[1].seen("eip155:31337", payment(1).asset, PAYER.upper().replace("0X", "0x"), "0x%064x" % 1)


async def test_transitions_only_from_the_expected_status_and_what_is_reconciled(replicas):
    here, there = replicas
    owed, pending, stale = [await here.record(payment(n, expires_at=NOW - 1 if n == 3 else NOW + 120)) for n in (1, 2, 3)]
    assert await here.mark(owed, ("accepted",), "owed")
    marks = await asyncio.gather(here.mark(owed, ("owed",), "settled", tx_hash="0xaa"),
                                 there.mark(owed, ("owed",), "settled", tx_hash="0xbb"))
    assert sorted(marks) == [False, True]  # one replica's transition, never both
    assert (await there.get(owed)).status == "settled"
    assert await here.mark(pending, ("accepted",), "owed")
    found = await there.unfinished(owed_before=NOW)
    assert [(r.id, r.status) for r in found] == [(pending, "owed"), (stale, "accepted")]
    assert found[0].payment.payload == payment(2).payload and found[0].payment.amount == 10_000


async def test_usage_sums_amounts_beyond_64_bits(replicas):
    big = 2**70
    for n in (1, 2):
        await replicas[0].record(payment(n, amount=big))
    (row,) = await replicas[1].usage(payer=PAYER)
    assert (row["status"], row["payments"], row["amount"]) == ("accepted", 2, str(2 * big))
