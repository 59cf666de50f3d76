"""What notify_svc can be asked to do, written against store and mailer protocols."""

import logging
from typing import Protocol

from meshkit.events import checked_product_sold
from notify_svc import domain
from notify_svc.domain import Notification, NotificationsPage, OrderConfirmation
from polyglot.events.v1 import ProductSold

log = logging.getLogger(__name__)


class NotificationStore(Protocol):
    async def claim(self, email: OrderConfirmation, channel: str) -> int | None: ...
    async def mark_sent(self, event_id: str) -> None: ...
    async def recent(self, page: NotificationsPage) -> list[Notification]: ...


class MailSender(Protocol):
    channel: str

    async def send(self, email: OrderConfirmation) -> None: ...


async def notify_sale(
    store: NotificationStore, mailer: MailSender, sale: ProductSold, *, sender: str, recipient: str
) -> bool:
    """Send the order confirmation once per event; False when it was already sent.

    Claim, send, mark sent. A redelivery after 'sent' sends nothing. If the
    process died between the mail server's acceptance and the mark, the e-mail is
    sent again with the same Message-ID (the one at-least-once step: no mail
    server can be asked whether it already has a message).
    """
    email = domain.order_confirmation(
        checked_product_sold(sale), sender=sender, recipient=recipient
    )
    attempt = await store.claim(email, mailer.channel)
    if attempt is None:
        return False
    if attempt > 1:
        log.warning(
            "order %s: sending e-mail %s again (attempt %d; an earlier one did not finish)",
            email.order_id,
            email.message_id,
            attempt,
        )
    await mailer.send(email)
    await store.mark_sent(email.event_id)
    return True


async def recent_notifications(
    store: NotificationStore, page_size: int, page_token: str, order_id: str
) -> tuple[list[Notification], str]:
    page = domain.notifications_page(page_size, page_token, order_id)
    return domain.split_notifications_page(await store.recent(page), page)
