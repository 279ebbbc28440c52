"""`gateway serve`: run the public and admin listeners; reload on SIGHUP; stop gracefully.

- Start-up, in order: raise the open-files limit; block SIGHUP/SIGTERM/SIGINT (a signal that
  arrives early waits until its handler is in place: `gateway reload` right after start never
  kills the gateway); bind the listening sockets ONCE (no SO_REUSEPORT: a second gateway on the
  same address fails here with one clear line and exit 1); lock the ledger (`gateway.process.ledger_lock`:
  a second gateway on the same ledger fails the same way); migrate the ledger; write the pid file.
- SIGHUP re-reads the config file: a valid one is swapped in (calls in flight
  finish on the old one), an invalid one is refused with its problems logged.
- SIGTERM/SIGINT: stop accepting, give calls in flight (streams included) up
  to `shutdown_grace` to finish, settle what is pending, close the ledger, exit 0.
- `workers: 1` runs in this process, with no supervisor: the process is the gateway, and the
  platform's restart policy (systemd `Restart=`, a container's restart policy) replaces it.
- `workers: N > 1`: `gateway.process.supervisor` forks N workers that accept on the parent's sockets
  (the kernel hands each new connection to one of them), replaces a worker that dies, and
  stops on a crash loop; the worker in slot 0 also serves the admin listener and settles. Its
  /metrics sums every worker's (`gateway.ops.worker_metrics`: a folder of metric files the parent
  creates on start and removes on exit).
- Every listener cuts slow and idle clients off (`gateway.process.connection_limits`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from gateway.ops.admin import build_admin_app
from gateway.app import build_app, prepare_database, public_runner, reload
from gateway.config.model import GatewayConfig, ListenAddress
from gateway.config.load import ConfigError, load_config
from gateway.process.connection_limits import ConnectionBudget, LimitedSite, raise_open_files_limit
from gateway.ledger import LedgerUnavailable
from gateway.ledger.backends import is_shared
from gateway.process.ledger_lock import LedgerInUse, hold_ledger
from gateway.process.parent_death import parent_alive
from gateway.process.supervisor import HANDLED, Supervisor
from gateway.ops import worker_metrics
from gateway.ops.observability import flush_logs

log = structlog.get_logger("gateway.server")
BACKLOG = 2048  # the kernel caps it at net.core.somaxconn
PARENT_CHECK_EVERY = 1.0  # seconds; the parent-death signal is the fast path, this the fallback


@dataclass
class Listeners:
    """Sockets bound by `serve` before any worker starts, inherited by the workers."""

    public: list[socket.socket]
    admin: list[socket.socket] = field(default_factory=list)
    ledger_lock: int | None = None

    def close_sockets(self) -> None:
        for sock in self.public + self.admin:
            sock.close()

    def close(self) -> None:
        self.close_sockets()
        if self.ledger_lock is not None:
            os.close(self.ledger_lock)
            self.ledger_lock = None


def bind(address: ListenAddress) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (SO_REUSEADDR, never SO_REUSEPORT)."""
    infos = socket.getaddrinfo(address.host or None, address.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, sockaddr in dict.fromkeys(infos):  # in order, each address once
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            # Why SO_REUSEADDR: a restart binds at once over connections left in TIME_WAIT. It does
            # not let a second listener bind a port that is listened on (SO_REUSEPORT would).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def run(config: GatewayConfig, worker: int, listeners: Listeners, parent: int | None = None) -> None:
    structlog.contextvars.bind_contextvars(worker=worker)  # every log line says which process wrote it
    limits = config.connections
    public = build_app(config, settle=worker == 0)
    runners = [public_runner(public, shutdown_timeout=config.shutdown_grace,
                             keepalive_timeout=limits.keepalive_timeout)]
    await runners[0].setup()
    budget = ConnectionBudget("public", limits.max_per_worker)
    for sock in listeners.public:
        await LimitedSite(runners[0], sock, budget, limits.header_timeout, backlog=BACKLOG).start()
    if worker == 0 and listeners.admin:
        # Its own budget: a flood on the public side never takes the operator's /healthz away.
        runners.append(web.AppRunner(build_admin_app(public), access_log=None, handle_signals=False,
                                     keepalive_timeout=limits.keepalive_timeout))
        await runners[1].setup()
        admin_budget = ConnectionBudget("admin", limits.admin_max)
        for sock in listeners.admin:
            await LimitedSite(runners[1], sock, admin_budget, limits.header_timeout, backlog=BACKLOG).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(public, config.source)))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # a signal that came early is handled now
    watch = asyncio.create_task(_watch_parent(parent)) if parent is not None else None
    log.info("listening", worker=worker, pid=os.getpid(), listen=str(config.listen),
             admin=str(config.admin_listen) if worker == 0 and listeners.admin else None,
             services=sorted(config.services))
    await stop.wait()
    log.info("stopping", worker=worker, grace_seconds=config.shutdown_grace)
    if watch is not None:
        watch.cancel()
    for runner in reversed(runners):  # the public runner last: it waits for calls in flight, then settles
        await runner.cleanup()
    log.info("stopped", worker=worker)


async def _watch_parent(parent: int) -> None:
    """The fallback of the parent-death signal (not on every platform): never serve orphaned."""
    while parent_alive(parent):
        await asyncio.sleep(PARENT_CHECK_EVERY)
    log.error("parent_died", parent=parent, detail="the supervisor is gone: this worker stops now")
    os.kill(os.getpid(), signal.SIGKILL)


async def _reload(app: web.Application, path) -> None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Why: a broken file must never take down a running gateway; the old config stays.
        log.error("reload_refused", problems=exc.problems)
        return
    await reload(app, config)


def _run_worker(config: GatewayConfig, worker: int, listeners: Listeners, parent: int | None) -> None:
    try:
        try:
            import uvloop

            uvloop.run(run(config, worker, listeners, parent))
        except ImportError:  # uvloop is optional (not on every platform)
            asyncio.run(run(config, worker, listeners, parent))
    finally:
        # The loop batches log lines per iteration; a forked worker exits without atexit handlers.
        flush_logs()


def serve(config: GatewayConfig) -> int:
    soft, hard = raise_open_files_limit()
    limits = config.connections
    # A proxied call holds two descriptors (client and upstream); the ledger, logs and chains a few.
    needed = limits.max_per_worker + config.upstream_connections + limits.admin_max + 256
    if needed > soft:
        log.warning("open_files_limit_low", soft=soft, hard=hard, needed=needed,
                    detail="connections.max_per_worker + upstream_connections may need more descriptors than "
                           "this process may open: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) "
                           "or lower them")
    # Why block before anything: SIGHUP's default action kills; `gateway reload` may send it the
    # moment the pid file exists. Blocked, it waits for the handler that reloads.
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    listeners = _open_listeners(config)
    if listeners is None:
        return 1
    try:
        try:
            prepare_database(config)
        except LedgerUnavailable as exc:
            # Why stop: a replica that cannot reach its ledger could sell nothing; its supervisor
            # (systemd, compose, Kubernetes) restarts it, and the orchestrator shows the line below.
            log.error("ledger_unavailable", detail=str(exc))
            return 1
        if config.pid_file:
            config.pid_file.parent.mkdir(parents=True, exist_ok=True)
            config.pid_file.write_text(f"{os.getpid()}\n")
        try:
            if config.workers == 1:
                _run_worker(config, 0, listeners, None)
                return 0
            # Stopping: the parent's copies of the sockets close (the workers close theirs as they stop),
            # so new clients are refused at once instead of waiting in a backlog nobody accepts from.
            # Metrics: every worker writes its values to a fresh folder the admin listener sums.
            log.info("metrics_folder", folder=str(worker_metrics.start_multiprocess()))
            return Supervisor(config, lambda cfg, slot, parent: _worker_main(cfg, slot, parent, listeners),
                              on_stopping=listeners.close_sockets, on_exited=worker_metrics.worker_exited).run()
        finally:
            worker_metrics.stop_multiprocess()
            if config.pid_file:
                config.pid_file.unlink(missing_ok=True)
    finally:
        listeners.close()


def _open_listeners(config: GatewayConfig) -> Listeners | None:
    """Bind both addresses and lock the ledger, or log one line saying why not (None)."""
    try:
        listeners = Listeners(public=bind(config.listen))
    except OSError as exc:
        log.error("cannot_listen", listen=str(config.listen), error=exc.strerror or str(exc),
                  detail=f"cannot listen on {config.listen}: {exc.strerror or exc} (another gateway there?)")
        return None
    try:
        if config.admin_listen is not None:
            listeners.admin = bind(config.admin_listen)
    except OSError as exc:
        listeners.close()
        log.error("cannot_listen", admin_listen=str(config.admin_listen), error=exc.strerror or str(exc),
                  detail=f"cannot listen on {config.admin_listen}: {exc.strerror or exc} (another gateway there?)")
        return None
    try:
        # Why only SQLite's: replicas on a shared PostgreSQL ledger are the point of it; their one
        # settler is elected in the database instead (gateway.ledger.settler_lease).
        if not is_shared(config.metering.ledger):
            listeners.ledger_lock = hold_ledger(config.metering.ledger)
    except LedgerInUse as exc:
        listeners.close()
        log.error("ledger_in_use", detail=str(exc))
        return None
    return listeners


def _worker_main(config: GatewayConfig, slot: int, parent: int, listeners: Listeners) -> None:
    """A forked worker: only slot 0 keeps the admin sockets and the ledger lock (it settles)."""
    if slot != 0:
        for sock in listeners.admin:
            sock.close()
        if listeners.ledger_lock is not None:
            os.close(listeners.ledger_lock)
        listeners = Listeners(public=listeners.public)
    worker_metrics.worker_started(slot)  # the admin listener reports this process's memory and CPU as this slot's
    _run_worker(config, slot, listeners, parent)


def signal_reload(pid: int) -> None:
    os.kill(pid, signal.SIGHUP)
