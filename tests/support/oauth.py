"""The OAuth flow as a client and a wallet-holding subscriber do it, over plain HTTP: PKCE, dynamic
registration, the consent page's embedded request, the EIP-4361 text the page would have the wallet
sign (bound to the request by its Request ID), the consent POST, and the token endpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from urllib.parse import parse_qs, urlencode, urlsplit

from gateway.auth.siwe import SiweMessage
from gateway.oauth.store import UNUSED_CLIENT_KEPT
from tests.support.signin import iso, nonce_of, sign
from tests.support.stack import HOST, SUBSCRIBER

REDIRECT = "https://client.example/callback"
DATA_BLOCK = re.compile(r'<script type="application/json" id="request">(.*?)</script>', re.S)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def register(gw, redirect_uris=(REDIRECT,), name: str = "Test client", host: str = HOST) -> dict:
    async with gw.request("POST", "/.gateway/oauth/register", host=host,
                          json={"client_name": name, "redirect_uris": list(redirect_uris)}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


def authorize_params(client_id: str, challenge: str, redirect_uri: str = REDIRECT, **extra) -> dict:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st-1",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


async def consent_page(gw, params: dict, host: str = HOST) -> dict:
    """The consent page's embedded request (what the page shows and has signed)."""
    async with gw.request("GET", "/.gateway/oauth/authorize?" + urlencode(params), host=host,
                          allow_redirects=False) as resp:
        assert resp.status == 200, (resp.status, resp.headers.get("Location"), await resp.text())
        return json.loads(DATA_BLOCK.search(await resp.text()).group(1))


def consent_message(data: dict, nonce: str, address: str = SUBSCRIBER, host: str = HOST, **fields) -> str:
    s = data["siwe"]
    values = dict(scheme="http", domain=host, address=address, statement=s["statement"], uri=s["uri"],
                  chain_id=s["chain_id"], nonce=nonce, issued_at=iso(time.time()), request_id=s["request_id"],
                  resources=tuple(s["resources"]))
    values.update(fields)
    return SiweMessage(**values).text()


async def post_consent(gw, params: dict, message: str, signature: str, host: str = HOST):
    return gw.request("POST", "/.gateway/oauth/authorize", host=host,
                      json={"params": params, "message": message, "signature": signature})


async def authorize(gw, params: dict, address: str = SUBSCRIBER, host: str = HOST) -> dict:
    """The subscriber's consent: page, nonce, signature, POST; the redirect's query parameters."""
    data = await consent_page(gw, params, host)
    text = consent_message(data, await nonce_of(gw, host), address, host)
    async with await post_consent(gw, data["params"], text, sign(text, address), host) as resp:
        assert resp.status == 200, await resp.text()
        location = (await resp.json())["redirect_to"]
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()} | {"_location": location}


async def token(gw, form: dict, host: str = HOST, headers: dict | None = None):
    return gw.request("POST", "/.gateway/oauth/token", host=host, data=form, headers=headers)


async def oauth_error(resp, status: int, error: str) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json(content_type=None)
    assert body["error"] == error and body["code"] == error and body["status"] == status, body
    assert "access_token" not in body
    return body


def self_signed_cert(folder) -> tuple[str, str]:
    """A certificate for `localhost` / 127.0.0.1 that is its own CA (cert.pem, key.pem paths): what a
    process trusts with SSL_CERT_FILE, so an HTTPS client metadata document can be served locally."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def prune_scenario(store, grant: dict) -> None:
    """Registration is open: clients that never got a code are removed a day later; one that did stays."""
    meta = {"client_name": "C", "redirect_uris": ["https://c.example/cb"]}
    for name in ("idle_1", "idle_2", "c"):
        await store.add_client(name, meta, now=1_000.0)
    await store.add_code("h1", "fam", grant, expires_at=1_060.0, now=1_001.0)  # the grant's client is "c"
    await store.add_client("later", meta, now=1_000.0 + UNUSED_CLIENT_KEPT - 1)
    assert await store.client("idle_1") is not None  # not a day yet
    await store.add_client("next_day", meta, now=1_001.0 + UNUSED_CLIENT_KEPT)
    assert await store.client("idle_1") is None and await store.client("idle_2") is None
    assert await store.client("c") is not None  # it got a code: a wallet authorized it
    assert await store.client("later") is not None and await store.client("next_day") is not None

