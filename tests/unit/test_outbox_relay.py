"""The OutboxRelay against an in-memory ``Outbox`` port and FastStream's in-memory
broker (TestRabbitBroker): what it publishes and how it waits out failures.

Claiming, ordering across relays and marking are SQL: tests/integration/test_outbox.py;
a real RabbitMQ: tests/e2e/test_event_pipeline.py.
"""

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from faststream.rabbit import RabbitMessage, TestRabbitBroker

from inventory_svc.events import OutboxRelay, router
from inventory_svc.store import OutboxBacklog, OutboxEntry
from meshkit.broker import rabbit_broker
from meshkit.events import EXCHANGE, PRODUCT_SOLD, SUBSCRIPTIONS, subscriber_queue
from tests.support.waiting import eventually


class FakeOutbox:
    def __init__(self, entries: list[OutboxEntry], failures: int = 0) -> None:
        self.pending = list(entries)
        self.failures = failures  # the next publish_pending calls that find the database down

    async def publish_pending(
        self, limit: int, publish: Callable[[OutboxEntry], Awaitable[None]]
    ) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the inventory database is unavailable")
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        for entry in batch:
            await publish(entry)
        return len(batch)

    async def backlog(self) -> OutboxBacklog:
        return OutboxBacklog(len(self.pending), None)

    async def delete_published(self, older_than_seconds: float) -> int:
        return 0

    async def listen(self, wake: Callable[[], None]) -> None:
        pass


def entry(position: int) -> OutboxEntry:
    body = json.dumps({"order_id": f"ORD-{position}"}).encode()
    return OutboxEntry(position, uuid.uuid4(), PRODUCT_SOLD, body, {}, datetime.now(UTC))


async def relay_into(outbox: FakeOutbox, received: list[RabbitMessage]) -> None:
    broker = rabbit_broker("amqp://guest:guest@127.0.0.1:1/")  # never dialled
    broker.include_router(router)

    @broker.subscriber(subscriber_queue(SUBSCRIPTIONS["analytics_svc"]), EXCHANGE)
    async def subscriber(body: dict, message: RabbitMessage) -> None:
        received.append(message)

    async with TestRabbitBroker(broker) as test_broker:
        relay = OutboxRelay(
            outbox, test_broker, batch_size=2, poll_seconds=0.05, retention_seconds=60
        )
        running = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: len(received) == 3, what="three events relayed")
            assert relay.last_error is None
        finally:
            await relay.stop()
            running.cancel()


async def test_the_stored_body_goes_out_as_is_in_outbox_order_with_the_event_id():
    entries = [entry(position) for position in range(3)]
    received: list[RabbitMessage] = []
    await relay_into(FakeOutbox(entries), received)
    assert [m.body for m in received] == [e.body for e in entries]
    assert [m.message_id for m in received] == [str(e.event_id) for e in entries]
    assert {m.content_type for m in received} == {"application/json"}


async def test_an_outage_is_waited_out_then_every_event_goes_out():
    received: list[RabbitMessage] = []
    await relay_into(FakeOutbox([entry(p) for p in range(3)], failures=2), received)
    assert len(received) == 3
