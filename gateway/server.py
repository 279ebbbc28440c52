"""`gateway serve`: run the public and admin listeners; reload on SIGHUP; stop gracefully.

- SIGHUP re-reads the config file: a valid one is swapped in (calls in flight
  finish on the old one), an invalid one is refused with its problems logged.
- SIGTERM/SIGINT: stop accepting, give calls in flight (streams included) up
  to `shutdown_grace` to finish, settle what is pending, close the ledger, exit 0.
- `workers: N > 1`: the parent forks N processes sharing the public port
  (SO_REUSEPORT) and forwards signals to them; worker 0 also serves the admin
  listener and runs the settlement. Each worker has its own pools and caches.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from multiprocessing.connection import wait

import structlog
from aiohttp import web

from gateway.admin import build_admin_app
from gateway.app import build_app, prepare_database, public_runner, reload
from gateway.config import GatewayConfig
from gateway.config_loader import ConfigError, load_config

log = structlog.get_logger("gateway.server")


async def run(config: GatewayConfig, worker: int = 0, reuse_port: bool = False) -> None:
    structlog.contextvars.bind_contextvars(worker=worker)  # every log line says which process wrote it
    public = build_app(config, settle=worker == 0)
    runners = [public_runner(public, shutdown_timeout=config.shutdown_grace)]
    await runners[0].setup()
    await web.TCPSite(runners[0], config.listen.host, config.listen.port, reuse_port=reuse_port).start()
    if worker == 0 and config.admin_listen is not None:
        runners.append(web.AppRunner(build_admin_app(public), access_log=None, handle_signals=False))
        await runners[1].setup()
        await web.TCPSite(runners[1], config.admin_listen.host, config.admin_listen.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(public, config.source)))
    log.info("listening", worker=worker, listen=str(config.listen),
             admin=str(config.admin_listen) if worker == 0 and config.admin_listen else None,
             services=sorted(config.services))
    await stop.wait()
    log.info("stopping", worker=worker, grace_seconds=config.shutdown_grace)
    for runner in reversed(runners):  # the public runner last: it waits for calls in flight, then settles
        await runner.cleanup()
    log.info("stopped", worker=worker)


async def _reload(app: web.Application, path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Why: a broken file must never take down a running gateway; the old config stays.
        log.error("reload_refused", problems=exc.problems)
        return
    await reload(app, config)


def _run_worker(config: GatewayConfig, worker: int, reuse_port: bool) -> None:
    try:
        import uvloop

        uvloop.run(run(config, worker, reuse_port))
    except ImportError:  # uvloop is optional (not on every platform)
        asyncio.run(run(config, worker, reuse_port))


def serve(config: GatewayConfig) -> int:
    prepare_database(config)
    if config.pid_file:
        config.pid_file.parent.mkdir(parents=True, exist_ok=True)
        config.pid_file.write_text(f"{os.getpid()}\n")
    try:
        if config.workers == 1:
            _run_worker(config, 0, reuse_port=False)
            return 0
        return _supervise(config)
    finally:
        if config.pid_file:
            config.pid_file.unlink(missing_ok=True)


def _supervise(config: GatewayConfig) -> int:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_worker, args=(config, i, True), daemon=True) for i in range(config.workers)]
    for proc in procs:
        proc.start()

    def forward(signum, _frame):
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    # If any worker dies, stop the rest: a supervisor (systemd, k8s) restarts the whole gateway.
    wait([p.sentinel for p in procs])
    forward(signal.SIGTERM, None)
    for proc in procs:
        proc.join(timeout=config.shutdown_grace + 40)
    return 0 if all(p.exitcode == 0 for p in procs) else 1


def signal_reload(pid: int) -> None:
    os.kill(pid, signal.SIGHUP)
