"""Broker adapter: analytics_svc's subscription to ProductSold events.

Its own durable quorum queue (analytics.product_sold), so it receives every
event whatever the other subscribers do; queue, DLQ, acknowledgement after the
write and waiting out MongoDB outages are the rule of ``meshkit.broker.subscribe``.
Here the wire message is checked and mapped to the domain's ``Sale``.

The handler gets its store from ``event_router(sales)``, called by bootstrap:
a closure, not FastStream's ``Context`` lookup, which runs in a worker thread
for every message (bench/findings.md).
"""

import logging

from faststream.rabbit import RabbitRouter

from analytics_svc import use_cases
from analytics_svc.domain import Sale
from analytics_svc.use_cases import SalesStore
from meshkit.broker import subscribe
from meshkit.events import ProductSold, checked_product_sold, to_domain

log = logging.getLogger(__name__)


def event_router(sales: SalesStore) -> RabbitRouter:
    """analytics_svc's subscriber, writing to ``sales``."""
    router = RabbitRouter()

    @subscribe(router, "analytics_svc", lambda event: f"recording sale {event.event_id}")
    async def record_product_sold(event: ProductSold) -> None:
        sale = to_domain(checked_product_sold(event), Sale)
        if await use_cases.record_sale(sales, sale):
            log.info("order %s: sale event %s recorded", sale.order_id, sale.event_id)
        else:
            log.info("sale event %s (order %s) was already recorded", sale.event_id, sale.order_id)

    return router
