"""Waiting for a burn's receipt: 20 ms first (anvil mines at once), then less and less often, up
to one poll every 2 s, within the 120 s deadline. A fake clock and a fake RPC, no chain."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from gateway.credits import settlement
from gateway.credits.settlement import RECEIPT_TIMEOUT, Report, Settler, receipt_poll_delays

OPERATOR_KEY = "0x" + "11" * 32
RECEIPT = {"status": "0x1", "blockNumber": "0x7", "gasUsed": "0x5208"}


def polls_until(seconds: float) -> int:
    """How many receipt polls happen before a receipt that appears after `seconds`."""
    waited, polls = 0.0, 1  # the first poll is immediate
    for delay in receipt_poll_delays():
        if waited >= seconds:
            return polls
        waited += delay
        polls += 1
    raise AssertionError("unreachable")


def test_the_schedule_starts_at_20_ms_and_doubles_up_to_2_s():
    delays = list(itertools.islice(receipt_poll_delays(), 10))
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0, 2.0])
    assert list(itertools.islice(receipt_poll_delays(first=0.5, longest=1.0), 3)) == [0.5, 1.0, 1.0]


def test_a_local_chain_is_still_answered_within_milliseconds():
    assert sum(itertools.islice(receipt_poll_delays(), 3)) < 0.15  # 3 polls late: 140 ms


def test_a_chain_with_12_second_blocks_costs_a_dozen_polls_not_600():
    assert polls_until(12.0) <= 15
    assert polls_until(RECEIPT_TIMEOUT) <= 70  # the whole deadline; 6000 at a fixed 20 ms


class FakeChain:
    """Answers eth_getTransactionReceipt with None `pending` times, then a receipt (if `mines`)."""

    def __init__(self, pending: int, mines: bool = True) -> None:
        self.pending, self.mines, self.polls = pending, mines, 0

    async def request(self, method: str, params: list):
        assert method == "eth_getTransactionReceipt"
        self.polls += 1
        if self.polls > self.pending and self.mines:
            return RECEIPT
        return None


class FakeLedger:
    def __init__(self) -> None:
        self.confirmed: list[tuple[int, int]] = []

    async def mark_confirmed(self, settlement_id: int, block: int) -> None:
        self.confirmed.append((settlement_id, block))


@pytest.fixture
def clock(monkeypatch):
    """A fake clock that only asyncio.sleep moves; the sleeps are recorded."""
    state = SimpleNamespace(now=1000.0, sleeps=[])

    async def sleep(seconds: float) -> None:
        state.sleeps.append(seconds)
        state.now += seconds

    monkeypatch.setattr(settlement.asyncio, "sleep", sleep)
    return state


def settler_on(chain: FakeChain, ledger: FakeLedger, clock) -> Settler:
    return Settler(ledger, {1: chain}, OPERATOR_KEY, settle_every=30.0, clock=lambda: clock.now)


BURN = SimpleNamespace(id=9, tx_hash="0x" + "ab" * 32, amount=3, burn_amount=3,
                       account=SimpleNamespace(chain_id=1, subscriber="0x" + "cd" * 20, contract="0x" + "ef" * 20))


@pytest.mark.asyncio
async def test_the_settler_waits_longer_between_polls_until_the_receipt(clock):
    chain, ledger, report = FakeChain(pending=5), FakeLedger(), Report()
    await settler_on(chain, ledger, clock)._await_receipt(BURN, report)
    assert chain.polls == 6
    assert clock.sleeps == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32])
    assert ledger.confirmed == [(9, 7)] and report.confirmed == [BURN.tx_hash]


@pytest.mark.asyncio
async def test_a_receipt_that_never_comes_stops_at_the_deadline(clock, monkeypatch):
    # A fresh logger: one used earlier may be cached with another config, hidden from capture_logs.
    monkeypatch.setattr(settlement, "log", settlement.structlog.get_logger("gateway.settlement"))
    chain, ledger = FakeChain(pending=0, mines=False), FakeLedger()
    started = clock.now
    with capture_logs() as logs:
        await settler_on(chain, ledger, clock)._await_receipt(BURN, Report())
    assert clock.now - started == pytest.approx(RECEIPT_TIMEOUT)  # the last wait ends at the deadline
    assert max(clock.sleeps) == 2.0
    assert chain.polls <= 70
    assert ledger.confirmed == []
    assert [entry["event"] for entry in logs] == ["receipt_pending"]  # reconciled next cycle
