"""The relay's claim (inventory_svc.store.CLAIM_OUTBOX) against the one it replaced,
on a throwaway database: ``python -m bench.outbox_claim``.

The outbox keeps published rows for OUTBOX_RETENTION_HOURS (24 by default), so the
claim runs over a table mostly made of history; it is timed with 20 000 and
200 000 published rows, 200 or 20 000 (a backlog) unpublished rows of one hot
product or of 1000, with the partial indexes full of dead entries (right after
the rows were marked) and after VACUUM (and once with statistics taken before
the history was published), claiming 200, 20 and 1 at a time. Both queries must claim the same rows.
"""

import asyncio
import statistics
import time

import asyncpg

from devtools import sandbox
from inventory_svc.store import CLAIM_OUTBOX

# Until 2026-12-06: "held elsewhere" asked once per claimed event.
BEFORE = """
WITH claimed AS (
    SELECT position, event_id, routing_key, ordering_key, payload, headers, created_at
    FROM outbox
    WHERE published_at IS NULL
    ORDER BY position
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
SELECT c.position, c.event_id, c.routing_key, c.payload::text AS payload,
       c.headers::text AS headers, c.created_at
FROM claimed c
WHERE NOT EXISTS (
    SELECT 1 FROM outbox earlier
    WHERE earlier.published_at IS NULL
      AND earlier.ordering_key = c.ordering_key
      AND earlier.position < c.position
      AND earlier.position NOT IN (SELECT position FROM claimed)
)
ORDER BY c.position
"""
ROWS = (
    "INSERT INTO outbox (event_id, routing_key, ordering_key, payload)"
    " SELECT gen_random_uuid(), 'x', (g % $2)::text, '{\"a\": 1}' FROM generate_series(1, $1) g"
)


async def timed(conn: asyncpg.Connection, query: str, limit: int, times: int = 4) -> tuple:
    started = time.perf_counter()
    for _ in range(times):
        async with conn.transaction():  # the relay's: claim, (publish), mark, commit
            rows = await conn.fetch(query, limit)
    return (time.perf_counter() - started) / times * 1000, [row["position"] for row in rows]


async def compared(conn: asyncpg.Connection, limit: int, rounds: int = 7) -> tuple[float, float]:
    """Median ms per claim of each query, taking turns (a busy machine drifts)."""
    before, now = [], []
    for _ in range(rounds):
        spent, claimed_before = await timed(conn, BEFORE, limit)
        before.append(spent)
        spent, claimed_now = await timed(conn, CLAIM_OUTBOX, limit)
        now.append(spent)
        assert claimed_before == claimed_now
    return statistics.median(before), statistics.median(now)


async def main() -> None:
    url = await sandbox.create_database(sandbox.PG_SERVER_URL, "polyglot_bench_claim")
    try:
        sandbox.migrate({"INVENTORY_DATABASE_URL": url}, ["inventory_svc"])
        conn = await asyncpg.connect(url)
        # stale statistics: taken while the history was still unpublished (autovacuum's
        # ANALYZE during a burst), which makes the planner walk the dead entries.
        for keys, history, stale, unpublished in (
            (1, 20_000, False, 200),
            (1000, 20_000, False, 200),
            (1, 200_000, False, 200),
            (1, 20_000, True, 200),
            (1, 20_000, False, 20_000),  # a backlog: the broker was away for a while
            (1000, 20_000, False, 20_000),
        ):
            await conn.execute("TRUNCATE outbox")
            await conn.execute(ROWS, history, keys)
            if stale:
                await conn.execute("ANALYZE outbox")
            await conn.execute("UPDATE outbox SET published_at = now()")
            await conn.execute(ROWS, unpublished, keys)
            for state in ("dead index entries", "vacuumed"):
                if state == "dead index entries" and stale:
                    state = "dead, stale stats"
                if state == "vacuumed":
                    await conn.execute("VACUUM ANALYZE outbox")
                for limit in (200, 20, 1):
                    before, now = await compared(conn, limit)
                    print(
                        f"{keys:4} product(s), {history:6} published, {unpublished:5} not,"
                        f" {state:18}, claim {limit:3}:"
                        f" before {before:5.2f} ms, now {now:5.2f} ms"
                    )
        await conn.close()
    finally:
        await sandbox.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
