"""What all of a node's streams together may hold (node.streams): frames share the incoming
budget and are refused as `busy` beyond it; read-ahead messages share a buffer and wait."""

from __future__ import annotations

import asyncio

import pytest
import torch

from node.protocol import ErrorCode, Frame, ProtocolError, encode_frame, read_frame
from node.streams import IncomingBudget, Response, _Buffered


async def _messages(frame: Frame):  # noqa: ANN202
    for message in encode_frame(frame, Response):
        yield message


def test_frames_take_their_tensors_from_one_budget_and_give_them_back() -> None:
    budget = IncomingBudget(3 * 2**20)
    tensor = torch.zeros(2**18)  # 1 MiB

    async def run() -> None:
        held = budget.lease()
        frame = await read_frame(
            _messages(Frame({"type": "x"}, [tensor, tensor])), reserve=held.take
        )
        assert frame is not None and budget.used == 2 * 2**20
        refused = budget.lease()
        with pytest.raises(ProtocolError) as busy:
            await read_frame(
                _messages(Frame({"type": "x"}, [tensor, tensor])), reserve=refused.take
            )
        assert busy.value.code is ErrorCode.BUSY and "3 MiB of incoming tensors of its 3" in str(
            busy.value
        )
        assert budget.used == 3 * 2**20  # the refused frame's first tensor fit
        refused.release()
        assert budget.used == 2 * 2**20
        held.release()
        assert budget.used == 0

    asyncio.run(run())


def test_read_ahead_waits_for_room_instead_of_growing() -> None:
    async def run() -> list[str]:
        buffered = _Buffered(10)
        events: list[str] = []
        await buffered.take(8)

        async def late() -> None:
            await buffered.take(5)  # 13 > 10: waits
            events.append("taken")

        waiting = asyncio.ensure_future(late())
        await asyncio.sleep(0.05)
        events.append("freed")
        buffered.give(8)
        await waiting
        assert buffered.used == 5
        buffered.give(5)
        await buffered.take(20)  # larger than the limit, but alone it fits: never stuck
        return events

    assert asyncio.run(run()) == ["freed", "taken"]
