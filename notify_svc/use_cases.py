"""What notify_svc can be asked to do, written against store and mailer protocols."""

import asyncio
import contextlib
import logging
from typing import Protocol

from meshkit.errors import Unavailable
from meshkit.resilience import retry_while_unavailable
from notify_svc import domain
from notify_svc.domain import Claim, Notification, NotificationsPage, OrderConfirmation, Sale

log = logging.getLogger(__name__)


class NotificationStore(Protocol):
    async def claim(
        self, email: OrderConfirmation, channel: str, lease_seconds: float
    ) -> Claim: ...
    async def release(self, event_id: str, lease: str) -> None: ...
    async def mark_sent(self, event_id: str) -> None: ...
    async def recent(self, page: NotificationsPage) -> list[Notification]: ...


class MailSender(Protocol):
    channel: str

    async def send(self, email: OrderConfirmation) -> None: ...


async def notify_sale(
    store: NotificationStore,
    mailer: MailSender,
    sale: Sale,
    *,
    sender: str,
    recipient: str,
    lease_seconds: float,
) -> bool:
    """Send the order confirmation once per event; False when it was already sent.

    Claim the notification with a lease (a visible 'sending' record), send with
    nothing held in the database, then mark it 'sent'. A copy of the event
    handled at the same time finds the lease taken and waits (``SendingElsewhere``
    is retried like an outage) until the e-mail is marked sent. Once the mail
    server has accepted the e-mail only the mark is retried, never the send.

    A dropped broker connection does not stop this halfway: the subscriber runs
    each attempt to its end (meshkit.broker.run_to_its_end), and the redelivered
    copy finds the e-mail sent or waits for the mark.

    The one at-least-once step left: a process that dies between the mail
    server's acceptance and the mark leaves the notification 'sending'; once the
    lease expires, a redelivery sends it again with the same Message-ID, so
    receivers can deduplicate (no mail server can be asked whether it already
    has it). Likewise a send whose acceptance never arrived (connection lost,
    timeout) counts as not sent.
    """
    email = domain.order_confirmation(sale, sender=sender, recipient=recipient)
    claim = await store.claim(email, mailer.channel, lease_seconds)
    if claim.lease is None:
        if claim.sent:
            return False
        raise domain.SendingElsewhere(email)
    if claim.attempt > 1:
        log.warning(
            "order %s: sending e-mail %s again (attempt %d; an earlier one did not finish)",
            email.order_id,
            email.message_id,
            claim.attempt,
        )
    try:
        await _send_within_lease(mailer, email, lease_seconds)
    except Exception:
        with contextlib.suppress(Unavailable):  # else the lease expires by itself
            await store.release(email.event_id, claim.lease)
        raise
    await retry_while_unavailable(
        lambda: store.mark_sent(email.event_id),
        what=f"recording e-mail {email.message_id} as sent",
    )
    return True


async def _send_within_lease(
    mailer: MailSender, email: OrderConfirmation, lease_seconds: float
) -> None:
    # Past its lease another copy may claim the e-mail: give up first, so that
    # while every handler is alive at most one of them sends it at a time.
    try:
        async with asyncio.timeout(lease_seconds):
            await mailer.send(email)
    except TimeoutError as exc:
        raise Unavailable(
            f"sending e-mail {email.message_id} took longer than its lease ({lease_seconds}s)"
        ) from exc


async def recent_notifications(
    store: NotificationStore, page_size: int, page_token: str, order_id: str
) -> tuple[list[Notification], str]:
    page = domain.notifications_page(page_size, page_token, order_id)
    return domain.split_notifications_page(await store.recent(page), page)
