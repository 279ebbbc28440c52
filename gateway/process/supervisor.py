"""`workers: N > 1`: the parent process keeps N workers running on the sockets it bound.

- Each worker is forked into a slot (0..N-1) and dies with the parent (parent-death signal).
  Slot 0 also serves the admin listener and runs the settlement: those duties belong to the
  slot, so its replacement takes them over. The parent holds the listening sockets (public and
  admin) for its whole life: while a slot is empty, new connections wait in the kernel's backlog
  and are accepted by the other workers (public) or by the replacement (admin).
- A worker that exits (crash, kill, anything but the parent's own SIGTERM) is logged as
  `worker_exited` and replaced in its slot after a back-off (0.5 s, doubling per exit of that
  slot within the crash-loop window, at most 10 s). `on_exited(pid)` is told of every exit
  (the server forgets the dead worker's live gauges; its counters stay in the sums).
- A crash loop stops the gateway: CRASH_LOOP_EXITS (5) worker exits within CRASH_LOOP_WINDOW
  (60 s) log `crash_loop` and the parent stops the rest and exits 1. Constants, not config: a
  gateway whose workers die every few seconds needs an operator, not a tuning knob.
- SIGTERM/SIGINT: forwarded to every worker (each stops gracefully), replacements stop.
  SIGHUP: forwarded; the parent re-reads the config too, so a replacement starts on the
  config the others run (`listen`, `admin_listen` and `workers` change on restart only).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from typing import Callable

import structlog

from gateway.config.model import GatewayConfig
from gateway.config.load import ConfigError, load_config
from gateway.process.parent_death import die_with_parent

log = structlog.get_logger("gateway.supervisor")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CRASH_LOOP_EXITS = 5
CRASH_LOOP_WINDOW = 60.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0
STOP_EXTRA = 40.0  # beyond shutdown_grace: the final settlement is bounded to 30 s

WorkerMain = Callable[[GatewayConfig, int, int], None]  # (config, slot, parent pid)


class Supervisor:
    def __init__(self, config: GatewayConfig, worker_main: WorkerMain,
                 on_stopping: Callable[[], None] = lambda: None,
                 on_exited: Callable[[int], None] = lambda pid: None) -> None:
        """`on_stopping`: called once when the gateway stops (e.g. close the parent's listening
        sockets, so that new clients are refused while the workers finish what they hold).
        `on_exited(pid)`: called for every worker that exited (e.g. forget its live gauges)."""
        self.config = config
        self._on_exited = on_exited
        self._worker_main = worker_main
        self._on_stopping = on_stopping
        self._ctx = multiprocessing.get_context("fork")
        self._procs: dict[int, multiprocessing.process.BaseProcess] = {}
        self._restart_at: dict[int, float] = {}
        self._exits: list[tuple[float, int]] = []  # (monotonic time, slot) of unexpected exits
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def run(self) -> int:
        """Start every slot, keep them running until SIGTERM/SIGINT or a crash loop; the exit code."""
        for sig in HANDLED:
            signal.signal(sig, self._on_signal)
        for slot in range(self.config.workers):
            self._start(slot)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)  # signals that came early are handled now
        try:
            code = self._loop()
        finally:
            for sig in HANDLED:  # stopped: a late signal changes nothing (and must not write to a closed fd)
                signal.signal(sig, signal.SIG_IGN)
            os.close(self._wake_r)
            os.close(self._wake_w)
        return code

    def _on_signal(self, signum: int, _frame) -> None:
        try:
            os.write(self._wake_w, bytes([signum]))  # handled in the loop, not in the handler
        except BlockingIOError:
            pass  # the pipe is full of signals not yet handled: one more changes nothing

    def _loop(self) -> int:
        while True:
            timeout = None
            if self._restart_at and not self._stopping:
                timeout = max(0.0, min(self._restart_at.values()) - time.monotonic())
            sentinels = {p.sentinel: slot for slot, p in self._procs.items()}
            ready = wait([self._wake_r, *sentinels], timeout)
            if self._wake_r in ready:
                self._handle_signals()
            for sentinel in ready:
                if sentinel in sentinels:
                    if self._reap(sentinels[sentinel]):
                        return self._stop_all(crash_loop=True)
            if self._stopping:
                return self._stop_all(crash_loop=False)
            now = time.monotonic()
            for slot, at in list(self._restart_at.items()):
                if at <= now:
                    del self._restart_at[slot]
                    self._start(slot)

    def _handle_signals(self) -> None:
        try:
            signums = os.read(self._wake_r, 256)
        except BlockingIOError:
            return
        for signum in signums:
            if signum == signal.SIGHUP:
                self._reload()
                self._forward(signal.SIGHUP)
            else:
                log.info("stopping", process="supervisor", signal=signal.Signals(signum).name)
                self._stopping = True

    def _reload(self) -> None:
        if self.config.source is None:
            return
        try:
            config = load_config(self.config.source)
        except ConfigError:
            return  # each worker logs the problems (reload_refused) and keeps its config: so do we
        # What a reload cannot change (the workers log `reload_needs_restart`) stays as the running
        # workers have it, so a replacement never differs from its siblings.
        old = self.config
        self.config = dataclasses.replace(config, listen=old.listen, admin_listen=old.admin_listen,
                                          workers=old.workers, connections=old.connections,
                                          metering=dataclasses.replace(config.metering, ledger=old.metering.ledger))

    def _start(self, slot: int) -> None:
        parent = os.getpid()
        proc = self._ctx.Process(target=self._child, args=(self.config, slot, parent), daemon=True,
                                 name=f"gateway-worker-{slot}")
        # Why blocked: the child must not run our handlers (they write to our pipe) before it
        # installs its own; it unblocks them once its event loop's handlers are in place.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._procs[slot] = proc
        log.info("worker_started", process="supervisor", slot=slot, pid=proc.pid)

    def _child(self, config: GatewayConfig, slot: int, parent: int) -> None:
        die_with_parent(parent)  # first: a parent killed from here on takes this worker with it
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._worker_main(config, slot, parent)

    def _reap(self, slot: int) -> bool:
        """A worker exited: log it, schedule its replacement. True when that makes a crash loop."""
        proc = self._procs.pop(slot)
        proc.join()
        code = proc.exitcode
        self._on_exited(proc.pid)
        if self._stopping:
            return False  # it was asked to stop
        fields = {"exit_code": code} if code is not None and code >= 0 else \
            {"signal": signal.Signals(-code).name if code is not None else None}
        log.error("worker_exited", process="supervisor", slot=slot, pid=proc.pid, **fields)
        now = time.monotonic()
        self._exits = [(t, s) for t, s in self._exits if now - t < CRASH_LOOP_WINDOW] + [(now, slot)]
        if len(self._exits) >= CRASH_LOOP_EXITS:
            log.critical("crash_loop", process="supervisor", exits=len(self._exits),
                         window_seconds=CRASH_LOOP_WINDOW,
                         detail=f"{len(self._exits)} worker exits within {CRASH_LOOP_WINDOW:.0f} s: "
                                "stopping the gateway")
            return True
        recent = sum(1 for _, s in self._exits if s == slot)
        delay = min(BACKOFF_FIRST * 2 ** (recent - 1), BACKOFF_MAX)
        self._restart_at[slot] = now + delay
        log.info("worker_restart_scheduled", process="supervisor", slot=slot, in_seconds=delay)
        return False

    def _forward(self, sig: int) -> None:
        for proc in self._procs.values():
            if proc.is_alive():
                try:
                    os.kill(proc.pid, sig)
                except ProcessLookupError:
                    pass  # exited this instant: reaped on the next turn

    def _stop_all(self, crash_loop: bool) -> int:
        self._stopping = True
        self._restart_at.clear()
        self._on_stopping()
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace + STOP_EXTRA
        codes = []
        for slot, proc in list(self._procs.items()):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:  # past every bound: calls in flight had their grace
                log.error("worker_killed", process="supervisor", slot=slot, pid=proc.pid)
                proc.kill()
                proc.join()
            codes.append(proc.exitcode)
        self._procs.clear()
        log.info("stopped", process="supervisor")
        return 1 if crash_loop or any(code != 0 for code in codes) else 0
