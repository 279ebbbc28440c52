"""`workers: 2`: two processes on one port share the ledger; reservations stay exact across them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import yaml
from tests.support.served import Served
from tests.support.stack import START_CREDITS, SUBSCRIBER


def test_two_workers_never_spend_more_than_the_balance(chain, plugin, signing_key, tmp_path):
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        for slot in (0, 1):  # a worker that is not listening yet gets no connection
            served.wait_until_listening(slot)
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(lambda _: served.call("/query", {"queries": [{"query": "love"}]}),
                                    range(5 * START_CREDITS)))
        statuses = sorted(status for status, _ in results)
        served_by = {line.split('"worker": ')[1][0] for line in served.child.lines if '"event": "request"' in line}
        assert served_by == {"0", "1"}  # the kernel spread the connections over both processes
        assert statuses.count(200) == START_CREDITS and statuses.count(402) == 4 * START_CREDITS
        assert served.ledger("SELECT SUM(amount), COUNT(*) FROM charges") == [(START_CREDITS, START_CREDITS)]
        served.settle()
        assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == 0
    finally:
        served.stop()
    assert served.child.proc.returncode == 0


def test_two_workers_read_a_new_subscribers_balance_from_the_chain_once(chain, plugin, signing_key, tmp_path):
    import asyncio
    import threading

    from tests.support.rpc_proxy import RpcProxy

    loop = asyncio.new_event_loop()
    proxy = RpcProxy(chain.rpc_url)
    loop.run_until_complete(proxy.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    data = yaml.safe_load(served.path.read_text())
    data["chains"]["local"]["rpc_urls"] = [proxy.url]
    served.path.write_text(yaml.safe_dump(data))
    served.start()
    try:
        for slot in (0, 1):  # a worker that is not listening yet gets no connection
            served.wait_until_listening(slot)
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(lambda _: served.call("/query", {"queries": [{"query": "love"}]}), range(40)))
        served_by = {line.split('"worker": ')[1][0] for line in served.child.lines if '"event": "request"' in line}
        reads = proxy.counts["eth_call"]  # before stopping: the final settlement reads the balance too
    finally:
        served.stop()
        asyncio.run_coroutine_threadsafe(proxy.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    assert served_by == {"0", "1"}
    assert {status for status, _ in results} <= {200, 402}
    assert reads == 1  # one chain read, shared by both workers


def test_two_workers_with_leases_serve_exactly_the_balance(chain, plugin, signing_key, tmp_path):
    """A balance large enough for leases (40 credits: each worker leases a few at a time, one
    hold for several calls) is spent exactly: 40 of 120 calls succeed, none is charged twice."""
    chain.dev.mint_credits(chain.credits_plan, SUBSCRIBER, 1, 40 - START_CREDITS)
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        for slot in (0, 1):
            served.wait_until_listening(slot)
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(lambda _: served.call("/query", {"queries": [{"query": "love"}]}), range(120)))
        statuses = sorted(status for status, _ in results)
        assert statuses.count(200) == 40 and statuses.count(402) == 80
        assert served.ledger("SELECT SUM(amount), COUNT(*) FROM charges") == [(40, 40)]
        leases = served.ledger("SELECT substr(reservation_id, 1, instr(reservation_id, '/') - 1) AS lease, COUNT(*)"
                               " FROM charges GROUP BY lease")
        assert max(count for _, count in leases) > 1  # a lease served several calls
        served.settle()
        assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == 0
    finally:
        served.stop()
    assert served.child.proc.returncode == 0
