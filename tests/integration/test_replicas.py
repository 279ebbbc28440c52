"""Replicas: separate `gateway serve` processes (each its own listen port: they stand for machines)
sharing one PostgreSQL ledger and one anvil chain. Paid calls never overspend across replicas, the
settler hands over when its replica is killed, a revocation and a spent sign-in nonce reach every
replica, an x402 authorization pays once whichever replica sees it, and a replica that loses its
database refuses paid calls 503 and recovers by itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import jwt
import pytest

from gateway.dev.process import REPO
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures
from tests.support.served import Served
from tests.support.signin import sign, siwe
from tests.support.stack import HOST, START_CREDITS, SUBSCRIBER
from tests.support.tcp_proxy import TcpProxy
from tests.support.x402 import ASK_PRICE, PAYEE, exact, funded_payment_token, pay, sell_per_call, signed, terms

QUERY = ("/query", {"queries": [{"query": "love"}]})  # one credit a call


@pytest.fixture
def replicas(chain, plugin, signing_key, tmp_path, postgres_url):
    """make(n, **settings) -> n replicas (not started) on one PostgreSQL ledger, behind one public
    address: `public_scheme: https` makes the public port 443 for all, as behind a TLS load balancer."""
    made: list[Served] = []

    def make(n: int, ledger: str = postgres_url, settle_every: str = "1h", refresh: str = "5s") -> list[Served]:
        group = []
        for _ in range(n):
            r = Served(chain, plugin, signing_key, tmp_path / f"replica-{len(made)}", ledger=ledger)
            r.configure(lambda d: (d.update(public_scheme="https"),
                                   d["metering"].update(settle_every=settle_every),
                                   d["tokens"].update(revocation_refresh=refresh)))
            made.append(r)
            group.append(r)
        return group

    yield make
    for r in made:
        r.stop()


def ledger_rows(postgres, url: str, sql: str) -> list[list[str]]:
    return [line.split("|") for line in postgres.psql(url, sql).splitlines()]


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll `condition` until it returns something true (the replicas work in the background)."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)
    return found


def start_all(group: list[Served]) -> None:
    for r in group:
        r.start()
        r.wait_until_listening(0)


def test_five_n_paid_calls_over_three_replicas_with_n_credits_charge_exactly_n(replicas, chain, postgres,
                                                                             postgres_url):
    group = replicas(3)
    start_all(group)
    with ThreadPoolExecutor(max_workers=15) as pool:
        results = list(pool.map(lambda i: group[i % 3].call(*QUERY), range(5 * START_CREDITS)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) == START_CREDITS and statuses.count(402) == 4 * START_CREDITS
    assert ledger_rows(postgres, postgres_url, "SELECT SUM(amount), COUNT(*) FROM charges") == \
        [[str(START_CREDITS), str(START_CREDITS)]]
    reports = [r.settle() for r in group]
    assert [rep["settler"] for rep in reports].count(True) == 1  # one settler among the replicas
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == 0
    usage = subprocess.run([sys.executable, "-m", "gateway", "usage", "--config", str(group[2].path)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert usage.returncode == 0, usage.stderr  # the operator's report, from the shared ledger
    assert f"total: calls {START_CREDITS}, charged {START_CREDITS}, settled {START_CREDITS}, pending 0" in usage.stdout


def test_killing_the_settling_replica_mid_settlement_hands_over_and_burns_once(replicas, chain, postgres,
                                                                             postgres_url):
    settling, *others = replicas(1) + replicas(2, settle_every="1s")
    settling.start(crash_at="settlement_recorded")
    settling.child.wait_for(r'"event": "settler_lease_taken"', timeout=30)  # it settles, the others wait
    start_all(others)
    for _ in range(4):
        assert others[0].call(*QUERY)[0] == 200
    with pytest.raises(OSError):
        settling.settle()  # records the burn, then SIGKILLs itself before sending it
    assert settling.child.proc.wait(timeout=30) == -signal.SIGKILL
    assert ledger_rows(postgres, postgres_url, "SELECT status FROM settlements") == [["recorded"]]
    # Another replica takes the lease within its settle_every, reconciles the recorded burn (the
    # same signed transaction) and confirms it: burned once.
    wait_for(lambda: ledger_rows(postgres, postgres_url, "SELECT status, amount FROM settlements") ==
             [["confirmed", "4"]], "the recorded burn confirmed by another replica")
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS - 4
    assert ledger_rows(postgres, postgres_url, "SELECT COUNT(*) FROM charges WHERE settled_at IS NULL") == [["0"]]
    taken = [r for r in others if any('"settler_lease_taken"' in line for line in r.child.lines)]
    assert len(taken) == 1


def test_a_token_revoked_on_one_replica_is_refused_by_every_replica(replicas):
    # A refresh interval of an hour: only the database's notification can tell the replicas in time.
    group = replicas(3, refresh="1h")
    start_all(group)
    token = group[0].token  # one subscriber's token, presented to any replica (the load balancer's pick)
    assert [r.call(*QUERY, token=token)[0] for r in group] == [200, 200, 200]  # each has read the (empty) list
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    done = subprocess.run([sys.executable, "-m", "gateway", "token", "revoke", "--config", str(group[0].path), jti],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    for r in group:
        status, _, body = wait_for(lambda: (lambda a: a if a[0] == 401 else None)(r.call_with_body(*QUERY, token=token)),
                                   f"replica on :{r.port} refuses the revoked token", timeout=30)
        assert json.loads(body)["code"] == "token_revoked"


def test_a_sign_in_nonce_spent_at_one_replica_is_refused_at_another(replicas):
    first, second = replicas(2)
    start_all([first, second])
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{first.port}/.gateway/nonce",
                                                       headers={"Host": HOST}), timeout=30) as resp:
        nonce = json.loads(resp.read())["nonce"]
    text = siwe(nonce, uri=f"https://{HOST}/.gateway/login")  # the replicas' one public address
    body = json.dumps({"message": text, "signature": sign(text)}).encode()

    def login(replica: Served) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{replica.port}/.gateway/login", data=body, method="POST",
                                     headers={"Host": HOST, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, answer = login(first)
    assert status == 200 and answer["access_token"]
    status, problem = login(second)  # the same signed message, replayed at another machine
    assert (status, problem["code"]) == (401, "nonce_reused")


def test_a_replica_that_loses_its_database_refuses_503_and_recovers(replicas, postgres, postgres_url):
    target = urlsplit(postgres_url)
    with TcpProxy(target.hostname, target.port) as path:
        [replica] = replicas(1, ledger=postgres_url.replace(f":{target.port}/", f":{path.port}/"))
        start_all([replica])
        assert replica.call(*QUERY)[0] == 200
        path.cut()  # the network to the database goes away
        status, headers, body = replica.call_with_body(*QUERY)
        assert status == 503 and headers["Content-Type"].startswith("application/problem+json")
        # Fail closed, whichever shared state it needed first: the ledger or the revocation list.
        assert json.loads(body)["code"] in ("ledger_unavailable", "revocations_unavailable")
        path.restore()
        wait_for(lambda: replica.call(*QUERY)[0] == 200, "the replica serves again once the database is back")
    # Nothing charged for the refused call: two answered calls, two charges.
    assert ledger_rows(postgres, postgres_url, "SELECT COUNT(*) FROM charges") == [["2"]]


@pytest.mark.asyncio
async def test_an_x402_payment_settles_once_and_cannot_be_replayed_at_another_replica(replicas, chain, postgres,
                                                                                    postgres_url):
    token = funded_payment_token(chain)
    first, second = replicas(2)
    for replica in (first, second):
        sell_per_call(replica, token)
    start_all([first, second])
    signature = await signed(token, exact(await terms(first)))  # the official SDK signs for /ask
    paid = await pay(first, signature)
    assert paid.status_code == 200 and "PAYMENT-RESPONSE" in paid.headers
    replayed = await pay(second, signature)  # the same authorization, at another machine
    assert replayed.status_code == 402 and replayed.json()["code"] == "payment_invalid"
    assert chain.dev.token_balance(token, PAYEE) == ASK_PRICE  # transferred once
    assert ledger_rows(postgres, postgres_url, "SELECT status, amount FROM x402_payments") == \
        [["settled", str(ASK_PRICE)]]
