"""Event pipeline under sustained load: commit → sales_events document lag.

An open-loop sender places DecreaseStock calls at a fixed rate (a slow system
cannot slow the offered load down), while a sampler records the subscriber
queue depths and the outbox backlog. Lag per sale = the document's recorded_at
minus the sale's occurred_at (the commit's statement time), both stamped on this
machine.
"""

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass, field

import aio_pika
import asyncpg
import grpc
from pymongo import AsyncMongoClient

from bench.grpc_load import METHODS, request_type
from meshkit.broker_topology import SUBSCRIPTIONS


@dataclass
class PipelineResult:
    offered_rate: float
    seconds: float
    sent: int
    failed: int
    achieved_rate: float
    recorded: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    max_queue_depth: int
    final_queue_depth: int
    max_outbox_backlog: int
    queues: list[str] = field(default_factory=list)
    # t, each subscriber queue's depth (in ``queues`` order), outbox backlog
    depth_samples: list[tuple[float, list[int], int]] = field(default_factory=list)


QUEUES = [subscription.queue for subscription in SUBSCRIPTIONS.values()]


async def queue_depths(channel: aio_pika.abc.AbstractChannel) -> list[int]:
    """Messages ready in each subscriber queue, in QUEUES order."""
    depths = []
    for name in QUEUES:
        queue = await channel.declare_queue(name, passive=True)
        depths.append(queue.declaration_result.message_count or 0)
    return depths


async def run_pipeline(
    *,
    inventory_target: str,
    amqp_url: str,
    inventory_db_url: str,
    mongo_url: str,
    rate: float,
    seconds: float,
    product_id: int,
    drain_seconds: float = 60.0,
) -> PipelineResult:
    message = request_type(METHODS["decrease"][1])
    run_id = uuid.uuid4().hex[:8]
    orders: list[str] = []
    failures = 0
    samples: list[tuple[float, list[int], int]] = []
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    db = await asyncpg.connect(inventory_db_url)
    started = time.perf_counter()
    sending = True

    async def sample() -> None:
        while sending or sum(samples[-1][1]) > 0:
            backlog = await db.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            samples.append((time.perf_counter() - started, await queue_depths(channel), backlog))
            if time.perf_counter() - started > seconds + drain_seconds:
                return
            await asyncio.sleep(0.25)

    async with grpc.aio.insecure_channel(inventory_target) as grpc_channel:
        call = grpc_channel.unary_unary(METHODS["decrease"][0])
        await grpc_channel.channel_ready()

        async def sell(order_id: str) -> None:
            nonlocal failures
            try:
                await call(
                    message(
                        product_id=product_id, quantity=1, order_id=order_id
                    ).SerializeToString(),
                    timeout=30,
                )
                orders.append(order_id)
            except grpc.aio.AioRpcError:
                failures += 1

        sampler = asyncio.create_task(sample())
        calls = []
        total = int(rate * seconds)
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            calls.append(asyncio.create_task(sell(f"pipe-{run_id}-{i}")))
        await asyncio.gather(*calls)
        sent_for = time.perf_counter() - started
        sending = False

        lags = await _lags(
            mongo_url, product_id, orders, deadline=time.perf_counter() + drain_seconds
        )
        await sampler
    await db.close()
    await connection.close()
    lags.sort()
    return PipelineResult(
        offered_rate=rate,
        seconds=seconds,
        sent=len(orders),
        failed=failures,
        achieved_rate=len(orders) / sent_for,
        recorded=len(lags),
        lag_p50_ms=statistics.median(lags) if lags else float("nan"),
        lag_p99_ms=lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else float("nan"),
        lag_max_ms=lags[-1] if lags else float("nan"),
        max_queue_depth=max(sum(s[1]) for s in samples),
        final_queue_depth=sum(samples[-1][1]),
        max_outbox_backlog=max(s[2] for s in samples),
        queues=QUEUES,
        depth_samples=samples,
    )


async def _lags(mongo_url: str, product_id: int, orders: list[str], deadline: float) -> list[float]:
    """Milliseconds from commit to document, once every order is recorded (or time is up).

    Only the pipeline run has subscribers, so its product's documents are this
    run's. The wait counts them by product; a `$in` over thousands of order ids
    kept the embedded MongoDB at 100 % CPU while the last events were still being
    written, which inflated the very lag being measured."""
    client = AsyncMongoClient(mongo_url, tz_aware=True)
    collection = client["analytics_db"]["sales_events"]
    query = {"product_id": product_id}
    # Polling another system's state: there is no event to await.
    while time.perf_counter() < deadline:
        if await collection.count_documents(query) >= len(orders):
            break
        await asyncio.sleep(0.25)
    sold = set(orders)
    lags = [
        (doc["recorded_at"] - doc["occurred_at"]).total_seconds() * 1000
        async for doc in collection.find(query, {"order_id": 1, "recorded_at": 1, "occurred_at": 1})
        if doc["order_id"] in sold
    ]
    await client.close()
    return lags
