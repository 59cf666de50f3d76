"""The OutboxRelay against an in-memory ``Outbox`` port and FastStream's in-memory
broker (TestRabbitBroker): what it publishes and how it waits out failures.

Claiming, ordering across relays and marking are SQL: tests/integration/test_outbox.py;
a real RabbitMQ: tests/e2e/test_event_pipeline.py.
"""

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime

from faststream.rabbit import RabbitMessage, TestRabbitBroker
from opentelemetry.trace import SpanKind

from inventory_svc.events import router
from inventory_svc.relay import OutboxEntry, OutboxRelay
from meshkit.broker import rabbit_broker
from meshkit.broker_topology import EXCHANGE, SUBSCRIPTIONS, subscriber_queue
from meshkit.events import PRODUCT_SOLD
from tests.support.fakes import FakeOutbox
from tests.support.sales import product_sold_json
from tests.support.tracing import in_memory_tracing
from tests.support.waiting import eventually


def entry(position: int) -> OutboxEntry:
    body = product_sold_json(order_id=f"ORD-{position}").encode()
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


def traced_entry(position: int, headers: dict) -> OutboxEntry:
    return dataclasses.replace(entry(position), headers=headers)


async def test_each_publish_is_a_producer_span_in_the_trace_stored_with_its_event():
    """The stored context is the parent (its span ended long ago, in another
    process); the message carries the producer span's context on."""
    with in_memory_tracing() as (provider, exporter):
        calls = []
        for _ in range(3):  # three sales, each in a trace of its own
            with provider.get_tracer("test").start_as_current_span("DecreaseStock") as call:
                calls.append(call.get_span_context())
        entries = [
            traced_entry(position, {"traceparent": f"00-{c.trace_id:032x}-{c.span_id:016x}-01"})
            for position, c in enumerate(calls)
        ]
        received: list[RabbitMessage] = []
        await relay_into(FakeOutbox(entries), received)
        producers = {
            s.attributes["messaging.message.id"]: s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.PRODUCER
        }
    for call, stored, message in zip(calls, entries, received, strict=True):
        producer = producers[str(stored.event_id)]
        assert producer.parent.span_id == call.span_id
        assert producer.context.trace_id == call.trace_id
        assert producer.attributes["messaging.system"] == "rabbitmq"
        assert producer.attributes["messaging.rabbitmq.destination.routing_key"] == PRODUCT_SOLD
        assert message.headers["traceparent"].split("-")[1:3] == [
            f"{call.trace_id:032x}",
            f"{producer.context.span_id:016x}",
        ]


async def test_without_tracing_the_stored_context_is_published_as_it_is():
    """A relay that does not trace still hands the sale's trace on to the consumers."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    entries = [traced_entry(p, {"traceparent": traceparent}) for p in range(3)]
    received: list[RabbitMessage] = []
    await relay_into(FakeOutbox(entries), received)
    assert {m.headers["traceparent"] for m in received} == {traceparent}
