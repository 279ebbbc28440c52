"""gateway.inflight: one load shared by concurrent callers, failures not remembered, shielded waiters."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway.inflight import InFlight

pytestmark = pytest.mark.asyncio


class Loader:
    """A load that waits for `gate`, counts its starts, and returns `value` or raises `error`."""

    def __init__(self, value: object = "loaded") -> None:
        self.value, self.error, self.starts = value, None, 0
        self.gate = asyncio.Event()

    async def __call__(self) -> object:
        self.starts += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_load():
    loads: InFlight[str, object] = InFlight()
    loader = Loader()
    tasks = [asyncio.create_task(loads.run("k", loader)) for _ in range(50)]
    await settle()
    assert loader.starts == 1 and loads.running("k") and len(loads) == 1
    loader.gate.set()
    assert await asyncio.gather(*tasks) == ["loaded"] * 50
    assert loader.starts == 1 and not loads.running("k") and len(loads) == 0


async def test_each_key_has_its_own_load():
    loads: InFlight[str, object] = InFlight()
    a, b = Loader("a"), Loader("b")
    tasks = [asyncio.create_task(loads.run("a", a)), asyncio.create_task(loads.run("b", b))]
    await settle()
    assert len(loads) == 2
    a.gate.set()
    b.gate.set()
    assert await asyncio.gather(*tasks) == ["a", "b"]


async def test_a_failure_reaches_every_waiter_and_the_next_call_loads_again():
    loads: InFlight[None, object] = InFlight()
    loader = Loader()
    loader.error = RuntimeError("down")
    tasks = [asyncio.create_task(loads.run(None, loader)) for _ in range(10)]
    await settle()
    loader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and loader.starts == 1
    loader.error = None
    assert await loads.run(None, loader) == "loaded"
    assert loader.starts == 2


async def test_a_cancelled_waiter_does_not_cancel_the_load_for_the_others():
    loads: InFlight[str, object] = InFlight()
    loader = Loader()
    tasks = [asyncio.create_task(loads.run("k", loader)) for _ in range(3)]
    await settle()
    tasks[0].cancel()  # the caller that started the load leaves (client hung up)
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert tasks[0].cancelled() and loads.running("k")
    loader.gate.set()
    assert await asyncio.gather(tasks[1], tasks[2]) == ["loaded", "loaded"]
    assert loader.starts == 1


async def test_a_load_all_waiters_left_runs_to_its_end_and_its_error_is_retrieved():
    loads: InFlight[str, object] = InFlight()
    loader = Loader()
    loader.error = RuntimeError("down")
    task = asyncio.create_task(loads.run("k", loader))
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    del task  # its frame holds the load's task: let it go, so that it can be collected
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        loader.gate.set()
        await settle()
        assert loader.starts == 1 and not loads.running("k") and len(loads) == 0
        gc.collect()  # an unretrieved exception is reported when its task is collected
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_an_error_starting_the_load_is_the_callers_alone():
    loads: InFlight[str, object] = InFlight()

    def broken():
        raise ValueError("bad arguments")

    with pytest.raises(ValueError):
        await loads.run("k", broken)
    assert not loads.running("k")
    loader = Loader()
    loader.gate.set()
    assert await loads.run("k", loader) == "loaded"


async def test_forget_lets_the_next_call_start_a_new_load_and_is_current_tells_the_old_one():
    loads: InFlight[str, object] = InFlight()
    seen: list[bool] = []

    def loader(value: str, gate: asyncio.Event):
        async def load() -> str:
            await gate.wait()
            seen.append(loads.is_current("k"))
            return value
        return load

    old_gate, new_gate = asyncio.Event(), asyncio.Event()
    old = asyncio.create_task(loads.run("k", loader("old", old_gate)))
    await settle()
    loads.forget("k")  # e.g. an invalidation: the running load must not write the cache any more
    new = asyncio.create_task(loads.run("k", loader("new", new_gate)))
    await settle()
    old_gate.set()
    assert await old == "old"
    assert loads.running("k")  # the old load's end does not remove the new one
    new_gate.set()
    assert await new == "new"
    assert seen == [False, True]
