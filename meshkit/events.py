"""The event backbone: RabbitMQ topology and how events travel on it (FastStream).

Every event is a message from proto/polyglot/events/; the generated class is the
only definition: FastStream validates incoming bodies into it and documents it in
AsyncAPI (field descriptions come from the proto comments).

Topology, declared idempotently by every service at start (whichever starts
first creates it, so no event is ever published with nowhere to go):

    exchange polyglot.events (topic, durable)
      ├─ inventory.product_sold → queue analytics.product_sold (quorum)
      └─ inventory.product_sold → queue notify.product_sold    (quorum)
    exchange polyglot.events.dlx (direct, durable)
      ├─ analytics.product_sold → queue analytics.product_sold.dlq
      └─ notify.product_sold    → queue notify.product_sold.dlq

A message a subscriber fails to handle is redelivered; past ``DELIVERY_LIMIT``
deliveries its queue dead-letters it into the subscriber's own DLQ.
"""

import logging
import uuid
from dataclasses import dataclass

import betterproto
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)
from pydantic import ConfigDict

import polyglot.events.v1 as events_pb
from meshkit.resilience import Backoff

log = logging.getLogger(__name__)

EXCHANGE = RabbitExchange("polyglot.events", type=ExchangeType.TOPIC, durable=True)
DEAD_LETTERS = RabbitExchange("polyglot.events.dlx", type=ExchangeType.DIRECT, durable=True)
DELIVERY_LIMIT = 5
PRODUCT_SOLD = "inventory.product_sold"


def contract_payload(message_type: type[betterproto.Message]) -> type[betterproto.Message]:
    """Let pydantic (FastStream's validator) read field docs from the generated class."""
    message_type.__pydantic_config__ = ConfigDict(use_attribute_docstrings=True)  # type: ignore[attr-defined]
    return message_type


ProductSold = contract_payload(events_pb.ProductSold)
# Routing key → the message type travelling under it.
EVENT_TYPES: dict[str, type[betterproto.Message]] = {PRODUCT_SOLD: ProductSold}


class UnusableEvent(ValueError):
    """An event no retry can make usable: its message belongs in the DLQ."""


def checked_product_sold(event: events_pb.ProductSold) -> events_pb.ProductSold:
    """What every consumer may rely on in a ProductSold; raises with the reasons.

    proto3 turns missing fields into defaults, so a body of ``{}`` parses; this
    is where such an event is told apart from a real sale.
    """
    problems = []
    try:
        uuid.UUID(event.event_id)
    except ValueError:
        problems.append(f"event_id {event.event_id!r} is not a UUID")
    if not event.order_id:
        problems.append("order_id is empty")
    if event.product_id <= 0:
        problems.append(f"product_id {event.product_id} is not positive")
    if event.quantity <= 0:
        problems.append(f"quantity {event.quantity} is not positive")
    if event.remaining_stock < 0:
        problems.append(f"remaining_stock {event.remaining_stock} is negative")
    if not event.is_set("occurred_at"):
        problems.append("occurred_at is missing")
    if problems:
        raise UnusableEvent("unusable ProductSold: " + "; ".join(problems))
    return event


@dataclass(frozen=True)
class Subscription:
    queue: str
    routing_key: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"


SUBSCRIPTIONS = {
    "analytics_svc": Subscription("analytics.product_sold", PRODUCT_SOLD),
    "notify_svc": Subscription("notify.product_sold", PRODUCT_SOLD),
}


def subscriber_queue(subscription: Subscription) -> RabbitQueue:
    """A subscriber's own durable quorum queue, bounded retries, then its DLQ."""
    return RabbitQueue(
        subscription.queue,
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=subscription.routing_key,
        arguments={
            "x-dead-letter-exchange": DEAD_LETTERS.name,
            "x-dead-letter-routing-key": subscription.queue,
            "x-delivery-limit": DELIVERY_LIMIT,
            # The DLQ confirms each dead letter before the source drops it.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )


def dead_letter_queue(subscription: Subscription) -> RabbitQueue:
    return RabbitQueue(
        subscription.dead_letter_queue,
        queue_type=QueueType.QUORUM,
        durable=True,
        routing_key=subscription.queue,
    )


async def declare_topology(broker: RabbitBroker) -> None:
    exchange = await broker.declare_exchange(EXCHANGE)
    dead_letters = await broker.declare_exchange(DEAD_LETTERS)
    for subscription in SUBSCRIPTIONS.values():
        queue = await broker.declare_queue(subscriber_queue(subscription))
        await queue.bind(exchange, routing_key=subscription.routing_key)
        dlq = await broker.declare_queue(dead_letter_queue(subscription))
        await dlq.bind(dead_letters, routing_key=subscription.queue)


def rabbit_broker(
    url: str, *, prefetch: int | None = None, graceful_timeout: float = 10.0
) -> RabbitBroker:
    return RabbitBroker(
        url,
        # Publisher confirms; an unroutable mandatory message raises instead of
        # vanishing, so the outbox relay retries it.
        default_channel=Channel(prefetch_count=prefetch, on_return_raises=True),
        graceful_timeout=graceful_timeout,
        log_level=logging.DEBUG,  # one line per message is too much at INFO
    )


async def connect_when_reachable(broker: RabbitBroker, *, what: str) -> None:
    """Connect (retrying with backoff) and declare the topology.

    After the first connection aio-pika's robust connection reconnects by itself
    and re-declares queues and consumers.
    """
    backoff = Backoff(first=0.2, cap=5.0)
    while True:
        try:
            await broker.connect()
            await declare_topology(broker)
            log.info("%s: connected to RabbitMQ", what)
            return
        except Exception as exc:  # aio-pika raises several types for one outage
            log.warning("%s: RabbitMQ unreachable (%s); retry in %.1fs", what, exc, backoff.delay)
        await backoff.wait()


async def broker_reachable(broker: RabbitBroker) -> None:
    """Health probe: raises while the broker connection is down."""
    if not await broker.ping(timeout=1.0):
        raise ConnectionError("RabbitMQ is unreachable")


class EventConsumer:
    """The subscribers of a service's FastStream broker, as a lifecycle component.

    Acknowledgement is decided per subscriber (see the services' events.py);
    stopping waits up to the broker's ``graceful_timeout`` for messages in hand.
    """

    def __init__(self, broker: RabbitBroker, *, health_name: str) -> None:
        self._broker = broker
        self.health_name = health_name

    async def run(self) -> None:
        backoff = Backoff(first=0.2, cap=5.0)
        while True:
            await connect_when_reachable(self._broker, what=self.health_name)
            try:
                await self._broker.start()
                return
            except Exception as exc:  # e.g. the broker went away between connect and consume
                log.warning(
                    "%s: could not start consuming (%s); retry in %.1fs",
                    self.health_name,
                    exc,
                    backoff.delay,
                )
            await self._broker.stop()  # drop the half-started state, start afresh
            await backoff.wait()

    async def check(self) -> None:
        """Health probe: raises unless connected and every subscriber is consuming."""
        await broker_reachable(self._broker)
        if not all(subscriber.running for subscriber in self._broker.subscribers):
            raise ConnectionError("not consuming yet")

    async def stop(self) -> None:
        await self._broker.stop()
