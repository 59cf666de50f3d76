"""What notify_svc can be asked to do, written against store and mailer protocols."""

import logging
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from meshkit.errors import Unavailable
from meshkit.events import checked_product_sold
from meshkit.resilience import retry_while_unavailable
from notify_svc import domain
from notify_svc.domain import Notification, NotificationsPage, OrderConfirmation
from polyglot.events.v1 import ProductSold

log = logging.getLogger(__name__)


class LockedNotification(Protocol):
    sent: bool

    async def mark_sent(self) -> None: ...


class NotificationStore(Protocol):
    async def claim(self, email: OrderConfirmation, channel: str) -> int | None: ...
    def locked(self, event_id: str) -> AbstractAsyncContextManager[LockedNotification]: ...
    async def mark_sent(self, event_id: str) -> None: ...
    async def recent(self, page: NotificationsPage) -> list[Notification]: ...


class MailSender(Protocol):
    channel: str

    async def send(self, email: OrderConfirmation) -> None: ...


async def notify_sale(
    store: NotificationStore, mailer: MailSender, sale: ProductSold, *, sender: str, recipient: str
) -> bool:
    """Send the order confirmation once per event; False when it was already sent.

    Claim (a visible 'sending' record), then send and mark 'sent' under the
    row's lock: a copy of the event handled at the same time waits and finds it
    sent. Once the mail server has accepted the e-mail only the mark is retried,
    never the send. The one at-least-once step left: a process that dies between
    the mail server's acceptance and the commit sends it again on redelivery, with
    the same Message-ID (no mail server can be asked whether it already has it).
    """
    email = domain.order_confirmation(
        checked_product_sold(sale), sender=sender, recipient=recipient
    )
    attempt = await store.claim(email, mailer.channel)
    if attempt is None:
        return False
    handed_over = False
    try:
        async with store.locked(email.event_id) as notification:
            if notification.sent:  # a concurrent copy of this event sent it
                return False
            if attempt > 1:
                log.warning(
                    "order %s: sending e-mail %s again (attempt %d; an earlier one did not finish)",
                    email.order_id,
                    email.message_id,
                    attempt,
                )
            await mailer.send(email)
            handed_over = True
            await notification.mark_sent()
    except Unavailable:
        if not handed_over:
            raise
        await retry_while_unavailable(
            lambda: store.mark_sent(email.event_id),
            what=f"recording e-mail {email.message_id} as sent",
        )
    return True


async def recent_notifications(
    store: NotificationStore, page_size: int, page_token: str, order_id: str
) -> tuple[list[Notification], str]:
    page = domain.notifications_page(page_size, page_token, order_id)
    return domain.split_notifications_page(await store.recent(page), page)
