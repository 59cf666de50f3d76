"""PostgreSQL adapter: notify_svc's log of notifications (database notify_db).

The event id is the primary key, so a redelivered event cannot create a second
notification. A notification is claimed ('sending', visible to operators) with
a lease: until ``lease_until`` no other handler may claim it. The claim is one
statement; the e-mail then goes out with no connection or row lock held, and a
second statement marks it 'sent'. So a slow mail server holds nothing that
ListNotifications or the other messages need.

The consumer handles up to its prefetch of events at once, and a round trip per
claim and per mark was most of notify_svc's cost per order. So claims made at
the same time share one transaction, and so do marks (group commit,
meshkit/group_commit.py; from MANY_FROM on, one statement): each handler still
gets its own answer, exactly the one its claim alone would have got.
"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from meshkit.group_commit import GroupCommit, not_an_outage
from meshkit.postgres import PostgresStore
from notify_svc.domain import Claim, Notification, NotificationsPage, OrderConfirmation

MIGRATIONS = resources.files(__package__) / "migrations"
R = TypeVar("R")
# At most this many claims (marks) per statement; the consumer's prefetch bounds
# how many wait at once anyway.
MAX_BATCH = 200

# When an event's notification exists: claim it again only while it is 'sending'
# and its lease is released or expired (the one rule of both claim statements).
RECLAIM = """ON CONFLICT (event_id) DO UPDATE SET
        attempts = notifications.attempts + 1,
        leased_by = excluded.leased_by,
        lease_until = excluded.lease_until
    WHERE notifications.status = 'sending'
      AND (notifications.lease_until IS NULL OR notifications.lease_until < now())"""

# Claims of distinct events, as arrays in event id order. A new event inserts its
# claim with a lease (each claim's own lease id and length). An event still
# 'sending' whose lease is released or expired (its holder failed or died) is
# claimed again; one that is 'sent', or leased to a live holder, is not (no
# ``attempt``), and its status says which. The status is read from the
# statement's snapshot, so a claim made by a concurrent copy a moment ago may
# show as no row at all (status NULL): that copy holds the lease.
#
# The rows are inserted (or their conflicts locked) in event id order, so two
# batches claiming some of the same events at once (two replicas, or two copies
# of a batch) wait for each other in one direction only: no deadlock. ON
# CONFLICT cannot touch one row twice in a statement, hence distinct events.
CLAIM_MANY = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::uuid[], $9::float8[])
        AS w (event_id, order_id, product_id, recipient, subject, message_id, channel,
              leased_by, lease_seconds)
), claimed AS (
    INSERT INTO notifications (event_id, order_id, product_id, recipient, subject,
                               message_id, channel, status, leased_by, lease_until)
    SELECT event_id, order_id, product_id, recipient, subject, message_id, channel,
           'sending', leased_by, now() + make_interval(secs => lease_seconds)
    FROM wanted
    ORDER BY event_id
    {RECLAIM}
    RETURNING event_id, attempts
)
SELECT wanted.event_id, claimed.attempts AS attempt, notifications.status
FROM wanted
LEFT JOIN claimed USING (event_id)
LEFT JOIN notifications USING (event_id)
"""

# Which statements a batch takes. PostgreSQL's CPU per e-mail, claim and mark,
# by batch size (`python -m bench.notify_claims`, µs): each alone 180-210; as
# single-row statements in one transaction 320 (1), 230 (2), 180 (4), 120 (8),
# 140 (16); as the array statements 930, 540, 230, 130, 90. So a batch of one
# takes the single-row statements, a batch of a few the same in one transaction
# (one commit; locks in event id order, like the array statements'), a larger
# one the array statements, planned for their arguments: a plan PostgreSQL
# cached for the arrays while the table was empty scans the whole table (11 ms
# per batch of 8 at 50 000 notifications).
MANY_FROM = 12
CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"

CLAIM_ONE = f"""
WITH claimed AS (
    INSERT INTO notifications (event_id, order_id, product_id, recipient, subject,
                               message_id, channel, status, leased_by, lease_until)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'sending', $8, now() + make_interval(secs => $9))
    {RECLAIM}
    RETURNING attempts
)
SELECT $1 AS event_id, (SELECT attempts FROM claimed) AS attempt,
       (SELECT status FROM notifications WHERE event_id = $1) AS status
"""

MARK_SENT_ONE = """
UPDATE notifications SET status = 'sent', sent_at = now(), leased_by = NULL, lease_until = NULL
WHERE event_id = $1 AND status = 'sending'
"""

# The rows are locked in event id order first (the subquery), for the same reason
# as the claims': a batch of marks and a batch of claims (re-claiming an expired
# lease whose holder is marking it just now) never wait for each other in a
# circle. A deadlock would fail a mark after the e-mail went out, and its
# redelivery would send the e-mail again once the lease expired.
MARK_SENT_MANY = """
UPDATE notifications SET status = 'sent', sent_at = now(), leased_by = NULL, lease_until = NULL
FROM (
    SELECT event_id FROM notifications
    WHERE event_id = ANY($1::uuid[]) AND status = 'sending'
    ORDER BY event_id
    FOR UPDATE
) AS locked
WHERE notifications.event_id = locked.event_id
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


@dataclass(frozen=True)
class ClaimRequest:
    """One handler's claim, waiting for the transaction it will share."""

    email: OrderConfirmation
    channel: str
    lease_seconds: float
    lease: uuid.UUID = field(default_factory=uuid.uuid4)  # this claim's own

    @cached_property  # read several times per batch: parsed once
    def event_id(self) -> uuid.UUID:
        return uuid.UUID(self.email.event_id)


class PostgresNotifications(PostgresStore):
    label = "notifications database"
    migrations = MIGRATIONS

    def __init__(
        self, dsn: str, *, pool_size: int, timeout_seconds: float, idle_seconds: float = 0
    ) -> None:
        super().__init__(
            dsn, pool_size=pool_size, timeout_seconds=timeout_seconds, idle_seconds=idle_seconds
        )
        self._timeout_seconds = timeout_seconds
        # A batch failing for anything but an outage (an event the database
        # refuses, say) is made again one claim (mark) at a time, so that only
        # that event's handler fails instead of its batch, as each would have
        # without batching (meshkit.group_commit).
        self._claims: GroupCommit[ClaimRequest, Claim] = GroupCommit(
            self._claim_together, max_batch=MAX_BATCH, isolate=not_an_outage
        )
        self._marks: GroupCommit[uuid.UUID, None] = GroupCommit(
            self._mark_sent_many, max_batch=MAX_BATCH, isolate=not_an_outage
        )

    async def close(self) -> None:
        """Let the claims and marks in flight finish first (bounded), so their
        handlers learn their outcome."""
        await asyncio.gather(
            self._claims.close(self._timeout_seconds, "claims of notifications"),
            self._marks.close(self._timeout_seconds, "notifications being marked sent"),
        )
        await super().close()

    async def claim(self, email: OrderConfirmation, channel: str, lease_seconds: float) -> Claim:
        """Claim the notification; claims made at the same time share one transaction.

        Either every claim of the batch got its lease or none did. When the
        database is unavailable, every handler of the batch gets the error and
        retries as it would alone; any other failure of the batch is retried
        claim by claim, and only the claims failing alone fail. If the
        connection was lost after the commit, the retry finds its own earlier
        lease live: SendingElsewhere, it waits for the lease to expire and then
        claims and sends, exactly as after a lost answer to a claim of its own.
        """
        return await self._claims.submit(ClaimRequest(email, channel, lease_seconds))

    async def _claim_together(self, requests: list[ClaimRequest]) -> list[Claim]:
        # The first copy of an event claims it; a copy of the same event in the
        # same batch gets what it would get right after the first: the lease is
        # taken (or the e-mail was sent), and its handler waits as it does today
        # for a copy handled elsewhere (SendingElsewhere).
        first: dict[uuid.UUID, int] = {}
        for index, request in enumerate(requests):
            first.setdefault(request.event_id, index)
        distinct = sorted((requests[index] for index in first.values()), key=_by_event_id)
        columns = (
            [request.event_id for request in distinct],
            [request.email.order_id for request in distinct],
            [request.email.product_id for request in distinct],
            [request.email.recipient for request in distinct],
            [request.email.subject for request in distinct],
            [request.email.message_id for request in distinct],
            [request.channel for request in distinct],
            [request.lease for request in distinct],
            [request.lease_seconds for request in distinct],
        )
        async with self.db.connection() as conn:

            async def one_by_one() -> list[asyncpg.Record]:
                return [await _claim_one(conn, columns, i) for i in range(len(distinct))]

            rows = await _as_batch(
                conn, len(distinct), one_by_one, lambda: conn.fetch(CLAIM_MANY, *columns)
            )
        by_event = {request.event_id: request for request in distinct}
        claims: dict[uuid.UUID, Claim] = {}
        for row in rows:
            if row["attempt"] is not None:
                lease = str(by_event[row["event_id"]].lease)
                claims[row["event_id"]] = Claim(lease=lease, attempt=row["attempt"], sent=False)
            else:
                claims[row["event_id"]] = Claim(lease=None, attempt=0, sent=row["status"] == "sent")
        outcomes = []
        for index, request in enumerate(requests):
            claim = claims[request.event_id]
            if first[request.event_id] != index:
                claim = Claim(lease=None, attempt=0, sent=claim.sent)
            outcomes.append(claim)
        return outcomes

    async def release(self, event_id: str, lease: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(RELEASE, uuid.UUID(event_id), uuid.UUID(lease))

    async def mark_sent(self, event_id: str) -> None:
        """Marks made at the same time share one transaction (an outage is every
        caller's, each retries it; marking twice is harmless, so a batch failing
        otherwise is marked again one event at a time)."""
        await self._marks.submit(uuid.UUID(event_id))

    async def _mark_sent_many(self, event_ids: list[uuid.UUID]) -> list[None]:
        async with self.db.connection() as conn:

            async def one_by_one() -> None:
                for event_id in sorted(event_ids):  # locks in id order
                    await conn.execute(MARK_SENT_ONE, event_id)

            await _as_batch(
                conn, len(event_ids), one_by_one, lambda: conn.execute(MARK_SENT_MANY, event_ids)
            )
        return [None] * len(event_ids)

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


async def _as_batch(
    conn: PoolConnectionProxy,
    size: int,
    one_by_one: Callable[[], Awaitable[R]],
    as_arrays: Callable[[], Awaitable[R]],
) -> R:
    """A batch of ``size`` through the statements its size takes (MANY_FROM): one
    item alone, a few one by one in one transaction, more as the array statements
    in one transaction, planned for their arguments."""
    if size == 1:
        return await one_by_one()
    async with conn.transaction():
        if size < MANY_FROM:
            return await one_by_one()
        await conn.execute(CUSTOM_PLAN)
        return await as_arrays()


async def _claim_one(
    conn: PoolConnectionProxy, columns: tuple[list[Any], ...], index: int
) -> asyncpg.Record:
    row = await conn.fetchrow(CLAIM_ONE, *(column[index] for column in columns))
    assert row is not None  # two scalar subqueries: always one row
    return row


def _by_event_id(request: ClaimRequest) -> uuid.UUID:
    return request.event_id  # uuid.UUID orders as PostgreSQL's uuid does (bytewise)
