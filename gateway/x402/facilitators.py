"""Who verifies and settles x402 payments: the gateway itself, or a remote facilitator.

Both are the official SDK's code:
- `SelfFacilitator`: the SDK's facilitator scheme (`x402.mechanisms.evm.exact.facilitator.
  ExactEvmScheme`) on its web3 signer (`FacilitatorWeb3Signer`) holding the operator key: it checks
  the signature (EIP-712, EIP-3009), payee, amount, validity window, the payer's balance and
  simulates the transfer (an already used nonce fails there), then submits
  `transferWithAuthorization` and waits for its receipt. No third party.
- `RemoteFacilitator`: the SDK's HTTP facilitator client (`/verify`, `/settle` of `facilitator_url`).

Why on threads: the SDK's EVM facilitator code and signer are synchronous (web3's HTTP provider);
the event loop must never wait on an RPC, so each call runs in `asyncio.to_thread`. Why imported
where used: web3 and the SDK's EVM code take ~0.1 s to import; a gateway selling nothing per call
never pays that.

`authorization_state` reads the token's `authorizationState(payer, nonce)` on chain (either mode,
when the gateway knows an RPC of that chain), and for a used nonce which event used it
(`AuthorizationUsed`: transferred, and in which transaction; `AuthorizationCanceled`: the payer
cancelled it, nothing was paid): the truth the reconciler goes by after a crash.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

from gateway.config.model import GatewayConfig, X402Config

CONFIRMATION_TIMEOUT = 30.0  # seconds to wait for a settlement's receipt (then: reconciled later)
RECEIPT_POLL = 0.01  # seconds between looks for that receipt
NONCE_ATTEMPTS = 5  # a settlement whose nonce another sender took is signed again this many times at most
# What nodes answer a transaction whose nonce another one has taken (mined, or waiting in the pool).
NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced", "already known", "nonce has already been used")


class Facilitator(Protocol):
    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse: ...
    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse: ...
    async def authorization_state(self, asset: str, payer: str, nonce: str) -> AuthorizationState | None: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class AuthorizationState:
    """`unused`, `transferred` (`tx_hash` when its event was found) or `canceled`."""

    state: str
    tx_hash: str | None = None


LOG_LOOKBACK = 10_000  # blocks searched for the event that used a nonce (RPCs cap eth_getLogs ranges)
USED = "AuthorizationUsed(address,bytes32)"
CANCELED = "AuthorizationCanceled(address,bytes32)"


class ChainState:
    """`authorizationState` read from one chain's RPC (synchronous web3, on a thread)."""

    def __init__(self, rpc_url: str | None) -> None:
        from web3 import Web3

        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10})) if rpc_url else None

    async def authorization_state(self, asset: str, payer: str, nonce: str) -> AuthorizationState | None:
        if self.w3 is None:
            return None  # no RPC of this chain: the caller cannot tell (and must not guess)
        return await asyncio.to_thread(self._read_state, asset, payer, nonce)

    def _read_state(self, asset: str, payer: str, nonce: str) -> AuthorizationState:
        from web3 import Web3
        from x402.mechanisms.evm.constants import AUTHORIZATION_STATE_ABI

        token, who, key = Web3.to_checksum_address(asset), Web3.to_checksum_address(payer), bytes.fromhex(nonce[2:])
        contract = self.w3.eth.contract(address=token, abi=AUTHORIZATION_STATE_ABI)
        if not contract.functions.authorizationState(who, key).call():
            return AuthorizationState("unused")
        latest = self.w3.eth.block_number
        topics = ["0x" + bytes(12).hex() + who[2:].lower(), "0x" + key.hex()]
        for event, state in ((USED, "transferred"), (CANCELED, "canceled")):
            try:
                logs = self.w3.eth.get_logs({"address": token, "fromBlock": max(0, latest - LOG_LOOKBACK),
                                             "toBlock": latest, "topics": [Web3.keccak(text=event).to_0x_hex(), *topics]})
            except Exception:  # noqa: BLE001 - a capped or failing eth_getLogs: the state alone says used
                logs = []
            if logs:
                return AuthorizationState(state, logs[0]["transactionHash"].to_0x_hex())
        # Why transferred: used, and no cancel found in the window searched (an older cancel would
        # predate this payment, which verification would then have refused).
        return AuthorizationState("transferred")


class SelfFacilitator(ChainState):
    def __init__(self, operator_key: str, rpc_url: str) -> None:
        from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme

        super().__init__(rpc_url)
        self.scheme = ExactEvmScheme(_signer(operator_key, rpc_url))

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        return await asyncio.to_thread(self.scheme.verify, payload, requirements)

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        return await asyncio.to_thread(self.scheme.settle, payload, requirements)

    async def close(self) -> None:
        pass


def _signer(operator_key: str, rpc_url: str):
    """The SDK's web3 signer, polling for a settlement's receipt every 10 ms instead of web3's 100 ms,
    and signing again with a fresh nonce when another sender took the one it picked.

    Why the poll: the call's answer waits for that receipt (x402 answers a settled payment); with
    web3's default a receipt missed by the first look costs 100 ms (bench/x402_payments.py: settle
    p90 114 ms before, the receipt itself is there within milliseconds on a fast chain).
    Why sign again: every worker (and every replica) sends with the operator key, and each takes
    its nonces from the pending count, so two may pick the same one; the node refuses the second
    without mining it, so signing it again with the next free nonce sends it once (and a transfer
    of one authorization mined twice would revert on chain: its EIP-3009 nonce is single-use)."""
    from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
    from x402.mechanisms.evm.types import TransactionReceipt

    class Signer(FacilitatorWeb3Signer):
        def write_contract(self, *args, **kwargs) -> str:
            for attempt in range(1, NONCE_ATTEMPTS + 1):
                try:
                    return super().write_contract(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - web3's RPC errors; anything else is raised as is
                    if attempt == NONCE_ATTEMPTS or not any(taken in str(exc).lower() for taken in NONCE_TAKEN):
                        raise
                    with self._nonce_lock:
                        self._next_nonce = None  # the next one is the pending count again

        def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
            tx_hash = tx_hash if tx_hash.startswith("0x") else "0x" + tx_hash
            receipt = self._w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self._confirmation_timeout_seconds, poll_latency=RECEIPT_POLL)
            return TransactionReceipt(status=1 if receipt["status"] == 1 else 0, block_number=receipt["blockNumber"],
                                      tx_hash=tx_hash, logs=list(receipt.get("logs") or []))

    return Signer(operator_key, rpc_url, confirmation_timeout_seconds=CONFIRMATION_TIMEOUT)


class RemoteFacilitator(ChainState):
    def __init__(self, url: str, rpc_url: str | None) -> None:
        from x402.http import FacilitatorConfig, HTTPFacilitatorClient

        super().__init__(rpc_url)
        self.client = HTTPFacilitatorClient(FacilitatorConfig(url=url, timeout=CONFIRMATION_TIMEOUT))

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> VerifyResponse:
        return await self.client.verify(payload, requirements)

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements) -> SettleResponse:
        return await self.client.settle(payload, requirements)

    async def close(self) -> None:
        await self.client.aclose()


def facilitators(config: GatewayConfig) -> dict[str, Facilitator]:
    """One facilitator per service sold per call (service id -> facilitator); services that settle
    the same way on the same chain share one (one signer: one transaction nonce sequence)."""
    made: dict[tuple, Facilitator] = {}
    out: dict[str, Facilitator] = {}
    for service in config.services.values():
        x: X402Config | None = service.x402
        if x is None:
            continue
        rpc = config.chains[x.chain].rpc_urls[0] if x.chain else None
        key = (x.facilitator_url, rpc)
        if key not in made:
            if x.facilitator_url:
                made[key] = RemoteFacilitator(x.facilitator_url, rpc)
            elif (signer := config.metering.x402_key or config.metering.operator_key) and rpc:
                # Why a key of its own when given: the credit burns sign with operator_key too, and
                # two senders of one key race for its nonces (each side then recovers, but slower).
                made[key] = SelfFacilitator(signer, rpc)
            else:
                continue  # checked at load: self-facilitated needs metering.x402_key or operator_key
        out[service.id] = made[key]
    return out
