"""Share one in-flight load among concurrent callers (request coalescing).

`InFlight.run(key, load)` starts `load()` for `key` unless a load for that key is already
running, then awaits it; every caller that arrives meanwhile awaits the same task. Used for plan
balances (`credits.plans`), JWKS fetches (`auth.jwks`), the revocation list (`auth.revocation`)
and plugin documents (`http.plugin_documents`): a burst of misses costs one call, not a hundred.

- A failure reaches every waiter of that load and is not remembered: the next call after it
  starts a new load. (Caching answers, failures included, is the caller's business.)
- A waiter that is cancelled (its client hung up) does not cancel the load: the others still get
  it. A load nobody waits for any more runs to its end; its exception is retrieved, so asyncio
  does not warn that it was never retrieved.
- `forget(key)`: the running load still answers its waiters, but the next call starts a new one.
  `is_current(key)`, called inside a load, tells it whether it is still the one new callers join
  (a load that began before an invalidation must not write a cache after it).

Imports nothing of the gateway: auth, credits and http all use it, so it sits beside their folders.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable, Coroutine, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class InFlight(Generic[K, V]):
    """The loads running now, at most one per key (a single-load user passes the key None)."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        """How many loads are running (a gauge for metrics)."""
        return sum(not task.done() for task in self._tasks.values())

    def running(self, key: K) -> bool:
        """Whether a call for `key` now would join a running load rather than start one."""
        task = self._tasks.get(key)
        return task is not None and not task.done()

    def is_current(self, key: K) -> bool:
        """Inside a load: whether it is still the load new callers of `key` join (not forgotten)."""
        return self._tasks.get(key) is asyncio.current_task()

    def forget(self, key: K) -> None:
        """The next call for `key` starts a new load; the running one still answers its waiters."""
        self._tasks.pop(key, None)

    async def run(self, key: K, load: Callable[[], Coroutine[Any, Any, V]]) -> V:
        """The result of the load for `key`: the running one, or `load()` started now.

        An exception raised by `load()` itself, before its coroutine runs, is this caller's alone."""
        task = self._tasks.get(key)
        # A finished task is never joined: after a failure the next call loads again.
        if task is None or task.done():
            task = asyncio.ensure_future(load())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._finished, key))
        # Why shield: one waiter giving up must not cancel the load the others are waiting for.
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        # Runs however the task ended, and before any waiter resumes (it was added first): the
        # next call after a failure starts a new load instead of joining the failed one.
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when every waiter left
