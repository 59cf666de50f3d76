"""meshkit.group_commit: callers arriving while a write is in flight share the next one."""

import asyncio

import pytest

from meshkit.errors import Unavailable
from meshkit.group_commit import GroupCommit, not_an_outage


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


async def test_the_first_caller_cancelled_does_not_stop_the_writer_it_started():
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    first = asyncio.create_task(group.submit(1))
    await settle()
    second = asyncio.create_task(group.submit(2))
    await settle()
    first.cancel()
    await settle()
    writer.release.set()
    assert await asyncio.wait_for(second, 5) == 20
    assert writer.batches == [[1], [2]]


async def test_close_waits_for_the_write_in_flight():
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    task = asyncio.create_task(group.submit(1))
    await settle()
    asyncio.get_running_loop().call_later(0.05, writer.release.set)
    await group.close(5, "test writes")
    assert task.done() and task.result() == 10


async def test_close_stops_a_write_that_outlives_it_and_its_callers_learn_it_failed():
    writer = Writer()  # never released: the database hangs
    group = GroupCommit(writer, max_batch=10)
    in_flight = asyncio.create_task(group.submit(1))
    await settle()
    behind = asyncio.create_task(group.submit(2))
    await settle()
    await group.close(0.05, "test writes")
    for task in (in_flight, behind):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(task, 5)
    assert writer.batches == [[1]]  # the one behind was not written to a closed client


async def test_a_cancelled_writer_fails_its_callers_instead_of_leaving_them_waiting():
    """The writer's task stopped (the process stopping cancels every task): the
    callers of the batch in flight and those waiting behind it each get an answer."""
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    in_flight = asyncio.create_task(group.submit(1))
    await settle()
    behind = [asyncio.create_task(group.submit(i)) for i in (2, 3)]
    await settle()
    assert group._writer is not None
    group._writer.cancel()
    for task in [in_flight, *behind]:
        with pytest.raises(Unavailable, match="stopped before it finished"):
            await asyncio.wait_for(task, 5)
    writer.release.set()
    assert await group.submit(4) == 40  # a new writer for the next caller
    assert writer.batches == [[1], [4]]


class PoisonWriter:
    """write_many that refuses a batch holding a poison item, or all while ``outage``."""

    def __init__(self, *poison: int) -> None:
        self.poison = set(poison)
        self.batches: list[list[int]] = []
        self.outage: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0)
        if self.outage:
            raise self.outage
        if refused := self.poison.intersection(items):
            raise ValueError(f"cannot store {sorted(refused)}")
        return [item * 10 for item in items]


async def submit_together(group: GroupCommit, items: list[int]) -> list[object]:
    return await asyncio.gather(*(group.submit(i) for i in items), return_exceptions=True)


async def test_isolate_writes_a_failed_batch_item_by_item_and_only_the_poison_fails():
    writer = PoisonWriter(3)
    group = GroupCommit(writer, max_batch=10, isolate=not_an_outage)
    outcomes = await submit_together(group, [1, 2, 3, 4])
    assert outcomes[:2] == [10, 20] and outcomes[3] == 40
    assert isinstance(outcomes[2], ValueError)
    assert writer.batches == [[1, 2, 3, 4], [1], [2], [3], [4]]


async def test_a_lone_item_that_fails_is_not_written_again():
    writer = PoisonWriter(3)
    group = GroupCommit(writer, max_batch=10, isolate=not_an_outage)
    with pytest.raises(ValueError):
        await group.submit(3)
    assert writer.batches == [[3]]


async def test_an_outage_is_every_callers_answer_not_isolated():
    writer = PoisonWriter()
    writer.outage = Unavailable("database away")
    group = GroupCommit(writer, max_batch=10, isolate=not_an_outage)
    outcomes = await submit_together(group, [1, 2, 3])
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
    assert writer.batches == [[1, 2, 3]]  # not one by one: each waits it out anyway


async def test_an_outage_while_writing_item_by_item_answers_the_rest_at_once():
    writer = PoisonWriter(1)

    async def outage_after_the_poison(items: list[int]) -> list[int]:
        if writer.batches[-1:] == [[1]]:  # the poison was just refused alone
            writer.outage = Unavailable("database away")
        return await writer(items)

    group = GroupCommit(outage_after_the_poison, max_batch=10, isolate=not_an_outage)
    outcomes = await submit_together(group, [1, 2, 3, 4])
    assert isinstance(outcomes[0], ValueError)
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes[1:])
    assert writer.batches == [[1, 2, 3, 4], [1], [2]]  # 3 and 4 not tried one by one


async def test_an_outcome_that_is_an_exception_fails_only_its_caller():
    """An item the database refused while the rest of the batch was written."""

    async def refuse_odd(items: list[int]) -> list[int | Exception]:
        return [ValueError(item) if item % 2 else item * 10 for item in items]

    group = GroupCommit(refuse_odd, max_batch=10)
    outcomes = await submit_together(group, [1, 2, 3, 4])
    assert [type(outcome) for outcome in outcomes] == [ValueError, int, ValueError, int]
    assert outcomes[1::2] == [20, 40]
