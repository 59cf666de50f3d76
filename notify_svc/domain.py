"""Notification rules, free of I/O: what the order confirmation says, and paging."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from meshkit import paging
from meshkit.errors import InvalidArgument, Unavailable
from meshkit.limits import MAX_ORDER_ID_LENGTH, ORDER_ID, Limit

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
MESSAGE_ID_DOMAIN = "polyglotmicro.local"

_API = "polyglot.notify.v1"
# What the checks below enforce, as data for the OpenAPI document (meshkit.limits).
REQUEST_LIMITS = {
    f"{_API}.ListNotificationsRequest.page_size": Limit(minimum=0, maximum=MAX_PAGE_SIZE),
    f"{_API}.ListNotificationsRequest.page_token": Limit(max_length=paging.MAX_PAGE_TOKEN_LENGTH),
    f"{_API}.ListNotificationsRequest.order_id": Limit(
        max_length=MAX_ORDER_ID_LENGTH, pattern=re.compile(f"(?:{ORDER_ID.pattern})?")
    ),
}


@dataclass(frozen=True)
class Sale:
    """What notify_svc needs to know of a sale (from a ProductSold event)."""

    event_id: str
    order_id: str
    product_id: int
    product_name: str
    quantity: int
    remaining_stock: int
    occurred_at: datetime


@dataclass(frozen=True)
class OrderConfirmation:
    """The e-mail for one sale; its Message-ID is derived from the event id."""

    event_id: str
    order_id: str
    product_id: int
    sender: str
    recipient: str
    subject: str
    body: str
    message_id: str
    sent_for: datetime  # the sale time, used as the e-mail's Date


@dataclass(frozen=True)
class Notification:
    event_id: str
    order_id: str
    product_id: int
    recipient: str
    subject: str
    message_id: str
    channel: str
    status: str  # 'sending' | 'sent'
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a notification for sending.

    ``lease`` is set when this handler may send now (until the lease expires);
    otherwise ``sent`` says whether it went out already or another handler holds
    a live lease on it (a copy of the event in flight elsewhere)."""

    lease: str | None
    attempt: int
    sent: bool


class SendingElsewhere(Unavailable):
    """Another handler holds the notification's lease: wait until it is sent or
    the lease expires (its holder died), then claim it again."""

    def __init__(self, email: "OrderConfirmation") -> None:
        super().__init__(
            f"order {email.order_id}: e-mail {email.message_id} is being sent by another"
            " handler; waiting until it is sent or its lease expires"
        )


@dataclass(frozen=True)
class NotificationsPage:
    """Notifications older than ``after`` (created_at, event_id), newest first."""

    size: int
    after: tuple[datetime, str] | None
    order_id: str  # '' for every order


def order_confirmation(sale: Sale, *, sender: str, recipient: str) -> OrderConfirmation:
    sold_at = sale.occurred_at.astimezone(UTC)
    return OrderConfirmation(
        event_id=sale.event_id,
        order_id=sale.order_id,
        product_id=sale.product_id,
        sender=sender,
        recipient=recipient,
        subject=f"Order {sale.order_id} confirmed: {sale.quantity} x {sale.product_name}",
        body=(
            f"Order {sale.order_id} is confirmed. Please prepare the shipment.\n"
            "\n"
            f"Product:    {sale.product_name} (id {sale.product_id})\n"
            f"Quantity:   {sale.quantity}\n"
            f"Stock left: {sale.remaining_stock}\n"
            f"Sold at:    {sold_at:%Y-%m-%d %H:%M:%S} UTC\n"
            "\n"
            "-- PolyglotMicro notify_svc\n"
        ),
        message_id=f"<{sale.event_id}@{MESSAGE_ID_DOMAIN}>",
        sent_for=sold_at,
    )


def notifications_page(page_size: int, page_token: str, order_id: str) -> NotificationsPage:
    size = paging.page_size(page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    if order_id and not ORDER_ID.fullmatch(order_id):
        # No notification can have it; and PostgreSQL refuses some characters (NUL).
        raise InvalidArgument(f"order_id must be empty or an order id, got {order_id[:80]!r}")
    return NotificationsPage(size, paging.decode_time_cursor(page_token), order_id)


def split_notifications_page(
    fetched: list[Notification], page: NotificationsPage
) -> tuple[list[Notification], str]:
    return paging.split_page(
        fetched, page.size, lambda last: paging.encode_time_cursor(last.created_at, last.event_id)
    )
