"""notify_svc's claim and mark statements, by batch size, on a throwaway database:
``python -m bench.notify_claims``.

PostgreSQL's CPU per e-mail (its backend's /proc time) for claiming and marking
1 000 new notifications in batches of 1, 2, 4, 8 and 16: each e-mail alone (the
single-row statements, one commit each), a batch as single-row statements in one
transaction, and a batch as one array statement (CLAIM_MANY, MARK_SENT_MANY) with
a custom plan, all as store.py would issue them, rounds taking turns while the
table grows. And what a plan cached for the array statement while the table was
empty costs once it holds 50 000 notifications.
"""

import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg

from bench.procstat import process_cpu_seconds
from devtools import sandbox
from notify_svc import store

E_MAILS = 1_000


def claim_columns(ids: list[uuid.UUID]) -> tuple[list[Any], ...]:
    n = len(ids)
    return (
        ids, ["ORD-1"] * n, [1] * n, ["logistics@example.com"] * n, ["Order"] * n,
        [f"<{i}@polyglot>" for i in ids], ["log"] * n, [uuid.uuid4() for _ in ids], [30.0] * n,
    )  # fmt: skip


async def batch(conn: asyncpg.Connection, way: str, size: int) -> None:
    ids = sorted(uuid.uuid4() for _ in range(size))
    columns = claim_columns(ids)
    singles = [[column[i] for column in columns] for i in range(size)]
    if way == "alone":
        for row in singles:
            await conn.fetchrow(store.CLAIM_ONE, *row)
        for event_id in ids:
            await conn.execute(store.MARK_SENT_ONE, event_id)
        return
    async with conn.transaction():
        if way == "one transaction":
            for row in singles:
                await conn.fetchrow(store.CLAIM_ONE, *row)
        else:
            await conn.execute(store.CUSTOM_PLAN)
            await conn.fetch(store.CLAIM_MANY, *columns)
    async with conn.transaction():
        if way == "one transaction":
            for event_id in ids:
                await conn.execute(store.MARK_SENT_ONE, event_id)
        else:
            await conn.execute(store.CUSTOM_PLAN)
            await conn.execute(store.MARK_SENT_MANY, ids)


async def cached_plan_cost(url: str) -> float:
    """ms per array claim + mark with the plan cached while the table was empty."""
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE notifications")
    for _ in range(10):  # past the 5 custom plans, PostgreSQL settles on a generic one
        ids = sorted(uuid.uuid4() for _ in range(8))
        await conn.fetch(store.CLAIM_MANY, *claim_columns(ids))
        await conn.execute(store.MARK_SENT_MANY, ids)
    await conn.execute(
        "INSERT INTO notifications (event_id, order_id, product_id, recipient, subject,"
        " message_id, channel, status) SELECT gen_random_uuid(), 'o', 1, 'r', 's',"
        " 'm' || g, 'log', 'sent' FROM generate_series(1, 50000) g"
    )
    started = time.perf_counter()
    for _ in range(10):
        ids = sorted(uuid.uuid4() for _ in range(8))
        await conn.fetch(store.CLAIM_MANY, *claim_columns(ids))
        await conn.execute(store.MARK_SENT_MANY, ids)
    await conn.close()
    return (time.perf_counter() - started) / 10 * 1000


async def main() -> None:
    url = await sandbox.create_database(sandbox.PG_SERVER_URL, "polyglot_bench_notify")
    try:
        sandbox.migrate({"NOTIFY_DATABASE_URL": url}, ["notify_svc"])
        conn = await asyncpg.connect(url)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        ways = ("alone", "one transaction", "array statement")
        spent: dict[tuple[int, str], list[float]] = {}
        for _ in range(3):
            for size in (1, 2, 4, 8, 16):
                for way in ways:
                    before = process_cpu_seconds(pid)
                    for _ in range(E_MAILS // size):
                        await batch(conn, way, size)
                    spent.setdefault((size, way), []).append(
                        (process_cpu_seconds(pid) - before) / E_MAILS * 1e6
                    )
        await conn.close()
        for size in (1, 2, 4, 8, 16):
            row = ", ".join(f"{way} {statistics.median(spent[size, way]):4.0f}" for way in ways)
            print(f"batch of {size:2}: PostgreSQL µs per e-mail (claim + mark): {row}")
        print(
            "array statements with the plan cached on an empty table, at 50 000"
            f" notifications: {await cached_plan_cost(url):.1f} ms per batch of 8"
        )
    finally:
        await sandbox.drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
