"""gRPC adapter: polyglot.notify.v1.NotificationService on top of the use cases."""

import polyglot.notify.v1 as pb
from notify_svc import use_cases
from notify_svc.domain import Notification
from notify_svc.use_cases import NotificationStore

STATUS = {
    "sending": pb.NotificationStatus.SENDING,
    "sent": pb.NotificationStatus.SENT,
}


def _notification(n: Notification) -> pb.Notification:
    message = pb.Notification(
        event_id=n.event_id,
        order_id=n.order_id,
        product_id=n.product_id,
        recipient=n.recipient,
        subject=n.subject,
        message_id=n.message_id,
        channel=n.channel,
        # betterproto's Enum has a base mypy cannot read: its members look like ints.
        status=STATUS[n.status],  # type: ignore[arg-type]
        created_at=n.created_at,
    )
    if n.sent_at is not None:
        message.sent_at = n.sent_at
    return message


class NotificationApi(pb.NotificationServiceBase):
    def __init__(self, store: NotificationStore) -> None:
        self._store = store

    async def list_notifications(
        self, list_notifications_request: pb.ListNotificationsRequest
    ) -> pb.ListNotificationsResponse:
        request = list_notifications_request
        notifications, next_token = await use_cases.recent_notifications(
            self._store, request.page_size, request.page_token, request.order_id
        )
        return pb.ListNotificationsResponse(
            notifications=[_notification(n) for n in notifications],
            next_page_token=next_token,
        )
