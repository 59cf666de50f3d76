"""PostgreSQL adapter: notify_svc's log of notifications (database notify_db).

The event id is the primary key, so a redelivered event cannot create a second
notification. A notification is claimed ('sending', visible to operators) with
a lease: until ``lease_until`` no other handler may claim it. The claim is one
statement; the e-mail then goes out with no connection or row lock held, and a
second statement marks it 'sent'. So a slow mail server holds nothing that
ListNotifications or the other messages need.
"""

import uuid
from importlib import resources

from meshkit.postgres import PostgresStore
from notify_svc.domain import Claim, Notification, NotificationsPage, OrderConfirmation

MIGRATIONS = resources.files(__package__) / "migrations"

# A new event inserts its claim with a lease. An event still 'sending' whose lease
# is released or expired (its holder failed or died) is claimed again; one that is
# 'sent', or leased to a live holder, is not (``attempt`` NULL), and its status
# says which. The status is read from the statement's snapshot, so a claim made
# by a concurrent copy a moment ago may show as no row at all (status NULL):
# that copy holds the lease.
CLAIM = """
WITH claimed AS (
    INSERT INTO notifications (event_id, order_id, product_id, recipient, subject,
                               message_id, channel, status, leased_by, lease_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'sending', $8, now() + make_interval(secs => $9))
    ON CONFLICT (event_id) DO UPDATE SET
        attempts = notifications.attempts + 1,
        leased_by = excluded.leased_by,
        lease_until = excluded.lease_until
    WHERE notifications.status = 'sending'
      AND (notifications.lease_until IS NULL OR notifications.lease_until < now())
    RETURNING attempts
)
SELECT (SELECT attempts FROM claimed) AS attempt,
       (SELECT status FROM notifications WHERE event_id = $1) AS status
"""

MARK_SENT = """
UPDATE notifications SET status = 'sent', sent_at = now(), leased_by = NULL, lease_until = NULL
WHERE event_id = $1 AND status = 'sending'
"""

# Give the lease back early (the send failed before the mail server took it), so
# the retry need not wait for the expiry; only the holder's own lease.
RELEASE = """
UPDATE notifications SET lease_until = NULL
WHERE event_id = $1 AND leased_by = $2 AND status = 'sending'
"""

COLUMNS = (
    "event_id::text, order_id, product_id, recipient, subject, message_id, channel, status,"
    " created_at, sent_at"
)


class PostgresNotifications(PostgresStore):
    label = "notifications database"
    migrations = MIGRATIONS

    async def claim(self, email: OrderConfirmation, channel: str, lease_seconds: float) -> Claim:
        lease = uuid.uuid4()
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                CLAIM,
                uuid.UUID(email.event_id),
                email.order_id,
                email.product_id,
                email.recipient,
                email.subject,
                email.message_id,
                channel,
                lease,
                lease_seconds,
            )
        assert row is not None  # CLAIM selects two scalar subqueries: always one row
        if row["attempt"] is not None:
            return Claim(lease=str(lease), attempt=row["attempt"], sent=False)
        return Claim(lease=None, attempt=0, sent=row["status"] == "sent")

    async def release(self, event_id: str, lease: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(RELEASE, uuid.UUID(event_id), uuid.UUID(lease))

    async def mark_sent(self, event_id: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(MARK_SENT, uuid.UUID(event_id))

    async def recent(self, page: NotificationsPage) -> list[Notification]:
        """Up to ``page.size + 1`` notifications after the page's cursor, newest first."""
        conditions: list[str] = []
        args: list[object] = []
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
