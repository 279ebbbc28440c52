"""`gateway serve`: run the public and admin listeners until SIGINT/SIGTERM.

With `workers: N > 1` the parent forks N processes that share the public port
(SO_REUSEPORT); worker 0 also serves the admin listener. Each worker has its
own pools and caches.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

import structlog
from aiohttp import web

from gateway.app import build_admin_app, build_app, public_runner
from gateway.config import GatewayConfig

log = structlog.get_logger("gateway.server")


async def run(config: GatewayConfig, worker: int = 0, reuse_port: bool = False) -> None:
    public = build_app(config, settle=worker == 0)
    runners = [public_runner(public)]
    await runners[0].setup()
    await web.TCPSite(runners[0], config.listen.host, config.listen.port, reuse_port=reuse_port).start()
    if worker == 0 and config.admin_listen is not None:
        runners.append(web.AppRunner(build_admin_app(public), access_log=None))
        await runners[1].setup()
        await web.TCPSite(runners[1], config.admin_listen.host, config.admin_listen.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("listening", worker=worker, listen=str(config.listen),
             admin=str(config.admin_listen) if worker == 0 and config.admin_listen else None,
             services=sorted(config.services))
    await stop.wait()
    log.info("stopping", worker=worker)
    for runner in reversed(runners):
        await runner.cleanup()


def _run_worker(config: GatewayConfig, worker: int, reuse_port: bool) -> None:
    try:
        import uvloop

        uvloop.run(run(config, worker, reuse_port))
    except ImportError:  # uvloop is optional (not on every platform)
        asyncio.run(run(config, worker, reuse_port))


def serve(config: GatewayConfig) -> int:
    if config.workers == 1:
        _run_worker(config, 0, reuse_port=False)
        return 0
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_worker, args=(config, i, True), daemon=True) for i in range(config.workers)]
    for proc in procs:
        proc.start()

    def forward(signum, _frame):
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # If any worker dies, stop the rest: a supervisor (systemd, k8s) restarts the whole gateway.
    from multiprocessing.connection import wait

    wait([p.sentinel for p in procs])
    forward(signal.SIGTERM, None)
    for proc in procs:
        proc.join(timeout=10)
    return 0 if all(p.exitcode == 0 for p in procs) else 1
