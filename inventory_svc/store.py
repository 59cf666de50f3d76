"""PostgreSQL adapter: products, sales and the outbox, through an asyncpg pool."""

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources

import asyncpg

from inventory_svc.domain import MAX_STOCK, Page, Product, Sale, SaleRequest
from inventory_svc.relay import OutboxBacklog, OutboxEntry
from meshkit.errors import Unavailable
from meshkit.events import PRODUCT_SOLD, product_sold_body
from meshkit.postgres import DATABASE_DOWN, PostgresDatabase, PostgresStore
from meshkit.telemetry import in_trace_of

log = logging.getLogger(__name__)

MIGRATIONS = resources.files(__package__) / "migrations"

# One statement, so one round trip and one implicit transaction:
# - the stock update only matches when enough stock is left;
# - the sale row for the order id is inserted from its result; if the order id
#   was already sold, the primary key rejects it and the whole statement (stock
#   update included) rolls back;
# - the ProductSold event goes into the outbox in the same transaction, so
#   there is an event exactly for every committed sale.
# The event's body ($6) is made in Python from the contract before the statement
# (``product_sold_body``, meshkit/events.py): every field, with what the request
# knows. The statement only sets the values that exist nowhere else yet — the
# product's name and the stock left, from the updated row, and the sale's time,
# from the sale row — so the shape of the event is written once, in Python, and
# the sale stays one round trip holding the product's row lock for one statement.
# The row's headers ($8) are the caller's trace context (``outbox_headers``).
RECORD_SALE = """
WITH sold AS (
    UPDATE products SET stock = stock - $3, updated_at = now()
    WHERE product_id = $2 AND stock >= $3
    RETURNING product_id, name, stock
), sale AS (
    INSERT INTO sales (order_id, product_id, quantity, remaining_stock, sold_by)
    SELECT $1, product_id, $3, stock, $7 FROM sold
    RETURNING sold_at
), event AS (
    INSERT INTO outbox (event_id, routing_key, ordering_key, payload, headers)
    SELECT $4::uuid, $5, sold.product_id::text, $6::jsonb || jsonb_build_object(
        'product_name', sold.name, 'remaining_stock', sold.stock, 'occurred_at', sale.sold_at),
        $8::jsonb
    FROM sold, sale
)
SELECT stock FROM sold
"""


def new_event(request: SaleRequest) -> tuple[uuid.UUID, str]:
    """A new event id and the ProductSold body the sale of ``request`` publishes."""
    event_id = uuid.uuid4()
    body = product_sold_body(
        event_id=str(event_id),
        order_id=request.order_id,
        product_id=request.product_id,
        quantity=request.quantity,
        sold_by=request.sold_by,
    )
    return event_id, body


NO_HEADERS = "{}"


def outbox_headers(request: SaleRequest) -> str:
    """The outbox row's headers (jsonb): the caller's W3C trace context, which the
    relay publishes as AMQP headers under its own span in that trace."""
    return json.dumps(dict(request.trace_context)) if request.trace_context else NO_HEADERS


def record_sale_arguments(request: SaleRequest) -> tuple[object, ...]:
    """RECORD_SALE's parameters for a request, with a new event id."""
    event_id, body = new_event(request)
    return (
        request.order_id,
        request.product_id,
        request.quantity,
        event_id,
        PRODUCT_SOLD,
        body,
        request.sold_by,
        outbox_headers(request),
    )


# Several orders of one product in one statement, so one round trip and one
# transaction for the batch: the function (migration 0004_record_sales.sql, where
# its shape is explained; 0005 adds each order's own outbox headers) locks the
# product's row once and applies RECORD_SALE's rules order by order, in the
# arrays' order.
RECORD_SALES = "SELECT record_sales($1, $2, $3, $4, $5, $6, $7, $8)"

# A batch failing as a whole: nothing of it was committed, the same orders may be
# sent again (DecreaseStock is idempotent). READ COMMITTED makes these rare; they
# are listed so that a stricter isolation level stays safe.
BATCH_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


# Claim the oldest unpublished events that no other relay holds (SKIP LOCKED),
# leaving out any event whose product has an earlier event held elsewhere, so
# events of one product are published in order even with several relays.
# The claim reads the rows' columns itself rather than joining back to the
# outbox, which kept the published rows (24 h by default) and which the planner
# then scanned whole to find the claimed ones: 11.3 → 1.7 ms per claim of 20 with
# 200 000 published rows kept. "Held elsewhere" is asked once per product of the
# claim (its first unpublished event below the claim's last that is not in the
# claim), not once per claimed event: per event it walked the product's earlier
# events again each time, a claim of 200 from one product's backlog of 20 000
# took 274 ms, now 1.7 ms (python -m bench.outbox_claim; bench/findings.md has
# the cases that got slower).
CLAIM_OUTBOX = """
WITH claimed AS (
    SELECT position, event_id, routing_key, ordering_key, payload, headers, created_at
    FROM outbox
    WHERE published_at IS NULL
    ORDER BY position
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
held AS (
    SELECT k.ordering_key, (
        SELECT min(earlier.position) FROM outbox earlier
        WHERE earlier.published_at IS NULL
          AND earlier.ordering_key = k.ordering_key
          AND earlier.position < k.last
          AND earlier.position NOT IN (SELECT position FROM claimed)
    ) AS first_held
    FROM (SELECT ordering_key, max(position) AS last FROM claimed GROUP BY ordering_key) k
)
SELECT c.position, c.event_id, c.routing_key, c.payload::text AS payload,
       c.headers::text AS headers, c.created_at
FROM claimed c LEFT JOIN held h ON h.ordering_key = c.ordering_key
WHERE h.first_held IS NULL OR c.position < h.first_held
ORDER BY c.position
"""


class PostgresInventory(PostgresStore):
    label = "inventory database"
    migrations = MIGRATIONS

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        """Commit the sale and its event, or return None when nothing was written.

        Nothing is written when the product is unknown, its stock is too low, or
        the order id already has a sale; ``find_sale``/``find_product`` tell which.
        """
        async with self.db.connection() as conn:
            try:
                # The SQL span in the order's own trace: the batcher may run this
                # in a task another call started.
                with in_trace_of(request.trace_context):
                    remaining = await conn.fetchval(RECORD_SALE, *record_sale_arguments(request))
            except asyncpg.UniqueViolationError:
                return None
        if remaining is None:
            return None
        return Sale(
            request.order_id, request.product_id, request.quantity, remaining, request.sold_by
        )

    async def record_sales(self, requests: list[SaleRequest]) -> list[Sale | None]:
        """``record_sale`` for several orders of one product, in one transaction.

        The orders are judged one by one in list order, exactly as that many
        ``record_sale`` calls in a row would be; the answer at each index is the
        committed sale or None (see ``record_sale``). Either every sale of the
        list is committed or, when this raises, none.
        """
        [product_id] = {r.product_id for r in requests}
        events = [new_event(r) for r in requests]
        async with self.db.connection() as conn:
            try:
                # One statement for several orders: its span joins the first one's trace.
                with in_trace_of(requests[0].trace_context):
                    remaining = await conn.fetchval(
                        RECORD_SALES,
                        product_id,
                        [r.order_id for r in requests],
                        [r.quantity for r in requests],
                        [r.sold_by for r in requests],
                        [event_id for event_id, _ in events],
                        PRODUCT_SOLD,
                        [body for _, body in events],
                        [outbox_headers(r) for r in requests],
                    )
            except BATCH_RETRYABLE as exc:
                log.warning("a batch of %d sales was rolled back: %s", len(requests), exc)
                raise Unavailable("the inventory database is busy; try again") from exc
        return [
            None if left is None else Sale(r.order_id, r.product_id, r.quantity, left, r.sold_by)
            for r, left in zip(requests, remaining, strict=True)
        ]

    async def find_sale(self, order_id: str) -> Sale | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT order_id, product_id, quantity, remaining_stock, sold_by"
                " FROM sales WHERE order_id = $1",
                order_id,
            )
        return Sale(**row) if row else None

    async def find_product(self, product_id: int) -> Product | None:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT product_id, name, stock FROM products WHERE product_id = $1", product_id
            )
        return Product(**row) if row else None

    async def list_products(self, page: Page) -> list[Product]:
        """Up to ``page.size + 1`` products after the page's cursor (see ``split_page``)."""
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                "SELECT product_id, name, stock FROM products WHERE product_id > $1"
                " ORDER BY product_id LIMIT $2",
                page.after_product_id,
                page.size + 1,
            )
        return [Product(**row) for row in rows]

    async def restock(self, product_id: int, quantity: int) -> Product | None:
        """Add stock; None when the product is unknown or would exceed the maximum."""
        async with self.db.connection() as conn:
            row = await conn.fetchrow(
                "UPDATE products SET stock = stock + $2, updated_at = now()"
                " WHERE product_id = $1 AND stock <= $3::integer - $2::integer"
                " RETURNING product_id, name, stock",
                product_id,
                quantity,
                MAX_STOCK,
            )
        return Product(**row) if row else None


class PostgresOutbox:
    """The outbox side of the inventory database: the adapter of relay.py's ``Outbox`` port."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._listener: asyncpg.Connection | None = None

    async def publish_pending(
        self, limit: int, publish: Callable[[OutboxEntry], Awaitable[None]]
    ) -> int:
        """Hand up to ``limit`` claimed events to ``publish`` at once; mark the confirmed.

        The publishes are started in position order and awaited together, so the
        broker's confirms overlap instead of costing one round trip each (aiormq
        writes a channel's frames in the order its publishers queue for the
        channel, so the order holds unless a publish fails). The marks of every
        confirmed event are committed even when some failed; then the first
        failure is re-raised and the rest are retried later. If the process dies
        between a confirm and the commit, the event is published again:
        delivery is at least once, consumers deduplicate.
        """
        async with self._db.connection() as conn, conn.transaction():
            entries = [
                OutboxEntry(
                    position=row["position"],
                    event_id=row["event_id"],
                    routing_key=row["routing_key"],
                    body=row["payload"].encode(),
                    headers=json.loads(row["headers"]),
                    created_at=row["created_at"],
                )
                for row in await conn.fetch(CLAIM_OUTBOX, limit)
            ]
            outcomes = await asyncio.gather(*map(publish, entries), return_exceptions=True)
            published = [e.position for e, o in zip(entries, outcomes, strict=True) if o is None]
            if published:
                await conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE position = ANY($1::bigint[])",
                    published,
                )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(published)

    async def backlog(self) -> OutboxBacklog:
        async with self._db.connection() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS unpublished, min(created_at) AS oldest"
                " FROM outbox WHERE published_at IS NULL"
            )
        assert row is not None  # an aggregate without GROUP BY: always one row
        return OutboxBacklog(row["unpublished"], row["oldest"])

    async def delete_published(self, older_than_seconds: float) -> int:
        async with self._db.connection() as conn:
            status = await conn.execute(
                "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
                older_than_seconds,
            )
        return int(status.split()[-1])

    async def listen(self, wake: Callable[[], None]) -> None:
        """Make sure a LISTEN connection calls ``wake`` on every committed event.

        Cheap when already listening; after a lost connection it reconnects. When
        it cannot, the relay falls back to polling, so this never raises for a
        database outage.
        """
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(self._db.dsn, timeout=5)
            await self._listener.add_listener("outbox", lambda *_: wake())
        except DATABASE_DOWN as exc:
            log.debug("outbox LISTEN not available (%s); polling", exc)
            self._listener = None

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
