"""Broker adapter: notify_svc's subscription to ProductSold events.

Its own durable quorum queue (notify.product_sold); queue, DLQ, acknowledgement
only after the notification is recorded as sent, and waiting out database and
mail-server outages (and another copy's lease) are the rule of
``meshkit.broker.subscribe``. Here the wire message is checked and mapped to the
domain's ``Sale``.

The handler gets its store and mailer from ``event_router(notifier)``, called by
bootstrap: a closure, not FastStream's ``Context`` lookup, which runs in a worker
thread for every message (bench/findings.md).
"""

import logging
from dataclasses import dataclass

from faststream.rabbit import RabbitRouter

from meshkit.broker import subscribe
from meshkit.events import ProductSold, checked_product_sold, to_domain
from notify_svc import use_cases
from notify_svc.domain import Sale
from notify_svc.use_cases import MailSender, NotificationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notifier:
    """What the handler needs, wired by bootstrap."""

    store: NotificationStore
    mailer: MailSender
    sender: str
    recipient: str
    lease_seconds: float


def event_router(notifier: Notifier) -> RabbitRouter:
    """notify_svc's subscriber, sending through ``notifier``."""
    router = RabbitRouter()

    @subscribe(router, "notify_svc", lambda event: f"notifying order {event.order_id}")
    async def send_order_confirmation(event: ProductSold) -> None:
        sale = to_domain(checked_product_sold(event), Sale)
        sent = await use_cases.notify_sale(
            notifier.store,
            notifier.mailer,
            sale,
            sender=notifier.sender,
            recipient=notifier.recipient,
            lease_seconds=notifier.lease_seconds,
        )
        if not sent:
            log.info("order %s: confirmation %s was already sent", sale.order_id, sale.event_id)

    return router
