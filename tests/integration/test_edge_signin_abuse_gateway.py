"""Sign-in is bound to the gateway's own address, and cheap to abuse no more (issue 10, item 11).

- A correctly signed message for another port of the same host (another application there) is
  refused with `domain_mismatch`, whatever Host header comes with it: the domain is compared with
  the service's public names and the public port from the config, not with the client's Host.
- Sign-in requests (nonce and login) are rate-limited per client address: the N+1th in the window
  is 429 `rate_limited` with Retry-After, while another address is still served.
- The shared balances table (a row per new address that signs in) stays bounded, and an
  anonymous login reads no balance from the chain before its signature is verified.

Real app (`make_gateway`) or real `gateway serve`, real chain, example plugin.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from eth_account import Account
from eth_account.messages import encode_defunct

from gateway.ledger.database import sqlite_path
from tests.support.rpc_proxy import RpcProxy
from tests.support.served import Served
from tests.support.signin import login, nonce_of, problem, sign, siwe
from tests.support.stack import HOST, SUBSCRIBER, base_config

PUBLIC_PORT = 8080  # the config's listen port (public_scheme http): what clients are told to use


def config_on_port(chain, plugin, signing_key, listen_port: int = PUBLIC_PORT, **tokens) -> dict:
    """The test config, with a listen port that says which port is public (the test app itself
    is bound to an ephemeral loopback port: the public port is a matter of configuration)."""
    data = base_config(chain, plugin, signing_key)
    data["listen"] = f"127.0.0.1:{listen_port}"
    data["tokens"] |= tokens
    return data


async def sign_in_as(gw, domain: str, host: str, key: str | None = None, address: str = SUBSCRIBER, **headers):
    """Nonce, message for `domain` (URI on it too), personal_sign, login with a `host` header."""
    async with gw.request("GET", "/.gateway/nonce", host=host, headers=headers) as resp:
        if resp.status != 200:
            return resp.status, await resp.json()
        nonce = (await resp.json())["nonce"]
    text = siwe(nonce, address, host=domain)
    signature = sign(text, address) if key is None else \
        "0x" + bytes(Account.sign_message(encode_defunct(text=text), key).signature).hex()
    async with gw.request("POST", "/.gateway/login", host=host, headers=headers,
                          json={"message": text, "signature": signature}) as resp:
        return resp.status, await resp.json()


# --- the message is bound to the service's public address -----------------------------------------


@pytest.mark.asyncio
async def test_a_message_for_another_port_of_the_same_host_is_refused(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(config_on_port(chain, plugin, signing_key))
    public, other = f"{HOST}:{PUBLIC_PORT}", f"{HOST}:9999"
    # The attack: a message some other application on :9999 got signed, replayed here with a
    # Host header that names that port too (the client writes the Host header).
    status, body = await sign_in_as(gw, domain=other, host=other)
    assert (status, body["code"]) == (401, "domain_mismatch")
    assert f"http://{public}" in body["detail"]
    # Without a port, http means :80, which is not where this service is published either.
    status, body = await sign_in_as(gw, domain=HOST, host=HOST)
    assert (status, body["code"]) == (401, "domain_mismatch")
    # The public address is accepted whatever the Host header's port says.
    status, body = await sign_in_as(gw, domain=public, host=other)
    assert status == 200 and body["subscriber"] == SUBSCRIBER


@pytest.mark.asyncio
async def test_a_message_for_the_listen_port_behind_https_is_refused(make_gateway, chain, plugin, signing_key):
    """public_scheme https: the public port is 443 (TLS in front), never the listen port."""
    data = config_on_port(chain, plugin, signing_key, listen_port=8443)
    data["public_scheme"] = "https"
    gw = await make_gateway(data)
    for domain in (f"{HOST}:8443", f"{HOST}:80"):
        nonce = await nonce_of(gw, domain)
        text = siwe(nonce, host=domain, uri=f"https://{domain}/.gateway/login")
        async with await login(gw, text, sign(text), host=domain) as resp:
            await problem(resp, 401, "domain_mismatch")
    for domain in (HOST, f"{HOST}:443"):
        text = siwe(await nonce_of(gw), host=domain, uri=f"https://{domain}/.gateway/login")
        async with await login(gw, text, sign(text)) as resp:
            assert resp.status == 200, await resp.text()


@pytest.mark.asyncio
async def test_a_message_for_another_service_or_a_foreign_host_is_refused(make_gateway, chain, plugin, signing_key):
    data = config_on_port(chain, plugin, signing_key)
    data["services"]["songs"] = dict(data["services"]["elvis"])
    gw = await make_gateway(data)
    songs = f"songs.proxy.localhost:{PUBLIC_PORT}"
    # Signed for elvis, presented to songs (same owner's gateway, another service): refused.
    status, body = await sign_in_as(gw, domain=f"{HOST}:{PUBLIC_PORT}", host=songs)
    assert (status, body["code"]) == (401, "domain_mismatch")
    # A Host that is no service's reaches nothing: it cannot make a foreign domain acceptable.
    status, body = await sign_in_as(gw, domain="evil.example.com", host="evil.example.com")
    assert (status, body["code"]) == (404, "unknown_service")
    # A URI on another port is refused too, with the domain right.
    nonce = await nonce_of(gw)
    text = siwe(nonce, host=f"{HOST}:{PUBLIC_PORT}", uri=f"http://{HOST}:9999/.gateway/login")
    async with await login(gw, text, sign(text)) as resp:
        await problem(resp, 401, "uri_mismatch")


# --- rate limit per client address ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_n_plus_first_sign_in_request_from_one_address_is_rate_limited(
        make_gateway, chain, plugin, signing_key):
    data = config_on_port(chain, plugin, signing_key, signin_rate="5/1m")
    data["trusted_proxies"] = ["127.0.0.1/32"]  # the test client plays a proxy: X-Forwarded-For is the client
    gw = await make_gateway(data)
    public = f"{HOST}:{PUBLIC_PORT}"
    one, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "203.0.113.8"}
    for _ in range(2):  # 2 sign-ins: 4 requests (nonce + login each)
        status, _ = await sign_in_as(gw, domain=public, host=public, **one)
        assert status == 200
    async with gw.request("GET", "/.gateway/nonce", host=public, headers=one) as resp:
        assert resp.status == 200  # the 5th
    # The 6th, a nonce or a login, whatever the left part of X-Forwarded-For (the client's own words) says.
    for method, spoofed in (("GET", "198.51.100.1, 203.0.113.7"), ("POST", "198.51.100.2, 203.0.113.7")):
        async with gw.request(method, "/.gateway/" + ("nonce" if method == "GET" else "login"), host=public,
                              headers={"X-Forwarded-For": spoofed}, json={}) as resp:
            body = await problem(resp, 429, "rate_limited")
            assert 1 <= int(resp.headers["Retry-After"]) <= 12  # one request back after 60 s / 5
            assert "too many sign-in requests" in body["detail"]
    # Another address is still served, the whole way.
    status, body = await sign_in_as(gw, domain=public, host=public, **other)
    assert status == 200 and body["subscriber"] == SUBSCRIBER
    # The limit is on sign-in only: the token works, the plan answers.
    async with gw.request("GET", "/.gateway/plan", host=public, headers=one) as resp:
        assert resp.status == 200


@pytest.mark.asyncio
async def test_x_forwarded_for_from_an_untrusted_peer_does_not_buy_a_new_bucket(
        make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(config_on_port(chain, plugin, signing_key, signin_rate="3/1m"))  # no trusted_proxies
    statuses = []
    for i in range(4):
        async with gw.request("GET", "/.gateway/nonce", headers={"X-Forwarded-For": f"198.51.100.{i}"}) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429]


def test_a_bad_signin_rate_is_reported_by_check_config(chain, plugin, signing_key, tmp_path):
    data = base_config(chain, plugin, signing_key)
    data["tokens"]["signin_rate"] = "ten a minute"
    data["tokens"]["nonce_ttl"] = "soon"  # every problem is reported at once
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "tokens.signin_rate: not a rate like 30/1m or 10/10s, or off" in done.stderr
    assert "tokens.nonce_ttl" in done.stderr
    for good in ("off", "100/10s"):
        data["tokens"]["signin_rate"], data["tokens"]["nonce_ttl"] = good, "5m"
        path.write_text(yaml.safe_dump(data))
        done = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


# --- no chain read before the signature, and a bounded shared balances table ---------------------


@pytest.mark.asyncio
async def test_a_login_with_a_bad_signature_reads_no_balance_from_the_chain(make_gateway, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as proxy:
        data = config_on_port(chain, plugin, signing_key)
        data["chains"]["local"]["rpc_urls"] = [proxy.url]
        gw = await make_gateway(data)
        public = f"{HOST}:{PUBLIC_PORT}"
        stranger = Account.create()
        for _ in range(3):  # signed by another key than the message's address
            status, body = await sign_in_as(gw, domain=public, host=public, key=stranger.key,
                                            address=Account.create().address)
            assert (status, body["code"]) == (401, "bad_signature")
        assert proxy.counts["eth_call"] == 0  # no balanceOf (and no isValidSignature: no contract there)
        status, body = await sign_in_as(gw, domain=public, host=public, key=stranger.key, address=stranger.address)
        assert status == 200 and body["balance"] == 0
        assert proxy.counts["eth_call"] == 1  # proven first, then one balance read


def test_many_sign_ins_leave_a_bounded_shared_balances_table(chain, plugin, signing_key, tmp_path):
    """Real `gateway serve`, workers: 2 (the table exists with more than one worker): every new
    address that signs in adds a row; once they are past any ttl, the next sign-in prunes them."""
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    data = yaml.safe_load(served.path.read_text())
    data["plan_cache"] = {"ttl": "1s", "negative_ttl": "1s"}
    data["tokens"]["signin_rate"] = "off"  # many sign-ins from one address here; the limit is tested above
    served.path.write_text(yaml.safe_dump(data))
    served.start()
    public = f"{HOST}:{served.port}"  # public_scheme http: the listen port is the public port

    def sign_in(account, domain: str = public) -> tuple[int, dict]:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{served.port}/.gateway/nonce", headers={"Host": public}), timeout=30) as resp:
            nonce = json.loads(resp.read())["nonce"]
        text = siwe(nonce, account.address, host=domain)
        signature = "0x" + bytes(account.sign_message(encode_defunct(text=text)).signature).hex()
        request = urllib.request.Request(
            f"http://127.0.0.1:{served.port}/.gateway/login", method="POST", headers={"Host": domain},
            data=json.dumps({"message": text, "signature": signature}).encode())
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def rows() -> list[tuple]:
        with sqlite3.connect(sqlite_path(served.config.metering.ledger)) as conn:
            return conn.execute("SELECT key, read_at FROM plan_balances").fetchall()

    try:
        for worker in (0, 1):  # both workers listen
            served.child.wait_for(rf'"event": "listening".*"worker": {worker}\b|"worker": {worker}\b.*"event": "listening"',
                                  timeout=30)
        # Against the real process too: a message for another port of this host is refused.
        status, body = sign_in(Account.create(), domain=f"{HOST}:{served.port + 1}")
        assert (status, body["code"]) == (401, "domain_mismatch")
        first = [Account.create() for _ in range(30)]
        for account in first:
            status, body = sign_in(account)
            assert status == 200 and body["balance"] == 0
        written = rows()
        assert len(written) == 30  # one per new address (a sign-in answers its balance)
        # Wait (deadline: generous) until those rows are past any use: ttl 1 s, lease 3 s, margin 1 s.
        horizon = max(read_at for _, read_at in written) + 3.0 + 1.0
        deadline = time.time() + 30
        while time.time() <= horizon + 0.5:
            assert time.time() < deadline
            time.sleep(0.1)
        status, _ = sign_in(Account.create())
        assert status == 200
        left = rows()
        assert len(left) == 1 and left[0] not in written  # the 30 are gone; the new one is kept
    finally:
        served.stop()
