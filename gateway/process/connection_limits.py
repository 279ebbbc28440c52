"""Slow and idle clients cannot starve a process: a deadline for every request head, a cap on
open client connections, and the open-files limit raised at start.

aiohttp has no deadline for reading a request head (its keep-alive timer only closes a
connection that is idle *between* requests, after `keepalive_timeout`), and no cap on
connections: a client that opens thousands of sockets and sends half a head holds thousands of
file descriptors for ever. `LimitedSite` serves a runner on an already bound socket with
`LimitedRequestHandler`, which

- closes a connection whose request head is not complete `header_timeout` seconds after the
  connection opened or after the first byte of a later head arrived (a request body is not a
  head: a slow upload is the service timeout's business, not this one's);
- refuses a connection at once (closed before anything is read, so no file descriptor is held)
  while the process already holds `budget.limit` connections on this listener.

Each listener has its own `ConnectionBudget`: the admin listener's small budget is never spent
by the public side.
"""

from __future__ import annotations

import asyncio
import resource
import socket

import structlog
from aiohttp import web
from aiohttp.web_server import Server

from gateway.http.malformed_requests import ProblemRequestHandler

log = structlog.get_logger("gateway.connections")


class ConnectionBudget:
    """Open connections on one listener of this process, and how many it may hold."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        self.active = 0
        self.refused = 0
        self.timed_out = 0
        self._last_warning: dict[str, float] = {}

    def warn(self, event: str, now: float, **fields) -> None:
        """One line per kind per 10 s, not one per connection: a flood must not flood the log too."""
        if now - self._last_warning.get(event, -10.0) >= 10.0:
            self._last_warning[event] = now
            log.warning(event, listener=self.name, refused_total=self.refused, timed_out_total=self.timed_out,
                        **fields)


class LimitedRequestHandler(ProblemRequestHandler):
    """aiohttp's request handler with a head deadline and a place in a connection budget (and
    malformed requests answered in problem JSON with one log line: gateway.http.malformed_requests)."""

    __slots__ = ("_budget", "_head_timeout", "_head_timer", "_counted")

    def __init__(self, manager: Server, *, budget: ConnectionBudget, header_timeout: float, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self._budget = budget
        self._head_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        budget = self._budget
        if budget.active >= budget.limit:
            # Why refuse: above the cap a connection is closed before anything is read from it;
            # the clients already connected (and the file descriptors left) keep being served.
            budget.refused += 1
            budget.warn("connections_refused", self._loop.time(), limit=budget.limit)
            transport.abort()
            return
        budget.active += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._counted:
            return  # refused in connection_made: aiohttp never saw it
        self._counted = False
        self._budget.active -= 1
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        first_bytes = self._head_timer is None and self._waiting_for_head()
        super().data_received(data)
        if self._messages:
            self._cancel_head_timer()  # a complete head was parsed: this request is on its way
        elif first_bytes:
            # The first bytes of a later head on a kept-alive connection, not all of it yet. (Armed
            # only now: a head that arrives whole, as most do, costs no timer.)
            self._arm_head_timer()

    def _waiting_for_head(self) -> bool:
        """Between requests: aiohttp waits for the next head (a body being read is not that)."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def _arm_head_timer(self) -> None:
        if self._head_timeout > 0:
            self._head_timer = self._loop.call_later(self._head_timeout, self._head_deadline)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._messages or self._request_in_progress:
            return  # the head arrived in the meantime
        # Why close: a head that takes longer than header_timeout is a slow-loris client (or a
        # dead one); holding its connection open would let a few of them use up every descriptor.
        self._budget.timed_out += 1
        self._budget.warn("request_head_timeouts", self._loop.time(), header_timeout=self._head_timeout)
        if self.transport is not None:
            self.transport.close()
        self.force_close()


class LimitedSite(web.SockSite):
    """Serve `runner` on an already bound, listening `sock` with head deadlines and a budget."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, budget: ConnectionBudget,
                 header_timeout: float, **kwargs) -> None:
        super().__init__(runner, sock, **kwargs)
        self._budget, self._head_timeout = budget, header_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (SockSite.start would listen)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        budget, header_timeout = self._budget, self._head_timeout

        def protocol() -> LimitedRequestHandler:
            # Server.__call__ builds a plain RequestHandler; ours takes the same arguments
            # (Server keeps the runner's handler arguments in `_kwargs`).
            return LimitedRequestHandler(server, loop=loop, budget=budget, header_timeout=header_timeout,
                                         **server._kwargs)

        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every open connection costs one descriptor).

    Returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit some kernels refuse
            log.warning("open_files_limit_unchanged", soft=soft, hard=hard, error=str(exc))
    return soft, hard
