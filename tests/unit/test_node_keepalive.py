"""A node's keepalives (node.streams): `working` frames while it works on a request, none on
an idle stream, and none after the answer."""

from __future__ import annotations

import asyncio

from node.protocol import KEEPALIVE_INTERVAL, Working, decode_frame
from node.streams import Arrivals, finish, keepalives


async def _requests(gaps: list[float]):  # noqa: ANN202
    for gap in gaps:
        await asyncio.sleep(gap)
        yield object()


def test_keepalives_start_at_the_first_message_and_stop_at_the_answer() -> None:
    async def run() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        arrivals = Arrivals(_requests([0.6]))  # idle for 0.6 s, then the request

        async def work() -> str:
            await anext(arrivals)
            await asyncio.sleep(1.0)  # computing
            return "answer"

        started = loop.time()
        task = asyncio.ensure_future(work())
        times = []
        async for message in keepalives(task, arrivals.started):
            assert decode_frame([message]).type == Working.TYPE
            times.append(loop.time() - started)
        assert task.result() == "answer"
        return times, loop.time() - started

    times, total = asyncio.run(run())
    assert 1.5 < total < 2.5  # 0.6 s idle, 1 s at work
    # nothing while the stream was idle; then one every interval until the answer
    assert times and times[0] >= 0.6 + KEEPALIVE_INTERVAL * 0.9
    assert len(times) >= int(1.0 / KEEPALIVE_INTERVAL) - 1
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap < 2 * KEEPALIVE_INTERVAL for gap in gaps)


def test_an_idle_stream_gets_no_keepalive() -> None:
    async def run() -> int:
        arrivals = Arrivals(_requests([]))

        async def work() -> None:
            await asyncio.sleep(1.0)  # waiting for a request that never comes

        task = asyncio.ensure_future(work())
        return len([m async for m in keepalives(task, arrivals.started)])

    assert asyncio.run(run()) == 0


def test_abandoned_work_is_cancelled_and_awaited() -> None:
    async def run() -> tuple[bool, bool]:
        unwound = asyncio.Event()

        async def work() -> None:
            try:
                await asyncio.sleep(60)
            finally:
                unwound.set()

        task = asyncio.ensure_future(work())
        await asyncio.sleep(0)
        await finish(task)
        return task.cancelled(), unwound.is_set()

    assert asyncio.run(run()) == (True, True)
