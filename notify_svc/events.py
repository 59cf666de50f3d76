"""Broker adapter: notify_svc's subscription to ProductSold events.

Its own durable quorum queue (notify.product_sold). Acknowledgement: ack only
after the notification is recorded as sent (AckPolicy.NACK_ON_ERROR: failure →
nack and redelivery; past the delivery limit the message goes to
notify.product_sold.dlq). Database and mail-server outages are waited out in the
handler rather than spending delivery attempts.

The handler gets its store and mailer from ``event_router(notifier)``, called by
bootstrap: a closure, not FastStream's ``Context`` lookup, which runs in a worker
thread for every message (bench/findings.md).
"""

import logging
from dataclasses import dataclass

from faststream import AckPolicy
from faststream.rabbit import RabbitRouter

from meshkit.events import EXCHANGE, SUBSCRIPTIONS, ProductSold, subscriber_queue
from meshkit.resilience import retry_while_unavailable
from notify_svc import use_cases
from notify_svc.use_cases import MailSender, NotificationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notifier:
    """What the handler needs, wired by bootstrap."""

    store: NotificationStore
    mailer: MailSender
    sender: str
    recipient: str


def event_router(notifier: Notifier) -> RabbitRouter:
    """notify_svc's subscriber, sending through ``notifier``."""
    router = RabbitRouter()

    @router.subscriber(
        subscriber_queue(SUBSCRIPTIONS["notify_svc"]),
        EXCHANGE,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        title="notify.product_sold",
        description=(
            "notify_svc e-mails an order confirmation to the logistics mailbox once per"
            " event (idempotent by event_id), then acknowledges."
        ),
    )
    async def send_order_confirmation(event: ProductSold) -> None:
        sent = await retry_while_unavailable(
            lambda: use_cases.notify_sale(
                notifier.store,
                notifier.mailer,
                event,
                sender=notifier.sender,
                recipient=notifier.recipient,
            ),
            what=f"notifying order {event.order_id}",
        )
        if not sent:
            log.info("order %s: confirmation %s was already sent", event.order_id, event.event_id)

    return router
