"""Settlement: batched burns of charged credits on chain, exactly once (SPEC §8).

Every cycle, unsettled charges are grouped per account (chain, contract, token
id, subscriber) and burned with ONE `burnCredits(from, id, amount)` transaction
per group, signed locally by the operator key. The settlement (its charges,
amount, nonce, tx hash and the signed transaction itself) is written to the
ledger BEFORE the transaction is sent, so after a crash `reconcile` can tell
from the chain what happened:

- a receipt for the hash: mined; confirmed (status 1) or failed (status 0: the
  charges go back to pending);
- no receipt, and the operator's mined nonce has passed ours: that transaction
  can never be mined; the charges go back to pending;
- no receipt, nonce not passed: the SAME signed transaction is sent again (same
  hash: it can only be mined once).

A group the subscriber's balance no longer covers (tokens moved away) burns
what is left and records a shortfall, which blocks the account until resolved.

Replicas sharing a PostgreSQL ledger settle one at a time: a cycle runs only while this process
holds the settler lease (`gateway.ledger.settler_lease`), confirmed again before each burn is
recorded. A new holder starts with `reconcile`, so what a dead settler left is finished first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import structlog
from eth_abi import decode, encode
from eth_account import Account as EthAccount
from eth_utils import function_signature_to_4byte_selector

from gateway.chain.reader import ChainReader
from gateway.chain.rpc import ChainUnavailable, RpcError
from gateway.ledger import Ledger, PendingGroup, Settlement
from gateway.ledger.settler_lease import SettlerLease, SoleSettler
from gateway.ops.crash_points import crash_point  # a no-op test hook (see there)
from gateway.ops.observability import Metrics
from gateway.credits.plans import credits_calldata

log = structlog.get_logger("gateway.settlement")
audit = structlog.get_logger("gateway.audit")

BURN_CREDITS = function_signature_to_4byte_selector("burnCredits(address,uint256,uint256)")
KNOWN_ERRORS = {
    function_signature_to_4byte_selector(sig): sig
    for sig in (
        "Error(string)", "Panic(uint256)", "AccessControlUnauthorizedAccount(address,bytes32)",
        "ERC1155InsufficientBalance(address,uint256,uint256,uint256)", "ERC1155InvalidSender(address)",
    )
}
# Waiting for a receipt: the first poll after 20 ms (anvil mines at once: the tests stay fast), then
# each wait doubles up to 2 s, so a chain with 12-second blocks costs ~12 polls per burn, not ~600.
RECEIPT_POLL = 0.02
RECEIPT_POLL_MAX = 2.0
RECEIPT_TIMEOUT = 120.0
MAX_BACKOFF = 600.0


def receipt_poll_delays(first: float = RECEIPT_POLL, longest: float = RECEIPT_POLL_MAX) -> Iterator[float]:
    """The waits between two receipt polls: `first`, doubling up to `longest`, then `longest` forever."""
    delay = first
    while True:
        yield min(delay, longest)
        delay = min(delay * 2, longest)


class SettlementRefused(Exception):
    """The chain would not accept the burn (a revert at estimation); the reason is decoded."""


def decode_revert(data: Any) -> str:
    """A readable revert reason from JSON-RPC error data (custom errors of OpenZeppelin 5 included)."""
    if isinstance(data, dict):
        data = data.get("data")
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
        return "reverted (no reason given)"
    raw = bytes.fromhex(data[2:])
    sig = KNOWN_ERRORS.get(raw[:4])
    if sig is None:
        return f"reverted with unknown error 0x{raw[:4].hex()}"
    types = sig[sig.index("(") + 1:-1].split(",")
    try:
        args = decode(types, raw[4:])
    except Exception:  # noqa: BLE001 - undecodable data is still reported, by name
        return f"reverted: {sig} (undecodable arguments)"
    shown = ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args)
    return f"reverted: {sig.split('(')[0]}({shown})"


@dataclass
class Report:
    """What one settlement cycle did (returned by the admin endpoint and used in tests)."""

    sent: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    shortfalls: int = 0
    settler: bool = True  # False: another replica holds the settler lease; this cycle did nothing


class Settler:
    def __init__(self, ledger: Ledger, rpcs: Mapping[int, ChainReader], operator_key: str,
                 settle_every: float, metrics: Metrics | None = None, clock=time.monotonic,
                 lease: SettlerLease | None = None) -> None:
        self.ledger, self.rpcs, self.settle_every, self.clock = ledger, rpcs, settle_every, clock
        self.lease = lease or SoleSettler()
        self.metrics = metrics or Metrics()
        self._key = operator_key
        self.operator = EthAccount.from_key(operator_key).address
        self.lock = asyncio.Lock()  # one cycle at a time
        self._next_nonce: dict[int, int] = {}
        self._retry_at: dict[Any, tuple[float, float]] = {}  # account -> (when, current backoff)

    async def run(self) -> None:
        """Settle every `settle_every` seconds until cancelled."""
        while True:
            try:
                await self.settle_once()
            except Exception:  # noqa: BLE001 - the loop must survive anything; logged with traceback
                log.exception("settlement_cycle_failed")
            await asyncio.sleep(self.settle_every)

    async def settle_once(self) -> Report:
        async with self.lock:
            report = Report()
            if not await self.lease.held():
                # Why skip: another replica settles; two settlers would only race for the same nonces.
                report.settler = False
                return report
            # The chain's count is the truth at the start of a cycle (another replica may have
            # settled since the last one); within the cycle, our own sends count too.
            self._next_nonce.clear()
            await self.reconcile(report)
            sent: list[Settlement] = []
            groups = await self.ledger.pending_groups()
            if groups:
                log.info("settlement_started", groups=len(groups), credits=sum(g.amount for g in groups))
            for done, group in enumerate(groups):
                if done and done % 50 == 0:  # a backlog: show progress
                    log.info("settlement_progress", done=done, of=len(groups))
                if self._backing_off(group):
                    continue
                if not await self.lease.held():  # lost mid-cycle: the new settler reconciles the rest
                    report.settler = False
                    break
                try:
                    settlement = await self._settle_group(group, report)
                except (SettlementRefused, ChainUnavailable, RpcError) as exc:
                    self._back_off(group)
                    self.metrics.settlement_failures.labels(type(exc).__name__).inc()
                    report.refused.append(str(exc))
                    log.error("settlement_refused", subscriber=group.account.subscriber, contract=group.account.contract,
                              credits=group.amount, reason=str(exc))
                    continue
                if settlement is not None:
                    sent.append(settlement)
            for settlement in sent:
                await self._await_receipt(settlement, report)
            return report

    async def reconcile(self, report: Report) -> None:
        """Finish settlements a previous run left recorded or sent (see the module docstring)."""
        for s in await self.ledger.unfinished_settlements():
            rpc = self.rpcs[s.account.chain_id]
            receipt = await rpc.request("eth_getTransactionReceipt", [s.tx_hash])
            if receipt is not None:
                await self._finish(s, receipt, report)
                continue
            mined_nonce = int(await rpc.request("eth_getTransactionCount", [s.operator, "latest"]), 16)
            if mined_nonce > s.nonce:
                await self.ledger.mark_failed(s.id, "nonce used by another transaction: never mined")
                report.failed.append(s.tx_hash)
                continue
            await self._broadcast(s)  # the same signed transaction: it can be mined once at most
            await self._await_receipt(s, report)

    async def _settle_group(self, group: PendingGroup, report: Report) -> Settlement | None:
        a = group.account
        rpc = self.rpcs[a.chain_id]
        balance = await self._balance(rpc, group)
        burn = min(group.amount, balance)
        if burn < group.amount:
            report.shortfalls += 1
            audit.warning("shortfall", subscriber=a.subscriber, contract=a.contract, token_id=a.token_id,
                          charged=group.amount, on_chain=balance, burned=burn, shortfall=group.amount - burn)
        if burn == 0:
            # Nothing left to burn: the whole group is a shortfall; no transaction.
            settlement = await self.ledger.record_settlement(group, 0, self.operator, None, None, None)
            await self.ledger.mark_confirmed(settlement.id, 0)
            return None
        data = BURN_CREDITS + encode(["address", "uint256", "uint256"], [a.subscriber, a.token_id, burn])
        call = {"from": self.operator, "to": a.contract, "data": "0x" + data.hex()}
        try:
            gas = int(await rpc.request("eth_estimateGas", [call]), 16)
        except RpcError as exc:
            raise SettlementRefused(decode_revert(exc.data) if exc.data else exc.message) from None
        gas_price = int(await rpc.request("eth_gasPrice", []), 16)
        nonce = max(self._next_nonce.get(a.chain_id, 0),
                    int(await rpc.request("eth_getTransactionCount", [self.operator, "pending"]), 16))
        signed = EthAccount.sign_transaction(
            {"to": a.contract, "data": data, "value": 0, "gas": gas * 12 // 10 + 10_000, "gasPrice": gas_price,
             "nonce": nonce, "chainId": a.chain_id},
            self._key,
        )
        settlement = await self.ledger.record_settlement(
            group, burn, self.operator, nonce, "0x" + signed.hash.hex().removeprefix("0x"),
            "0x" + signed.raw_transaction.hex().removeprefix("0x"))
        self._next_nonce[a.chain_id] = nonce + 1
        crash_point("settlement_recorded")
        await self._broadcast(settlement)
        crash_point("settlement_sent")
        report.sent.append(settlement.tx_hash)
        return settlement

    async def _balance(self, rpc: ChainReader, group: PendingGroup) -> int:
        a = group.account
        raw = await rpc.eth_call(a.contract, credits_calldata(a.subscriber, a.token_id))
        return decode(["uint256"], raw)[0]

    async def _broadcast(self, s: Settlement) -> None:
        try:
            await self.rpcs[s.account.chain_id].request("eth_sendRawTransaction", [s.raw_tx])
        except RpcError as exc:
            # "already known" / "nonce too low" after a crash or a resend: the receipt decides.
            log.info("broadcast_not_accepted", tx_hash=s.tx_hash, reason=exc.message)
        await self.ledger.mark_sent(s.id)

    async def _await_receipt(self, s: Settlement, report: Report) -> None:
        rpc = self.rpcs[s.account.chain_id]
        deadline = self.clock() + RECEIPT_TIMEOUT
        delays = receipt_poll_delays()
        while self.clock() < deadline:
            receipt = await rpc.request("eth_getTransactionReceipt", [s.tx_hash])
            if receipt is not None:
                await self._finish(s, receipt, report)
                return
            # Polling the chain for the receipt, less often as it takes longer, bounded by the deadline.
            await asyncio.sleep(min(next(delays), max(0.0, deadline - self.clock())))
        log.warning("receipt_pending", tx_hash=s.tx_hash)  # reconciled next cycle

    async def _finish(self, s: Settlement, receipt: dict, report: Report) -> None:
        if int(receipt.get("status", "0x0"), 16) == 1:
            await self.ledger.mark_confirmed(s.id, int(receipt["blockNumber"], 16))
            report.confirmed.append(s.tx_hash)
            self.metrics.credits_settled.inc(s.amount)
            audit.info("burned", subscriber=s.account.subscriber, contract=s.account.contract, credits=s.burn_amount,
                       charged=s.amount, tx_hash=s.tx_hash, gas_used=int(receipt.get("gasUsed", "0x0"), 16))
        else:
            await self.ledger.mark_failed(s.id, "transaction reverted on chain")
            report.failed.append(s.tx_hash)
            self.metrics.settlement_failures.labels("reverted").inc()
            log.error("burn_reverted", tx_hash=s.tx_hash, subscriber=s.account.subscriber)

    def _backing_off(self, group: PendingGroup) -> bool:
        when, _ = self._retry_at.get(group.account, (0.0, 0.0))
        return self.clock() < when

    def _back_off(self, group: PendingGroup) -> None:
        _, current = self._retry_at.get(group.account, (0.0, 0.0))
        delay = min(max(current * 2, self.settle_every), MAX_BACKOFF)
        self._retry_at[group.account] = (self.clock() + delay, delay)

    def retry_now(self) -> None:
        """Forget back-offs (after an operator fixed the cause, e.g. granted the burner role)."""
        self._retry_at.clear()
