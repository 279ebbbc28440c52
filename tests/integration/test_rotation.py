"""The token lifecycle on the real app: key rotation (a previous key verifies while it is listed,
not after), and revocation through the real `gateway token revoke` command on the same ledger
file, seen by a running gateway within its refresh delay, verified-token cache or not."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import jwt
import pytest

from gateway.auth.issuer import generate_signing_key, load_private_key
from tests.support.signin import problem, sign_in
from tests.support.stack import SUBSCRIBER, base_config

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}
ROOT = Path(__file__).resolve().parents[2]


async def status_of(gw, token: str) -> int:
    async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
        return resp.status


def rotated(data: dict, signing: Path, previous: list[Path]) -> dict:
    data["tokens"]["own"]["signing_key_file"] = str(signing)
    data["tokens"]["own"]["previous_key_files"] = [str(p) for p in previous]
    return data


async def test_a_previous_key_verifies_while_listed_and_not_after(make_gateway, chain, plugin, signing_key, tmp_path):
    new_key = tmp_path / "new.pem"
    generate_signing_key(new_key, "EdDSA")  # a rotation may change the algorithm too
    before = await make_gateway(base_config(chain, plugin, signing_key))
    old_token = before.token(SUBSCRIBER)

    during = await make_gateway(rotated(base_config(chain, plugin, signing_key), new_key, [signing_key]))
    async with during.request("GET", "/.gateway/jwks.json") as resp:
        jwks = await resp.json()
    assert [(k["kid"], k["alg"]) for k in jwks["keys"]] == [(during.issuer.kid, "EdDSA"), (before.issuer.kid, "ES256")]
    assert await status_of(during, old_token) == 200
    new_token = (await sign_in(during))["access_token"]
    assert jwt.get_unverified_header(new_token) == {"alg": "EdDSA", "kid": during.issuer.kid, "typ": "JWT"}
    assert await status_of(during, new_token) == 200

    after = await make_gateway(rotated(base_config(chain, plugin, signing_key), new_key, []))
    async with after.request("GET", "/.gateway/jwks.json") as resp:
        assert [k["kid"] for k in (await resp.json())["keys"]] == [after.issuer.kid]
    async with after.request("POST", "/query", json=QUERY, token=old_token) as resp:
        await problem(resp, 401, "invalid_token")
    assert await status_of(after, new_token) == 200


async def test_a_token_naming_a_listed_kid_with_another_key_is_refused(make_gateway, chain, plugin, signing_key,
                                                                       tmp_path):
    new_key, forged_key = tmp_path / "new.pem", tmp_path / "forged.pem"
    generate_signing_key(new_key)
    generate_signing_key(forged_key)
    gw = await make_gateway(rotated(base_config(chain, plugin, signing_key), new_key, [signing_key]))
    forger = await make_gateway(rotated(base_config(chain, plugin, signing_key), forged_key, []))
    claims = jwt.decode(forger.token(SUBSCRIBER), options={"verify_signature": False})
    forged = jwt.encode(claims, load_private_key(forged_key), algorithm="ES256", headers={"kid": gw.issuer.kid})
    async with gw.request("POST", "/query", json=QUERY, token=forged) as resp:
        await problem(resp, 401, "invalid_token")


# --- revocation through the command line ------------------------------------------------------------


async def revoke(config_file: Path, *args: str) -> tuple[int, str]:
    """Run the real `gateway token revoke` (another process, like an operator's shell)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "token", "revoke", *args, "--config", str(config_file), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def eventually(probe, deadline: float = 10.0):
    """Poll `probe` until it answers something truthy; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not (result := await probe()):
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.02)
    return result


async def revocable_gateway(make_gateway, chain, plugin, signing_key, tmp_path):
    data = base_config(chain, plugin, signing_key)
    data["tokens"]["revocation_refresh"] = "50ms"
    gw = await make_gateway(data)
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(json.dumps(data))  # JSON is YAML: the same ledger file for the CLI
    return gw, config_file


async def test_revoking_a_jti_reaches_the_running_gateway(make_gateway, chain, plugin, signing_key, tmp_path):
    gw, config_file = await revocable_gateway(make_gateway, chain, plugin, signing_key, tmp_path)
    token = (await sign_in(gw))["access_token"]
    other = gw.token(SUBSCRIBER)
    assert await status_of(gw, token) == 200  # verified, and now in the verified-token cache
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    code, out = await revoke(config_file, jti)
    assert code == 0 and f"revoked token {jti}" in out and "within their tokens.revocation_refresh" in out
    revoked_at = time.monotonic()
    await eventually(lambda: _is(status_of(gw, token), 401))
    assert time.monotonic() - revoked_at < 5.0
    async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
        await problem(resp, 401, "token_revoked")
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert await status_of(gw, other) == 200  # another token of the same subscriber is untouched


async def test_revoking_a_subscriber_revokes_all_its_tokens_so_far(make_gateway, chain, plugin, signing_key, tmp_path):
    gw, config_file = await revocable_gateway(make_gateway, chain, plugin, signing_key, tmp_path)
    tokens = [(await sign_in(gw))["access_token"], gw.token(SUBSCRIBER)]
    assert [await status_of(gw, t) for t in tokens] == [200, 200]
    code, out = await revoke(config_file, "--subscriber", SUBSCRIBER.lower())
    assert code == 0 and f"every token issued to {SUBSCRIBER}" in out
    for token in tokens:
        await eventually(lambda: _is(status_of(gw, token), 401))


async def test_revoke_needs_exactly_one_target(make_gateway, chain, plugin, signing_key, tmp_path):
    _, config_file = await revocable_gateway(make_gateway, chain, plugin, signing_key, tmp_path)
    assert (await revoke(config_file))[0] == 2
    assert (await revoke(config_file, "abc", "--subscriber", SUBSCRIBER))[0] == 2
    code, out = await revoke(config_file, "--subscriber", "0x1234")
    assert code == 1 and "bad argument" in out


async def _is(awaitable, expected) -> bool:
    return await awaitable == expected
