"""PostgreSQL adapter: notify_svc's log of notifications (database notify_db).

The event id is the primary key, so a redelivered event cannot create a second
notification. A notification is claimed ('sending', visible to operators) before
the e-mail goes out; the e-mail is then sent while the row is locked and marked
'sent' in the same transaction, so two copies of one event handled at the same
time (a redelivery racing the original) send one e-mail: the second waits on the
lock and finds it sent.
"""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import asyncpg

from meshkit.postgres import PostgresStore
from notify_svc.domain import Notification, NotificationsPage, OrderConfirmation

MIGRATIONS = resources.files(__package__) / "migrations"

# A new event inserts its claim; an event whose e-mail may not have gone out
# (status still 'sending' after a crash) is claimed again; an event already
# 'sent' returns no row.
CLAIM = """
INSERT INTO notifications
    (event_id, order_id, product_id, recipient, subject, message_id, channel, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'sending')
ON CONFLICT (event_id) DO UPDATE SET attempts = notifications.attempts + 1
    WHERE notifications.status = 'sending'
RETURNING attempts
"""

MARK_SENT = "UPDATE notifications SET status = 'sent', sent_at = now() WHERE event_id = $1"

COLUMNS = (
    "event_id::text, order_id, product_id, recipient, subject, message_id, channel, status,"
    " created_at, sent_at"
)


class PostgresNotifications(PostgresStore):
    label = "notifications database"
    migrations = MIGRATIONS

    async def claim(self, email: OrderConfirmation, channel: str) -> int | None:
        """Claim the e-mail for sending: its attempt number, or None if already sent."""
        async with self.db.connection() as conn:
            return await conn.fetchval(
                CLAIM,
                uuid.UUID(email.event_id),
                email.order_id,
                email.product_id,
                email.recipient,
                email.subject,
                email.message_id,
                channel,
            )

    @asynccontextmanager
    async def locked(self, event_id: str) -> AsyncIterator["LockedNotification"]:
        """The claimed notification, locked until the block ends (then committed)."""
        async with self.db.connection() as conn, conn.transaction():
            status = await conn.fetchval(
                "SELECT status FROM notifications WHERE event_id = $1 FOR UPDATE",
                uuid.UUID(event_id),
            )
            yield LockedNotification(conn, event_id, sent=status == "sent")

    async def mark_sent(self, event_id: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(MARK_SENT, uuid.UUID(event_id))

    async def recent(self, page: NotificationsPage) -> list[Notification]:
        """Up to ``page.size + 1`` notifications after the page's cursor, newest first."""
        conditions, args = [], []
        if page.order_id:
            args.append(page.order_id)
            conditions.append(f"order_id = ${len(args)}")
        if page.after:
            args += [page.after[0], uuid.UUID(page.after[1])]
            conditions.append(f"(created_at, event_id) < (${len(args) - 1}, ${len(args)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(page.size + 1)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM notifications {where}"
                f" ORDER BY created_at DESC, event_id DESC LIMIT ${len(args)}",
                *args,
            )
        return [Notification(**row) for row in rows]


class LockedNotification:
    """A notification row under its lock; ``mark_sent`` takes effect at commit."""

    def __init__(self, conn: asyncpg.Connection, event_id: str, *, sent: bool) -> None:
        self._conn = conn
        self._event_id = event_id
        self.sent = sent

    async def mark_sent(self) -> None:
        await self._conn.execute(MARK_SENT, uuid.UUID(self._event_id))
