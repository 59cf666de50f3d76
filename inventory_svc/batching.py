"""Hot-product batching: concurrent sales of one product share one transaction.

Every sale of a product locks that product's row, so one transaction per order
caps a hot product at what one row lock can do (BENCHMARKS.md). ``SaleBatcher``
sits between the use cases and the store and keeps one lane per product:

- a lone order on an idle product is written at once, on the one-order path (no
  timer: a single client waits no longer than without batching);
- while a write for the product is in flight, new orders queue in arrival order;
- when it completes, the queued orders (up to ``max_batch_size``) go to
  PostgreSQL as one statement in one transaction (``record_sales``), which judges
  them one by one in that order, and each caller gets its own answer.

A failure of the write as a whole (database unreachable, serialization failure:
``Unavailable`` from the store) is every caller's answer, and nothing of the
batch is committed. The write runs in its own task, so a caller that goes away
(deadline, client gone) cancels only its own wait, never the others' batch:
whether its order was sold is decided by the batch, and a replay of the order id
tells. Beyond ``max_queue_length`` waiting orders for one product a call is
refused at once with ``ResourceExhausted`` instead of waiting ever longer.

The rules themselves stay where they were: the store's SQL sells or skips each
order, the use case and domain.py judge what was skipped.
"""

import asyncio
import logging
from collections import deque
from typing import Protocol

from inventory_svc.domain import Page, Product, Sale, SaleRequest
from inventory_svc.use_cases import InventoryStore
from meshkit.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

Pending = tuple[SaleRequest, "asyncio.Future[Sale | None]"]


class BatchStore(InventoryStore, Protocol):
    """The inventory store port plus the batch write (PostgresInventory has both)."""

    async def record_sales(self, requests: list[SaleRequest]) -> list[Sale | None]: ...


class SaleBatcher:
    """An ``InventoryStore`` (use_cases.py) whose ``record_sale`` batches per product."""

    def __init__(self, store: BatchStore, *, max_batch_size: int, max_queue_length: int) -> None:
        self._store = store
        self._max_batch_size = max_batch_size
        self._max_queue_length = max_queue_length
        # product id → orders waiting for the write in flight; a product has a
        # lane exactly while a write for it is in flight.
        self._lanes: dict[int, deque[Pending]] = {}
        self._writers: set[asyncio.Task[None]] = set()  # kept until done

    def queued(self, product_id: int) -> int:
        """Orders of the product waiting behind its write in flight."""
        return len(self._lanes.get(product_id, ()))

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        future: asyncio.Future[Sale | None] = asyncio.get_running_loop().create_future()
        lane = self._lanes.get(request.product_id)
        if lane is None:
            self._lanes[request.product_id] = deque()
            writer = asyncio.create_task(self._write(request.product_id, [(request, future)]))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        elif len(lane) >= self._max_queue_length:
            raise ResourceExhausted(
                f"too many orders are waiting for product {request.product_id}"
                f" ({len(lane)}); retry shortly"
            )
        else:
            lane.append((request, future))
        # The write runs in the lane's own task: a cancelled caller cancels only
        # this future (its answer is then dropped), never the batch it is in.
        return await future

    async def _write(self, product_id: int, batch: list[Pending]) -> None:
        """Write ``batch``, then whatever queued meanwhile, until the lane is empty."""
        lane = self._lanes[product_id]
        try:
            while batch:
                await self._write_one(batch)
                batch = [lane.popleft() for _ in range(min(len(lane), self._max_batch_size))]
        finally:
            # Only reached with orders left when this task is cancelled (shutdown).
            for _, future in [*batch, *lane]:
                if not future.done():
                    future.set_exception(Unavailable("the inventory is shutting down; try again"))
            del self._lanes[product_id]

    async def _write_one(self, batch: list[Pending]) -> None:
        requests = [request for request, _ in batch]
        try:
            if len(requests) == 1:  # the one-order statement: no batch overhead
                answers = [await self._store.record_sale(requests[0])]
            else:
                answers = await self._store.record_sales(requests)
        except Exception as exc:  # the batch failed whole: every caller's answer
            if len(requests) > 1:
                log.warning("batch of %d sales failed: %s", len(requests), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    # --- everything else goes straight to the store ----------------------------

    async def find_sale(self, order_id: str) -> Sale | None:
        return await self._store.find_sale(order_id)

    async def find_product(self, product_id: int) -> Product | None:
        return await self._store.find_product(product_id)

    async def list_products(self, page: Page) -> list[Product]:
        return await self._store.list_products(page)

    async def restock(self, product_id: int, quantity: int) -> Product | None:
        return await self._store.restock(product_id, quantity)
