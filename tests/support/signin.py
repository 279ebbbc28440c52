"""Sign-In with Ethereum as a wallet does it: the EIP-4361 text for the test gateway, a dev
account's personal_sign, the nonce and login calls, and the problem-JSON check for refusals."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from eth_account import Account
from eth_account.messages import encode_defunct

from gateway.auth.siwe import SiweMessage
from tests.support.stack import DEV_ACCOUNTS, HOST, SUBSCRIBER

KEYS = dict(DEV_ACCOUNTS)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def siwe(nonce: str, address: str = SUBSCRIBER, host: str = HOST, **fields) -> str:
    """An EIP-4361 text for the gateway at `host` (http, as in the test config)."""
    values = dict(domain=host, address=address, uri=f"http://{host}/.gateway/login", chain_id=31337, nonce=nonce,
                  issued_at=iso(time.time()), statement="Get an access token for elvis.")
    values.update(fields)
    return SiweMessage(**values).text()


def sign(text: str, address: str = SUBSCRIBER) -> str:
    return "0x" + bytes(Account.sign_message(encode_defunct(text=text), KEYS[address]).signature).hex()


async def problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json()
    assert body["code"] == code and body["status"] == status
    return body


async def nonce_of(gw, host: str = HOST) -> str:
    async with gw.request("GET", "/.gateway/nonce", host=host) as resp:
        assert resp.status == 200
        return (await resp.json())["nonce"]


async def login(gw, message: str, signature: str, host: str = HOST):
    return gw.request("POST", "/.gateway/login", host=host, json={"message": message, "signature": signature})


async def sign_in(gw, address: str = SUBSCRIBER) -> dict:
    """The whole subscriber path: nonce, EIP-4361 text, personal_sign, login; the answer."""
    text = siwe(await nonce_of(gw), address)
    async with await login(gw, text, sign(text, address)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()
