"""`gateway demo`: the whole product on one machine, walked through.

Starts a local chain (anvil), deploys the credits plan and mints credits to a
subscriber, starts the example plugin and the gateway (real processes, on
loopback), then shows what a client sees: an open endpoint, a protected one
without a token, with a token but no credits, with credits, over budget; one
call paid per call by the official x402 client (no plan, no token: an EIP-3009
token transfer); and then the settlement: one burn on chain for everything charged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain, free_port
from gateway.dev.process import REPO, ChildProcess
from gateway.auth.issuer import generate_signing_key

OWNER, SUBSCRIBER, BROKE = DEV_ACCOUNTS[1][0], DEV_ACCOUNTS[2][0], DEV_ACCOUNTS[3][0]
# Why a fourth account for "try it": the walk-through spends and burns every credit of SUBSCRIBER,
# so a curl with its token would only ever answer 402.
TRY_IT, TRY_IT_CREDITS = DEV_ACCOUNTS[4][0], 100
HOST = "elvis.proxy.localhost"
# x402: a payer holding the demo's EIP-3009 token (no plan, no token of the gateway), and the payee.
X402_PAYER, X402_PAYEE, X402_FUNDS, X402_PRICE = DEV_ACCOUNTS[5], DEV_ACCOUNTS[1][0], 1_000_000, "0.05"


def call(base: str, method: str, path: str, token: str | None = None, body: dict | None = None):
    """One HTTP call through the gateway (the Host header picks the service)."""
    headers = {"Host": HOST, "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _show(title: str, status: int, body: bytes, expect: int) -> bool:
    mark = "ok " if status == expect else "FAIL"
    text = body.decode(errors="replace")
    print(f"[{mark}] {title}\n       -> {status} {text[:300]}{'…' if len(text) > 300 else ''}\n")
    return status == expect


def run_demo(once: bool = False, port: int = 0, keep: bool = False) -> int:
    """Nothing the demo starts outlives it: Ctrl-C, SIGTERM and SIGHUP (its terminal closed) stop
    every child here; kill -9 stops them through their parent-death signal (gateway.dev.process).
    Its state folder (signing key, ledger) is removed on exit unless `keep`."""
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)  # handled as Ctrl-C: the finally blocks stop the children
    children: list[ChildProcess] = []
    work = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    fate = "kept on exit" if keep else "removed on exit (--keep keeps it)"
    print(f"state    {work} (signing key, ledger): {fate}")
    try:
        with Anvil() as anvil:
            try:
                return _walk_through(anvil, work, children, once, port or free_port())
            finally:
                for child in reversed(children):
                    child.stop()
    except KeyboardInterrupt:  # stopped during the walk-through: children are stopped already
        return 130
    finally:
        if not keep:  # after the children stopped: the gateway no longer writes the ledger
            shutil.rmtree(work, ignore_errors=True)


def _walk_through(anvil: Anvil, work: Path, children: list[ChildProcess], once: bool, port: int) -> int:
    chain = DevChain(anvil.rpc_url)
    plan = chain.deploy_credits_plan()
    chain.mint_credits(plan, SUBSCRIBER, 1, 5)
    print(f"chain    {anvil.rpc_url} (anvil, chain id {anvil.chain_id})")
    print(f"plan     CreditsPlan {plan}, token id 1: {SUBSCRIBER} holds 5 credits, {BROKE} holds 0")

    upstream_secret = secrets.token_urlsafe(24)
    plugin_port = free_port()
    children.append(ChildProcess(
        [sys.executable, "-m", "examples.song_plugin", "--port", str(plugin_port)],
        ready=r"listening on", env={"SONG_PLUGIN_TOKEN": upstream_secret},
    ))
    print(f"plugin   http://127.0.0.1:{plugin_port} (the owner's secret is only known to it and the gateway)")

    key_file = work / "signing-key.pem"
    generate_signing_key(key_file, "ES256")
    admin_port = free_port()
    env = {
        "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "GATEWAY_SIGNING_KEY_FILE": str(key_file), "CHAIN_RPC_URL": anvil.rpc_url, "PLAN_CONTRACT": plan,
        "GATEWAY_STATE_DIR": str(work), "GATEWAY_OPERATOR_KEY": DEV_ACCOUNTS[0][1], "GATEWAY_SETTLE_EVERY": "1h",
        "ELVIS_UPSTREAM": f"http://127.0.0.1:{plugin_port}", "ELVIS_UPSTREAM_TOKEN": upstream_secret,
    }
    token = chain.deploy_payment_token()
    chain.mint_tokens(token, X402_PAYER[0], X402_FUNDS)
    print(f"x402     PaymentToken {token} (EIP-3009, 6 decimals): {X402_PAYER[0]} holds 1.00, no plan")
    config = _config_selling_ask_per_call(work, token)
    gateway = ChildProcess([sys.executable, "-m", "gateway", "serve", "--config", config],
                           ready=r'"event": "listening"', env=env)
    children.append(gateway)
    base = f"http://127.0.0.1:{port}"
    print(f"gateway  {base} (Host: {HOST}), admin http://127.0.0.1:{admin_port}/metrics\n")

    def issue(who: str) -> str:
        return ChildProcess([sys.executable, "-m", "gateway", "token", "issue", "--config", config, "--service",
                             "elvis", "--subscriber", who], ready=r"^ey", env=env).ready_match.string

    tokens = {who: issue(who) for who in (SUBSCRIBER, BROKE)}
    query = {"queries": [{"query": "blue suede"}]}
    ok = _show("open endpoint, no token: GET /.well-known/ai-plugin.json",
               *_pick(call(base, "GET", "/.well-known/ai-plugin.json")), expect=200)
    ok &= _show_rewritten_manifest(base, port, plugin_port)
    ok &= _show("protected endpoint, no token: POST /query", *_pick(call(base, "POST", "/query", body=query)), 401)
    ok &= _show(f"protected endpoint, token of {BROKE} (no credits): POST /query",
                *_pick(call(base, "POST", "/query", tokens[BROKE], query)), 402)
    ok &= _show(f"protected endpoint, token of {SUBSCRIBER} (5 credits): POST /query",
                *_pick(call(base, "POST", "/query", tokens[SUBSCRIBER], query)), 200)
    ok &= _check_upstream_saw(plugin_port, upstream_secret, list(tokens.values()))
    ask = {"question": "what happens on the blue highway"}
    for _ in range(2):
        status, headers, body = call(base, "POST", "/ask", tokens[SUBSCRIBER], ask)
        ok &= _show(f"paid call, POST /ask (2 credits): charged {headers.get('X-Credits-Charged')}, "
                    f"remaining {headers.get('X-Credits-Remaining')}", status, body, 200)
    ok &= _show("over budget: POST /query with every credit charged (not yet burned on chain)",
                *_pick(call(base, "POST", "/query", tokens[SUBSCRIBER], query)), 402)
    ok &= asyncio.run(_show_x402_call(chain, base, token, ask))
    ok &= _show_settlement(chain, plan, admin_port, charged=5)

    if not once:  # Why only here: with --once every server is stopped by the time a person could try it
        chain.mint_credits(plan, TRY_IT, 1, TRY_IT_CREDITS)
        _print_try_it(base, port, issue(TRY_IT), config, work)
        print("everything is running; Ctrl-C stops it all", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            try:
                print("stopping", flush=True)
            except OSError:  # the terminal is gone (SIGHUP): nobody to tell
                pass
    return 0 if ok else 1


def _print_try_it(base: str, port: int, token: str, config: str, work: Path) -> None:
    """Commands a person can paste while the demo runs, each with the status it answers (`# -> NNN`).

    Why Host carries the port: the gateway rewrites the manifest's URLs to the Host it was asked
    for, so without the port they would point at port 80."""
    host = f"-H 'Host: {HOST}:{port}'"
    auth = '-H "Authorization: Bearer $TOKEN"'
    query = "-H 'Content-Type: application/json' -d '{\"queries\": [{\"query\": \"blue\"}]}'"
    print(f"try it: {TRY_IT} holds {TRY_IT_CREDITS} credits; POST /query charges 1 (402 once they are spent)")
    print(f"  export TOKEN={token}")
    print(f"  curl -s {host} {base}/.well-known/ai-plugin.json   # -> 200")
    print(f"  curl -s {host} {query} {base}/query   # -> 401")
    print(f"  curl -s {host} {auth} {query} {base}/query   # -> 200")
    script = Path(sys.executable).parent / "gateway"  # the venv's console script, when there is one
    command = str(script) if script.exists() else f"{sys.executable} -m gateway"
    print(f"  GATEWAY_STATE_DIR={work} {command} usage --config {config}   # the ledger, no other secret needed")
    print()


def _config_selling_ask_per_call(work: Path, token: str) -> str:
    """config/gateway.yaml, with POST /ask also sold per call (x402) for the demo's token."""
    import yaml

    data = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text())
    elvis = data["services"]["elvis"]
    elvis["x402"] = {"network": "eip155:31337", "asset": token, "pay_to": X402_PAYEE,
                     "extra": {"name": "Demo USD", "version": "1"}}
    elvis["protected_endpoints"] = [dict(rule, x402=X402_PRICE) if isinstance(rule, dict) and rule["endpoint"] == "POST /ask"
                                    else rule for rule in elvis["protected_endpoints"]]
    data["metering"]["ledger"] = "sqlite:///${GATEWAY_STATE_DIR}/ledger.db"  # no longer beside config/
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


async def _show_x402_call(chain: DevChain, base: str, token: str, body: dict) -> bool:
    """One call paid by the official x402 client: it reads the 402's terms, signs an EIP-3009
    authorization and retries; the gateway verifies, forwards, and settles it on chain."""
    from eth_account import Account
    from x402 import x402Client
    from x402.http import decode_payment_response_header
    from x402.http.clients.httpx import x402HttpxClient
    from x402.mechanisms.evm.exact import register_exact_evm_client

    client = x402Client()
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": token}]})
    register_exact_evm_client(client, Account.from_key(X402_PAYER[1]))
    before = chain.token_balance(token, X402_PAYEE)
    async with x402HttpxClient(client, headers={"Host": HOST}, timeout=30) as http:
        resp = await http.post(base + "/ask", json=body)
    settled = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"]) if "PAYMENT-RESPONSE" in resp.headers else None
    received = chain.token_balance(token, X402_PAYEE) - before
    good = resp.status_code == 200 and settled is not None and settled.success and received == 50_000
    print(f"[{'ok ' if good else 'FAIL'}] x402 client, no plan and no token: POST /ask paid per call "
          f"({X402_PRICE} token)\n"
          f"       -> {resp.status_code}; PAYMENT-RESPONSE tx {settled.transaction if settled else '(none)'}\n"
          f"       the payee received {received / 1e6:.2f} token (transferWithAuthorization, gas paid by the operator)\n")
    return good


def _show_settlement(chain: DevChain, plan: str, admin_port: int, charged: int) -> bool:
    """Settle now (the admin endpoint) and show the burn on chain."""
    before = chain.credits_of(plan, SUBSCRIBER, 1)
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/settle", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        report = json.loads(resp.read())
    after = chain.credits_of(plan, SUBSCRIBER, 1)
    good = before - after == charged and len(report["confirmed"]) == 1
    print(f"[{'ok ' if good else 'FAIL'}] settlement: one burnCredits transaction for {charged} charged credits\n"
          f"       tx {', '.join(report['confirmed']) or '(none)'}\n"
          f"       on-chain balance of {SUBSCRIBER}: {before} -> {after}\n")
    return good


def _show_rewritten_manifest(base: str, port: int, plugin_port: int) -> bool:
    """The plugin's manifest and OpenAPI document as ChatGPT gets them: on the proxy URL, user_http auth."""
    host = f"{HOST}:{port}"
    texts = []
    for path in ("/.well-known/ai-plugin.json", "/.well-known/openapi.yaml"):
        with urllib.request.urlopen(urllib.request.Request(base + path, headers={"Host": host}), timeout=10) as resp:
            texts.append(resp.read().decode())
    manifest = json.loads(texts[0])
    servers = [line.split("url:", 1)[1].strip() for line in texts[1].splitlines() if "url:" in line]
    leaked = any(f"127.0.0.1:{plugin_port}" in text for text in texts)
    good = (manifest["api"]["url"] == f"http://{host}/.well-known/openapi.yaml" and servers == [f"http://{host}"]
            and manifest["auth"] == {"type": "user_http", "authorization_type": "bearer"} and not leaked)
    print(f"[{'ok ' if good else 'FAIL'}] the plugin's manifest, rewritten by the gateway "
          f"(the plugin was not touched)\n"
          f"       api.url {manifest['api']['url']}, logo_url {manifest['logo_url']}\n"
          f"       auth {json.dumps(manifest['auth'])}; OpenAPI servers {', '.join(servers)}\n"
          f"       the plugin's own address (127.0.0.1:{plugin_port}) appears in them: {leaked}\n")
    return good


def _pick(answer):
    status, _headers, body = answer
    return status, body


def _check_upstream_saw(plugin_port: int, secret: str, subscriber_tokens: list[str]) -> bool:
    """Ask the plugin what it received: the owner's secret, and never a subscriber's token."""
    req = urllib.request.Request(f"http://127.0.0.1:{plugin_port}/debug/requests",
                                 headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        seen = json.loads(resp.read())
    text = json.dumps(seen)
    got_secret = any(r["path"] == "/query" and f"Bearer {secret}" in json.dumps(r["headers"]) for r in seen)
    leaked = any(tok in text for tok in subscriber_tokens)
    good = got_secret and not leaked
    print(f"[{'ok ' if good else 'FAIL'}] the plugin saw the owner's secret on /query: {got_secret}; "
          f"a subscriber token reached it: {leaked}\n")
    return good
