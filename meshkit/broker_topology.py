"""The broker topology the events travel on: exchanges, each subscriber's own queue,
the delivery limit and the dead-letter queues.

Declared idempotently by every service at start (``declare_topology``; whichever
starts first creates it, so no event is ever published with nowhere to go):

    exchange polyglot.events (topic, durable)
      ├─ inventory.product_sold → queue analytics.product_sold (quorum)
      └─ inventory.product_sold → queue notify.product_sold    (quorum)
    exchange polyglot.events.dlx (direct, durable)
      ├─ analytics.product_sold → queue analytics.product_sold.dlq
      └─ notify.product_sold    → queue notify.product_sold.dlq

A message a subscriber fails to handle is redelivered; past ``DELIVERY_LIMIT``
deliveries its queue dead-letters it into the subscriber's own DLQ. The events
themselves (routing keys, bodies, wire types) are meshkit/events.py; how services
connect, publish and subscribe is meshkit/broker.py.
"""

from dataclasses import dataclass

from faststream.rabbit import ExchangeType, QueueType, RabbitBroker, RabbitExchange, RabbitQueue

from meshkit.events import PRODUCT_SOLD

EXCHANGE = RabbitExchange("polyglot.events", type=ExchangeType.TOPIC, durable=True)
DEAD_LETTERS = RabbitExchange("polyglot.events.dlx", type=ExchangeType.DIRECT, durable=True)
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class Subscription:
    """A subscriber's own queue: what it receives and where its dead letters go."""

    queue: str
    routing_key: str
    title: str  # what the subscriber does with each event, for AsyncAPI
    description: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"


SUBSCRIPTIONS = {
    "analytics_svc": Subscription(
        "analytics.product_sold",
        PRODUCT_SOLD,
        title="analytics.product_sold",
        description=(
            "analytics_svc records each sale in MongoDB analytics_db.sales_events"
            " (idempotent by event_id), then acknowledges."
        ),
    ),
    "notify_svc": Subscription(
        "notify.product_sold",
        PRODUCT_SOLD,
        title="notify.product_sold",
        description=(
            "notify_svc e-mails an order confirmation to the logistics mailbox once per"
            " event (idempotent by event_id), then acknowledges."
        ),
    ),
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
    """Every exchange, queue and binding above; declaring what exists changes nothing."""
    exchange = await broker.declare_exchange(EXCHANGE)
    dead_letters = await broker.declare_exchange(DEAD_LETTERS)
    for subscription in SUBSCRIPTIONS.values():
        queue = await broker.declare_queue(subscriber_queue(subscription))
        await queue.bind(exchange, routing_key=subscription.routing_key)
        dlq = await broker.declare_queue(dead_letter_queue(subscription))
        await dlq.bind(dead_letters, routing_key=subscription.queue)
