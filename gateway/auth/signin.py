"""Sign-In with Ethereum: a subscriber proves they control an address and gets a token (SPEC §5).

`NonceBook` issues nonces that need no storage until they are used: 36 bytes in hex, an expiry
in milliseconds, 12 random bytes and a 16-byte HMAC-SHA256 under a secret kept in the database
(shared by every worker and replica on it). So `GET /.gateway/nonce`, which anyone can call, never
writes to the ledger's database and cannot fill it; a nonce is recorded only when a valid
signature spends it, and kept until it expires. A restart changes nothing (secret and spent
nonces are on disk), so a nonce can never be used twice.

`SignIn.login` checks, in this order, and refuses with the first failure: the EIP-4361 grammar
(400 `invalid_siwe_message`), domain and URI against the service's public address
(`gateway.auth.signin_address`), chain id against the plan, the message's time window, the nonce
(issued by us, unexpired), the signature (EIP-191 by the address, else EIP-1271
`isValidSignature` when the address is a contract), and finally spends the nonce
(`nonce_reused` when it was already spent). Then the own issuer signs a token, and
only then is the balance read from the chain (an unproven address costs no chain read).

Both sign-in endpoints first pass `SigninRateLimit` (gateway.auth.signin_rate): 429 `rate_limited`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from typing import Any, Callable, Mapping

from aiohttp import web
from eth_abi import encode
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct
from eth_utils import to_checksum_address

from gateway.http import client_json
from gateway.chain.reader import ChainReader
from gateway.chain.rpc import ChainUnavailable, RpcError
from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.auth.issuer import OwnIssuer
from gateway.credits.plans import PlanChecker, PlanUnreadable
from gateway.http.problems import Problem
from gateway.auth.state import AuthState
from gateway.auth.signin_address import Origin, PublicAddress
from gateway.auth.signin_rate import SigninRateLimit
from gateway.auth.siwe import SiweError, parse, timestamp

ERC1271_IS_VALID_SIGNATURE = bytes.fromhex("1626ba7e")  # isValidSignature(bytes32,bytes), also the magic value
_NONCE_BYTES, _MAC_BYTES = 20, 16  # 8-byte expiry + 12 random; truncated HMAC-SHA256


class NonceBook:
    """Unforgeable, expiring, single-use sign-in nonces (`secret` from `AuthState.open`)."""

    def __init__(self, state: AuthState, secret: bytes, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._state, self._secret, self.ttl, self.clock = state, secret, ttl, clock

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, b"siwe-nonce:" + body, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, now: float | None = None) -> tuple[str, float]:
        """A new nonce and the time (epoch seconds) it expires."""
        expires_at = (self.clock() if now is None else now) + self.ttl
        body = int(expires_at * 1000).to_bytes(8, "big") + os.urandom(_NONCE_BYTES - 8)
        return (body + self._mac(body)).hex(), expires_at

    def check(self, nonce: str, now: float) -> float:
        """The nonce's expiry if we issued it and it is still valid; Problem otherwise."""
        try:
            raw = bytes.fromhex(nonce) if len(nonce) == 2 * (_NONCE_BYTES + _MAC_BYTES) else b""
        except ValueError:
            raw = b""
        body, mac = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        # Why compare_digest: the MAC is the secret part; no timing oracle for forging it.
        if not raw or not hmac.compare_digest(mac, self._mac(body)):
            raise Problem(401, "nonce_unknown", "the message's nonce was not issued by this gateway; "
                          "get one from GET /.gateway/nonce")
        expires_at = int.from_bytes(body[:8], "big") / 1000
        if now >= expires_at:
            # Why no leeway: the expiry is our own clock's, set when we issued it.
            raise Problem(401, "nonce_expired", "the nonce has expired; get a new one and sign again")
        return expires_at

    async def spend(self, nonce: str, expires_at: float, subscriber: str, now: float) -> None:
        """Record the nonce as used, atomically; Problem 401 `nonce_reused` if it already was."""
        if not await self._state.spend_nonce(nonce, expires_at, subscriber, now):
            # Why: a nonce buys one token; a replayed message + signature gets nothing.
            raise Problem(401, "nonce_reused", "this nonce was already used; get a new one and sign again")


def parse_login_body(body: bytes) -> tuple[str, str]:
    """(message, signature) of a `POST /.gateway/login` body; Problem 400 otherwise."""
    hint = 'send JSON {"message": "<EIP-4361 text>", "signature": "0x..."}'
    data = client_json.loads(body, hint)
    if not isinstance(data, dict) or not isinstance(data.get("message"), str) \
            or not isinstance(data.get("signature"), str):
        raise Problem(400, "bad_request", hint)
    return data["message"], data["signature"]


class SignIn:
    """Verifies a signed EIP-4361 message and answers with a token from the own issuer."""

    def __init__(self, config: GatewayConfig, issuer: OwnIssuer, nonces: NonceBook, plans: PlanChecker,
                 readers: Mapping[str, ChainReader], clock: Callable[[], float] = time.time) -> None:
        self.config, self.issuer, self.nonces, self.plans = config, issuer, nonces, plans
        self._readers, self._clock = readers, clock
        self._leeway = config.tokens.leeway
        self.rate = SigninRateLimit(config.tokens.signin_rate, config.trusted_proxies)

    def admit(self, request: web.Request) -> None:
        """Count one sign-in request (nonce or login) of the client's address; Problem 429 above the rate."""
        self.rate.check(request)

    async def login(self, service: ServiceConfig, origin: Origin, text: str, signature: str) -> dict[str, Any]:
        address, lifetime = await self.prove(service, origin, text, signature)
        token = self.issuer.issue(address, [service.id, self.config.public_url(service)], ttl=lifetime)
        try:
            balance: int | None = await self.plans.balance(service.plan, address)
        except PlanUnreadable:
            balance = None  # Why: the token is valid without it; the chain answers the first protected call.
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime),
                "subscriber": address, "balance": balance}

    async def prove(self, service: ServiceConfig, origin: Origin, text: str, signature: str,
                    bound: Callable[[Any], None] | None = None) -> tuple[str, float]:
        """Every check of a sign-in, then spend its nonce: (checksummed address, lifetime in seconds).
        `bound(message)` may refuse a message not made for the caller's purpose (an OAuth request),
        before the nonce is looked at: a refused message spends nothing."""
        plan = service.plan
        if plan is None:  # Why: a token of a service that sells nothing would open nothing.
            raise Problem(404, "endpoint_not_exposed", f"{service.id} has no plan: there is nothing to sign in for")
        try:
            message = parse(text)
        except SiweError as exc:  # Why: only the exact EIP-4361 text is what wallets show and users approve.
            raise Problem(400, "invalid_siwe_message", f"not an EIP-4361 message: {exc}") from None
        public = PublicAddress.of(self.config, service, origin)
        public.check_domain(message.scheme, message.domain)
        public.check_uri(message.uri)
        chain_id = self.config.chains[plan.chain].chain_id
        if message.chain_id != chain_id:
            # Why: the plan (and any EIP-1271 wallet) lives on this chain; a signature for another is not ours.
            raise Problem(401, "chain_mismatch", f"the message is for chain {message.chain_id}; "
                          f"this service's plan is on chain {chain_id}")
        if bound is not None:
            bound(message)
        now = self._clock()
        lifetime = self._lifetime(message, now)
        expires_at = self.nonces.check(message.nonce, now)
        address = to_checksum_address(message.address)
        await self._check_signature(text, signature, address, plan.chain)
        await self.nonces.spend(message.nonce, expires_at, address, now)
        return address, lifetime

    def _lifetime(self, message: Any, now: float) -> float:
        """Refuse a message outside its time window; the token's lifetime (seconds) otherwise."""
        leeway = self._leeway
        # Why the leeway both ways: the wallet's clock and ours differ by a little.
        if message.not_before is not None and timestamp(message.not_before) > now + leeway:
            raise Problem(401, "message_not_yet_valid", "the message's Not Before is in the future")
        if timestamp(message.issued_at) > now + leeway:
            raise Problem(401, "message_not_yet_valid", "the message's Issued At is in the future")
        lifetime = self.issuer.config.ttl
        if message.expiration_time is not None:
            remaining = timestamp(message.expiration_time) + leeway - now
            if remaining <= 0:
                raise Problem(401, "message_expired", "the message's Expiration Time has passed")
            # Why: the subscriber signed that this authorization ends then; the token must not outlive it.
            lifetime = min(lifetime, remaining)
        return max(1.0, lifetime)

    async def _check_signature(self, text: str, signature: str, address: str, chain: str) -> None:
        raw = _signature_bytes(signature)
        # Why a thread: ~0.1 ms with coincurve (pinned), but ~5 ms where eth-keys falls back to pure Python:
        # too long to hold the event loop, and sign-in is not the hot path.
        if await asyncio.to_thread(_recovers_to, text, raw, address):
            return  # Why: EIP-191 recovery to the message's address is the proof for an EOA.
        reader = self._readers.get(chain)
        try:
            code = await reader.request("eth_getCode", [address, "latest"]) if reader else None
            if code in (None, "0x", "0x0", ""):
                # Why: no code means an EOA (or nothing), and its signature did not recover to it.
                raise Problem(401, "bad_signature", "the signature was not made by the message's address")
            data = ERC1271_IS_VALID_SIGNATURE + encode(["bytes32", "bytes"], [defunct_hash_message(text=text), raw])
            answer = await reader.eth_call(address, data)
        except RpcError:
            # Why: a revert (or no isValidSignature at all) is the wallet saying no.
            raise Problem(401, "bad_signature", "the contract wallet did not accept the signature") from None
        except ChainUnavailable as exc:
            raise Problem(503, "chain_unavailable", "cannot ask the contract wallet on chain; try again later") from exc
        # Why the exact magic value in the first word: EIP-1271 says anything else means invalid.
        if len(answer) < 32 or answer[:4] != ERC1271_IS_VALID_SIGNATURE or any(answer[4:32]):
            raise Problem(401, "bad_signature", "the contract wallet did not accept the signature")


def _recovers_to(text: str, signature: bytes, address: str) -> bool:
    try:
        return Account.recover_message(encode_defunct(text=text), signature=signature) == address
    except Exception:  # noqa: BLE001 - any failure to recover (length, v, r/s range) is "not this EOA"
        return False


def _signature_bytes(signature: str) -> bytes:
    text = signature[2:] if signature[:2] in ("0x", "0X") else signature
    # Why a bound: EOA signatures are 65 bytes; contract wallets' (multisig) are longer, not unbounded.
    if not text or len(text) % 2 or len(text) > 16384:
        raise Problem(401, "bad_signature", "the signature must be 0x-prefixed hex bytes")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Problem(401, "bad_signature", "the signature must be 0x-prefixed hex bytes") from None
