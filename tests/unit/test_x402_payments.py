"""gateway.x402.payments on a fake facilitator and a real SQLite store: what is recorded before the
call, settled after a 2xx only, refused on a replay, and how the reconciler finishes what a crash
or an unreachable chain left (from `authorizationState`, never a blind second submission)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from x402.http import encode_payment_signature_header
from x402.schemas import PaymentPayload, SettleResponse, VerifyResponse

from gateway.config.load import parse_config
from gateway.http import refusals
from gateway.ledger.database import SqliteDatabase
from gateway.ops.observability import Metrics
from gateway.x402.facilitators import AuthorizationState
from gateway.x402.errors import FacilitatorUnavailable, PaymentMalformed, PaymentRejected, SettlementFailed
from gateway.x402.offers import exact_offer
from gateway.x402.payments import PAYMENT_RESPONSE, X402Payments
from gateway.x402.store import x402_store
from tests.support.stack import base_config

pytestmark = pytest.mark.asyncio
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYEE = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
PAYER = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
NOW = 1_800_000_000.0


@dataclass
class FakeFacilitator:
    """Answers as told; counts settlements (the thing that must happen at most once)."""

    valid: bool = True
    settle_result: bool | Exception = True
    used: bool | None = False
    settled: list[str] = field(default_factory=list)
    verify_error: Exception | None = None

    async def verify(self, payload, requirements):
        if self.verify_error:
            raise self.verify_error
        return VerifyResponse(is_valid=self.valid, invalid_reason=None if self.valid else "invalid_exact_evm_payload_signature",
                              payer=PAYER)

    async def settle(self, payload, requirements):
        if isinstance(self.settle_result, Exception):
            raise self.settle_result
        self.settled.append(payload.payload["authorization"]["nonce"])
        if self.settle_result:
            return SettleResponse(success=True, transaction="0x" + "ab" * 32, network="eip155:31337", payer=PAYER)
        return SettleResponse(success=False, error_reason="invalid_exact_evm_payload_authorization_valid_before",
                              transaction="", network="eip155:31337", payer=PAYER)

    async def authorization_state(self, asset, payer, nonce):
        states = {None: None, True: AuthorizationState("transferred", "0x" + "cd" * 32),
                  False: AuthorizationState("unused"), "canceled": AuthorizationState("canceled")}
        return states[self.used]

    async def close(self):
        pass


@pytest.fixture
def config(signing_key):
    data = base_config(None, None, signing_key, x402={"network": "eip155:31337", "asset": TOKEN, "pay_to": PAYEE,
                                                       "price": "0.01", "extra": {"name": "Demo USD", "version": "1"}})
    data["metering"]["operator_key"] = "0x" + "11" * 32
    return parse_config(data, {})


@pytest_asyncio.fixture
async def store(tmp_path):
    db = SqliteDatabase(tmp_path / "ledger.db")
    s = x402_store(db, clock=lambda: NOW)
    await s.open()
    yield s
    await db.close()


def payments(config, store, facilitator, now: list[float] | None = None) -> X402Payments:
    clock = (lambda: now[0]) if now else (lambda: NOW)
    return X402Payments(config, store, {"elvis": facilitator}, clock=clock)


def signature(offer, nonce: str = "0x" + "01" * 32, valid_before: int = int(NOW) + 60) -> str:
    auth = {"from": PAYER, "to": offer.pay_to, "value": offer.amount, "validAfter": "0",
            "validBefore": str(valid_before), "nonce": nonce}
    return encode_payment_signature_header(
        PaymentPayload(accepted=offer, payload={"authorization": auth, "signature": "0x" + "00" * 65}))


def ask(config):
    service = config.services["elvis"]
    rule = next(r for r in service.protected_endpoints if r.matches("POST", "/ask"))
    return service, rule, exact_offer(service, rule)


async def statuses(store) -> list[str]:
    return [r["status"] for r in await store.usage()]


async def test_a_2xx_is_settled_and_answered_with_payment_response(config, store):
    fac = FakeFacilitator()
    p = payments(config, store, fac)
    service, rule, offer = ask(config)
    accepted = await p.accept(signature(offer), service, rule, offer, "req-1")
    assert await statuses(store) == ["accepted"]  # durable before the call is forwarded
    headers = await p.complete(accepted, 200, service, rule)
    assert PAYMENT_RESPONSE in headers and len(fac.settled) == 1
    assert (await store.get(accepted.id)).status == "settled"


async def test_a_non_2xx_is_voided_and_never_settled(config, store):
    fac = FakeFacilitator()
    p = payments(config, store, fac)
    service, rule, offer = ask(config)
    accepted = await p.accept(signature(offer), service, rule, offer, "req-1")
    assert await p.complete(accepted, 500, service, rule) == {}
    assert fac.settled == [] and await statuses(store) == ["void"]
    await p.abandon(accepted)  # already done: nothing changes
    assert await statuses(store) == ["void"]


async def test_a_replay_is_refused_even_after_the_first_was_voided(config, store):
    p = payments(config, store, FakeFacilitator())
    service, rule, offer = ask(config)
    first = await p.accept(signature(offer), service, rule, offer, "req-1")
    await p.abandon(first)  # e.g. the upstream was unreachable
    with pytest.raises(PaymentRejected) as exc:
        await p.accept(signature(offer), service, rule, offer, "req-2")
    assert exc.value.reason == "nonce_already_used"


async def test_concurrent_copies_of_one_payment_admit_one_call(config, store):
    p = payments(config, store, FakeFacilitator())
    service, rule, offer = ask(config)
    results = await asyncio.gather(*(p.accept(signature(offer), service, rule, offer, f"r{i}") for i in range(5)),
                                   return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, PaymentRejected) for r in results if isinstance(r, Exception))


async def test_refusals_render_each_payment_error(config, store):
    service, rule, offer = ask(config)
    p = payments(config, store, FakeFacilitator(valid=False))
    with pytest.raises(PaymentRejected) as rejected:
        await p.accept(signature(offer), service, rule, offer, "req-1")
    assert (refusals.problem_for(rejected.value).status, refusals.problem_for(rejected.value).code) == (402, "payment_invalid")
    with pytest.raises(PaymentMalformed) as malformed:
        await p.accept("%%%", service, rule, offer, "req-1")
    assert (refusals.problem_for(malformed.value).status, refusals.problem_for(malformed.value).code) == (400, "bad_payment")
    permit2 = encode_payment_signature_header(PaymentPayload(accepted=offer, payload={"permit2Authorization": {}}))
    with pytest.raises(PaymentRejected) as other_method:
        await p.accept(permit2, service, rule, offer, "req-1")
    assert other_method.value.reason == "unsupported_transfer_method"
    down = payments(config, store, FakeFacilitator(verify_error=ConnectionError("rpc down")))
    with pytest.raises(FacilitatorUnavailable) as unavailable:
        await down.accept(signature(offer, "0x" + "02" * 32), service, rule, offer, "req-1")
    assert refusals.problem_for(unavailable.value).status == 503
    assert await statuses(store) == []  # nothing refused was recorded


async def test_a_settlement_that_cannot_pay_is_a_loss_and_a_402_with_payment_response(config, store):
    p = payments(config, store, FakeFacilitator(settle_result=False))
    service, rule, offer = ask(config)
    accepted = await p.accept(signature(offer), service, rule, offer, "req-1")
    with pytest.raises(SettlementFailed) as exc:
        await p.complete(accepted, 200, service, rule)
    problem = refusals.problem_for(exc.value)
    assert (problem.status, problem.code) == (402, "payment_failed") and PAYMENT_RESPONSE in problem.headers
    assert await statuses(store) == ["lost"]


async def test_the_reconciler_goes_by_the_chain_and_submits_at_most_once(config, store):
    service, rule, offer = ask(config)
    fac = FakeFacilitator(settle_result=ConnectionError("rpc down"))
    p = payments(config, store, fac)
    owed = []
    for i in range(4):  # four calls answered 2xx whose settlement did not get through
        accepted = await p.accept(signature(offer, "0x%064x" % (i + 1), valid_before=int(NOW) + (60 if i != 3 else -1)),
                                  service, rule, offer, f"r{i}")
        assert await p.complete(accepted, 200, service, rule) == {}  # the answer is relayed, settled later
        owed.append(accepted.id)
    assert await statuses(store) == ["owed"]

    fac.used, fac.settle_result = None, True  # the chain cannot be read: nothing is guessed
    assert await p.reconcile(owed_before=NOW) == 0 and fac.settled == []
    fac.used = True  # already transferred (sent before a crash): settled without sending again
    assert await p._settle_owed(await store.get(owed[0])) and fac.settled == []
    assert (await store.get(owed[0])).tx_hash == "0x" + "cd" * 32  # the transfer's, found by its event
    fac.used = False  # not transferred: submitted once; the expired one is a loss, not retried
    assert await p.reconcile(owed_before=NOW) == 3
    assert fac.settled == ["0x%064x" % 2, "0x%064x" % 3]
    assert [(await store.get(i)).status for i in owed] == ["settled", "settled", "settled", "lost"]
    assert await p.reconcile(owed_before=NOW) == 0  # nothing left: never submitted twice


async def test_a_call_that_outlived_its_process_is_voided(config, store):
    now = [NOW]
    p = payments(config, store, FakeFacilitator(), now)
    service, rule, offer = ask(config)
    await p.accept(signature(offer), service, rule, offer, "req-1")  # then the process died
    assert await p.reconcile() == 0  # its call may still be running
    now[0] = NOW + service.timeout + config.metering.hold_margin + 1
    store.clock = lambda: now[0]
    assert await p.reconcile() == 1 and await statuses(store) == ["void"]


async def test_an_authorization_the_payer_canceled_is_a_loss(config, store):
    service, rule, offer = ask(config)
    fac = FakeFacilitator(settle_result=ConnectionError("rpc down"))
    p = payments(config, store, fac)
    accepted = await p.accept(signature(offer), service, rule, offer, "req-1")
    await p.complete(accepted, 200, service, rule)  # relayed; the settlement did not get through
    fac.used, fac.settle_result = "canceled", True
    assert await p.reconcile(owed_before=NOW) == 1
    assert fac.settled == [] and await statuses(store) == ["lost"]


async def test_a_transaction_failure_of_ours_stays_owed_and_is_retried(config, store):
    service, rule, offer = ask(config)
    fac = FakeFacilitator()
    p = payments(config, store, fac)
    accepted = await p.accept(signature(offer), service, rule, offer, "req-1")

    async def failed(payload, requirements):  # e.g. the operator's transaction nonce was taken
        return SettleResponse(success=False, error_reason="transaction_failed", transaction="", network="eip155:31337")
    fac.settle, settle = failed, fac.settle
    assert await p.complete(accepted, 200, service, rule) == {}  # relayed, not a loss
    assert await statuses(store) == ["owed"]
    fac.settle = settle
    assert await p.reconcile(owed_before=NOW) == 1 and await statuses(store) == ["settled"]


async def test_each_outcome_is_counted_once_in_the_metrics(config, store):
    metrics = Metrics()
    p = X402Payments(config, store, {"elvis": FakeFacilitator()}, clock=lambda: NOW, on_event=metrics.count_x402)
    service, rule, offer = ask(config)
    served = await p.accept(signature(offer), service, rule, offer, "req-1")
    await p.complete(served, 200, service, rule)
    failed = await p.accept(signature(offer, nonce="0x" + "02" * 32), service, rule, offer, "req-2")
    await p.complete(failed, 502, service, rule)
    await p.abandon(failed)  # already voided: not counted again

    def count(outcome: str) -> float:
        return metrics.registry.get_sample_value("gateway_x402_payments_total",
                                                 {"service": "elvis", "outcome": outcome}) or 0.0

    assert [count(o) for o in ("accepted", "settled", "void", "lost", "pending")] == [2, 1, 1, 0, 0]
