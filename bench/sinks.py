"""Where an order ends up, as the bench reads it: the mesh's inventory and notify
databases and analytics' MongoDB (``Sinks``), to wait until every order of a run
reached both consumers and to measure how late each arrived. Used by the
whole-mesh section (bench/mesh.py) and the replica rows (bench/replicas.py).
"""

import asyncio
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pymongo import AsyncMongoClient

from bench.harness import percentile
from bench.procstat import BENCH_APPLICATION, SAMPLE_SECONDS

CONSUMED_WITHIN = 180.0  # seconds after a run for every order to reach both consumers


async def bench_connection(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings={"application_name": BENCH_APPLICATION})


@dataclass
class Sinks:
    """The bench's connections to where an order ends up: the mesh's inventory and
    notify databases and analytics' MongoDB."""

    inventory: asyncpg.Connection
    notify: asyncpg.Connection
    mongo: Any  # pymongo AsyncMongoClient

    @property
    def sales_events(self) -> Any:
        return self.mongo["analytics_db"]["sales_events"]

    async def close(self) -> None:
        await self.inventory.close()
        await self.notify.close()
        await self.mongo.close()

    async def consumed(self, since: datetime, within: float = CONSUMED_WITHIN) -> tuple[int, int]:
        """Wait (polling: the consumers' state is in their stores) until every order
        sold since ``since`` reached both consumers; (sold, not arrived) then."""
        sold = await sold_since(self.inventory, since)
        deadline = time.monotonic() + within
        missing = sold
        while time.monotonic() < deadline:
            # notify first: it is the slower one, and MongoDB (a Python server here)
            # is asked only when it may be done, so the polling costs it little.
            notified = await self.notify.fetchval(
                "SELECT count(*) FROM notifications WHERE status = 'sent' AND created_at >= $1",
                since,
            )
            if notified >= sold:
                recorded = await self.sales_events.count_documents(
                    {"occurred_at": {"$gte": _mongo_time(since)}}
                )
                missing = max(0, sold - recorded)
                if not missing:
                    return sold, 0
            else:
                missing = sold - notified
            await asyncio.sleep(SAMPLE_SECONDS)
        return sold, missing

    async def lags(self, since: datetime, load_ended: datetime) -> tuple[float, float, float]:
        """(p50, p99 of the per-order lag in ms; seconds from the load's end to the
        last arrival)."""
        sold = {
            row["order_id"]: row["sold_at"]
            for row in await self.inventory.fetch(
                "SELECT order_id, sold_at FROM sales WHERE sold_at >= $1", since
            )
        }
        notified = {
            row["order_id"]: row["sent_at"]
            for row in await self.notify.fetch(
                "SELECT order_id, sent_at FROM notifications WHERE created_at >= $1"
                " AND status = 'sent'",
                since,
            )
        }
        recorded = {
            doc["order_id"]: doc["recorded_at"]
            async for doc in self.sales_events.find(
                {"occurred_at": {"$gte": _mongo_time(since)}}, {"order_id": 1, "recorded_at": 1}
            )
        }
        arrivals = {
            order: max(notified[order], recorded[order])
            for order in sold
            if order in notified and order in recorded
        }
        if not arrivals:
            return float("nan"), float("nan"), float("nan")
        lags = [(arrivals[o] - sold[o]).total_seconds() * 1000 for o in arrivals]
        last = max(arrivals.values())
        return (
            statistics.median(lags),
            percentile(lags, 0.99),
            (last - load_ended).total_seconds(),
        )


async def open_sinks(env: dict[str, str]) -> Sinks:
    """The bench's connections to a mesh's inventory and notify databases and MongoDB."""
    return Sinks(
        await bench_connection(env["INVENTORY_DATABASE_URL"]),
        await bench_connection(env["NOTIFY_DATABASE_URL"]),
        AsyncMongoClient(env["MONGO_URL"], tz_aware=True),
    )


def _mongo_time(moment: datetime) -> datetime:
    """MongoDB keeps milliseconds: a bound from PostgreSQL's microseconds, floored."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


async def sold_since(conn: asyncpg.Connection, since: datetime) -> int:
    return await conn.fetchval("SELECT count(*) FROM sales WHERE sold_at >= $1", since)


async def now(conn: asyncpg.Connection) -> datetime:
    """The database's clock (what sold_at, created_at and sent_at are stamped with)."""
    return await conn.fetchval("SELECT clock_timestamp()")
