"""RequestReads: a call's request read is bounded by one sweep, not a timer per call
(the e2e tests in tests/e2e/test_service_input.py hold real streams open)."""

import asyncio
import contextlib

import grpc
import pytest

from meshkit.grpc_server import RequestReads

WITHIN = 0.2


class Context:
    """What RequestReads uses of a grpc.aio servicer context: ``read``."""

    def __init__(self, message: object = None) -> None:
        self.message = message  # None: the message never comes

    async def read(self) -> object:
        if self.message is None:
            await asyncio.Event().wait()
        return self.message


@pytest.fixture
async def reads():
    reads = RequestReads(WITHIN)
    sweeping = asyncio.create_task(reads.sweep())
    yield reads
    sweeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeping


async def test_a_message_that_comes_is_returned(reads):
    assert await reads.read(Context(b"request")) == b"request"
    assert await reads.read(Context(grpc.aio.EOF)) is grpc.aio.EOF


async def test_a_read_past_its_bound_gives_none_and_leaves_no_cancel_behind(reads):
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await reads.read(Context()) is None  # in this task, as in a call's own
    assert loop.time() - started >= WITHIN
    # The call's task goes on (to answer INVALID_ARGUMENT): no cancel pending.
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)


async def test_the_callers_cancel_is_not_swallowed(reads):
    reading = asyncio.create_task(reads.read(Context()))
    await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
