"""Broker adapter: analytics_svc's subscription to ProductSold events.

Its own durable quorum queue (analytics.product_sold), so it receives every
event whatever the other subscribers do. Acknowledgement: ack only after the
document is written (AckPolicy.NACK_ON_ERROR: success → ack, failure → nack and
redelivery; past the delivery limit RabbitMQ moves the message to
analytics.product_sold.dlq). A MongoDB outage is waited out inside the handler,
so it delays messages instead of burning their delivery attempts.

The handler gets its store from ``event_router(sales)``, called by bootstrap:
a closure, not FastStream's ``Context`` lookup, which runs in a worker thread
for every message (bench/findings.md).
"""

import logging

from faststream import AckPolicy
from faststream.rabbit import RabbitRouter

from analytics_svc import use_cases
from analytics_svc.use_cases import SalesStore
from meshkit.events import EXCHANGE, SUBSCRIPTIONS, ProductSold, subscriber_queue
from meshkit.resilience import retry_while_unavailable

log = logging.getLogger(__name__)


def event_router(sales: SalesStore) -> RabbitRouter:
    """analytics_svc's subscriber, writing to ``sales``."""
    router = RabbitRouter()

    @router.subscriber(
        subscriber_queue(SUBSCRIPTIONS["analytics_svc"]),
        EXCHANGE,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="analytics.product_sold",
        description=(
            "analytics_svc records each sale in MongoDB analytics_db.sales_events"
            " (idempotent by event_id), then acknowledges."
        ),
    )
    async def record_product_sold(event: ProductSold) -> None:
        new = await retry_while_unavailable(
            lambda: use_cases.record_sale(sales, event), what=f"recording sale {event.event_id}"
        )
        if not new:
            log.info(
                "sale event %s (order %s) was already recorded", event.event_id, event.order_id
            )

    return router
