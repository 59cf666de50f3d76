"""meshkit.group_commit: callers arriving while a write is in flight share the next one."""

import asyncio

import pytest

from meshkit.group_commit import GroupCommit


class Writer:
    """write_many that records each batch and waits for the test to release it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail:
            raise self.fail
        return [item * 10 for item in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_item_goes_at_once_and_later_ones_share_the_next_write():
    writer = Writer()
    group = GroupCommit(writer, max_batch=3)
    first = asyncio.create_task(group.submit(1))
    await settle()
    later = [asyncio.create_task(group.submit(i)) for i in range(2, 7)]
    await settle()
    writer.release.set()
    assert await first == 10
    assert [await task for task in later] == [20, 30, 40, 50, 60]
    assert writer.batches == [[1], [2, 3, 4], [5, 6]]  # at most max_batch at once


async def test_a_failed_write_is_every_callers_answer_and_the_next_batch_still_goes():
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    first = asyncio.create_task(group.submit(1))
    await settle()
    second = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    writer.fail = ConnectionError("database away")
    writer.release.set()
    for task in [first, *second]:
        with pytest.raises(ConnectionError):
            await task
    writer.fail = None
    assert await group.submit(4) == 40  # nothing stuck: a new write starts


async def test_a_cancelled_caller_drops_only_its_answer_not_the_batch():
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    first = asyncio.create_task(group.submit(1))
    await settle()
    leaving = asyncio.create_task(group.submit(2))
    staying = asyncio.create_task(group.submit(3))
    await settle()
    leaving.cancel()
    writer.release.set()
    assert await first == 10
    assert await staying == 30
    assert writer.batches == [[1], [2, 3]]  # the cancelled caller's item was still written


async def test_close_waits_for_the_write_in_flight():
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    task = asyncio.create_task(group.submit(1))
    await settle()
    asyncio.get_running_loop().call_later(0.05, writer.release.set)
    await group.close(5, "test writes")
    assert task.done() and task.result() == 10
