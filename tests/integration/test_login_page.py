"""The sign-in page at GET /.gateway/login: served with a strict Content-Security-Policy and no
external resources, and, in a real headless Chromium (Debian's `chromium`, driven by Playwright)
with a fake `window.ethereum` whose personal_sign is answered by Python with a test key, it
reaches a token that then pays for a protected call."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil

import pytest

from gateway.dev.chain import DEV_ACCOUNTS
from gateway.auth.siwe import parse
from tests.support.signin import sign
from tests.support.stack import SUBSCRIBER

pytestmark = pytest.mark.asyncio
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (scripts/setup installs it with apt-get); the page's "
           "headers and markup are still tested without a browser")
QUERY = {"queries": [{"query": "love"}]}

FAKE_WALLET = """
window.ethereum = {
  isFakeWallet: true,
  async request({method, params}) {
    if (method === "eth_requestAccounts") return [ACCOUNT];
    if (method === "personal_sign") return await window.pythonPersonalSign(params[0], params[1]);
    throw new Error("the fake wallet does not do " + method);
  },
};
"""


async def test_the_page_is_self_contained_and_locked_down(gateway):
    async with gateway.request("GET", "/.gateway/login") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        html, headers = await resp.text(), resp.headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    for tag in ("script", "style"):  # exactly the inline blocks the page has are allowed
        for block in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S):
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["Referrer-Policy"] == "no-referrer"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no external resources at all
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", re.sub(r"<script>.*?</script>", "", html, flags=re.S))  # no onclick=
    async with gateway.request("HEAD", "/.gateway/login") as resp:
        assert resp.status == 200
    async with gateway.request("PUT", "/.gateway/login") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD, POST"


async def open_page(gateway, browser, wallet_account: str | None, signed: list):
    port = gateway.url.rsplit(":", 1)[1]
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "favicon" not in m.text else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    if wallet_account is not None:
        keys = dict(DEV_ACCOUNTS)

        def personal_sign(message_hex: str, account: str) -> str:
            text = bytes.fromhex(message_hex[2:]).decode()
            signed.append(text)
            return sign(text, next(a for a in keys if a.lower() == account.lower()))

        await page.expose_function("pythonPersonalSign", personal_sign)
        await page.add_init_script(FAKE_WALLET.replace("ACCOUNT", repr(wallet_account)))
    # Chromium resolves *.localhost to the loopback address itself: the real service host name.
    await page.goto(f"http://elvis.proxy.localhost:{port}/.gateway/login")
    return page, problems


@needs_chromium
async def test_a_person_with_a_wallet_signs_in_and_the_token_works(gateway):
    from playwright.async_api import async_playwright

    signed: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, problems = await open_page(gateway, browser, SUBSCRIBER.lower(), signed)
            await page.click("#signin")
            await page.wait_for_selector("#result", state="visible")
            token = await page.input_value("#token")
            assert await page.text_content("#status") == "Signed in."
            assert await page.text_content("#subscriber") == SUBSCRIBER
            assert await page.text_content("#balance") == "5"
            await page.click("#copy")
            await page.wait_for_selector("#copied:has-text('Copied.')")
            assert problems == []  # no CSP violation, no script error
        finally:
            await browser.close()
    message = parse(signed[0])  # what the wallet was asked to sign is a proper EIP-4361 message
    assert (message.scheme, message.domain) == ("http", f"elvis.proxy.localhost:{gateway.url.rsplit(':', 1)[1]}")
    assert message.chain_id == 31337 and message.statement == "Get an access token for elvis."
    async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
        assert resp.status == 200
        assert (await resp.json())["subscriber"] == SUBSCRIBER


@needs_chromium
async def test_without_a_wallet_the_page_says_what_to_do(gateway):
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page, problems = await open_page(gateway, browser, None, [])
            await page.click("#signin")
            await page.wait_for_selector("#status.error")
            assert "No Ethereum wallet" in await page.text_content("#status")
            assert await page.is_hidden("#result") and problems == []
        finally:
            await browser.close()
