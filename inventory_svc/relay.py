"""The outbox relay: moves committed outbox rows to RabbitMQ, as a process of its
own (``python -m inventory_svc.relay``; same settings as the API, GRPC_PORT is its
health port; wired in bootstrap.relay).

Sales write their ProductSold event into the outbox table in the same
transaction (store.py). The OutboxRelay moves committed rows to RabbitMQ:

- woken by LISTEN/NOTIFY at commit time, polling as a fallback;
- publishes oldest first with publisher confirms, persistent and mandatory
  (an unroutable message is an error, not a silent drop);
- marks a row published only after RabbitMQ confirmed it, so a crash or an
  outage delays events but never loses one; a crash between confirm and mark
  re-publishes it, and consumers deduplicate by event id;
- while the broker is down it retries with backoff and catches up afterwards;
- each publish is a PRODUCER span in the trace of the call that made the sale
  (its context is in the row's headers), and the message's headers carry that
  span's context on to the consumers: one trace per order, however late.

It depends on the ``Outbox`` port below (with its types), not on PostgreSQL:
store.py's PostgresOutbox is the adapter bootstrap plugs in. What it publishes
to (the publishers) is events.py.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from faststream.rabbit import RabbitBroker

from inventory_svc.events import PUBLISHERS
from meshkit.broker import broker_reachable, connect_when_reachable
from meshkit.broker_topology import EXCHANGE
from meshkit.events import EVENT_TYPES
from meshkit.resilience import retrying
from meshkit.telemetry import producer_span, untraced

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxEntry:
    position: int
    event_id: uuid.UUID
    routing_key: str
    body: bytes  # the event's JSON, exactly as RECORD_SALE wrote it
    headers: dict[str, Any]  # the W3C trace context the sale came with (JSON)
    created_at: datetime


@dataclass(frozen=True)
class OutboxBacklog:
    unpublished: int
    oldest: datetime | None


class Outbox(Protocol):
    """What the relay needs from the outbox (store.PostgresOutbox in the service)."""

    async def publish_pending(
        self, limit: int, publish: Callable[[OutboxEntry], Awaitable[None]]
    ) -> int: ...
    async def backlog(self) -> OutboxBacklog: ...
    async def delete_published(self, older_than_seconds: float) -> int: ...
    async def listen(self, wake: Callable[[], None]) -> None: ...


PUBLISH_TIMEOUT_SECONDS = 10.0  # a confirm that takes longer counts as a failure
REPORT_EVERY_SECONDS = 30.0
CLEAN_UP_EVERY_SECONDS = 300.0


class OutboxRelay:
    health_name = "inventory_svc.outbox_relay"

    def __init__(
        self,
        outbox: Outbox,
        broker: RabbitBroker,
        *,
        batch_size: int,
        poll_seconds: float,
        retention_seconds: float,
        linger_seconds: float = 0.0,
    ) -> None:
        self._outbox = outbox
        self._broker = broker
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._linger_seconds = linger_seconds
        self._retention_seconds = retention_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._connected = False
        self.last_error: str | None = "not started"
        self.published_total = 0

    async def run(self) -> None:
        """Connect, then publish until ``stop()``."""
        try:
            await connect_when_reachable(self._broker, what=self.health_name)
            self._connected = True
            await self._relay()
        finally:
            self._stopped.set()

    async def _relay(self) -> None:
        self._next_report = self._next_clean_up = time.monotonic()
        while not self._stopping:
            # Broker or database away: wait (meshkit.resilience), then retry.
            async for attempt in retrying("outbox relay: publishing paused", logger=log):
                with attempt:
                    try:
                        published = await self._step()
                    except Exception as exc:
                        self.last_error = str(exc) or type(exc).__name__
                        if self._stopping:  # shutting down: no point in waiting
                            return
                        raise
            if self.last_error is not None:
                log.info("outbox relay: publishing")
                self.last_error = None
            if published < self._batch_size:  # caught up: sleep until woken
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
                if self._linger_seconds and not self._stopping:
                    # Let the sales committing right now join this claim.
                    await asyncio.sleep(self._linger_seconds)

    async def _step(self) -> int:
        # The polling's own SQL belongs to no order: untraced, or every poll would
        # start a trace. Each publish still gets its span in its order's trace.
        with untraced():
            return await self._step_untraced()

    async def _step_untraced(self) -> int:
        if self.last_error is not None:
            # The last step failed: claim and publish again only once the broker
            # answers, so an outage costs no claims and no failed publish (each a
            # span with an error status in its order's trace) every few seconds.
            await broker_reachable(self._broker)
        await self._outbox.listen(self._wake.set)
        self._wake.clear()
        published = await self._outbox.publish_pending(self._batch_size, self._publish)
        self.published_total += published
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + REPORT_EVERY_SECONDS
            await self._report()
        if now >= self._next_clean_up:
            self._next_clean_up = now + CLEAN_UP_EVERY_SECONDS
            await self._clean_up()
        return published

    async def stop(self) -> None:
        """Finish the batch in progress (bounded), then close the broker connection.

        Still waiting for RabbitMQ: nothing is in progress, so no wait (the caller
        cancels ``run``)."""
        self._stopping = True
        self._wake.set()
        if self._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), PUBLISH_TIMEOUT_SECONDS)
        await self._broker.stop()

    async def check(self) -> None:
        """Health probe: raises while events cannot be published."""
        if self.last_error is not None:
            raise ConnectionError(f"outbox relay cannot publish: {self.last_error}")
        await broker_reachable(self._broker)

    async def _publish(self, entry: OutboxEntry) -> None:
        # The body goes out as stored (made by meshkit.events.product_sold_body,
        # completed by RECORD_SALE; checked by the tests): decoding and re-encoding
        # it here cost about a quarter of the relay's CPU (bench/findings.md).
        event_id = str(entry.event_id)
        with producer_span(
            f"{EXCHANGE.name}.{entry.routing_key} publish",  # FastStream's consumers' style
            entry.headers,
            {
                "messaging.system": "rabbitmq",
                "messaging.operation": "publish",
                "messaging.destination.name": EXCHANGE.name,
                "messaging.rabbitmq.destination.routing_key": entry.routing_key,
                "messaging.message.id": event_id,
                "messaging.message.conversation_id": event_id,
            },
        ) as headers:
            # A timeout, not wait_for: no extra task per publish (a batch is hundreds).
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await PUBLISHERS[entry.routing_key].publish(
                    entry.body,
                    message_id=event_id,
                    correlation_id=event_id,
                    timestamp=entry.created_at,
                    content_type="application/json",
                    message_type=EVENT_TYPES[entry.routing_key].__name__,
                    headers=headers,
                )

    async def _report(self) -> None:
        backlog = await self._outbox.backlog()
        age = (
            f", oldest {(datetime.now(UTC) - backlog.oldest).total_seconds():.1f}s"
            if backlog.oldest
            else ""
        )
        log.info(
            "outbox relay: %d published so far, backlog %d%s, broker %s",
            self.published_total,
            backlog.unpublished,
            age,
            "reachable" if await self._broker.ping(timeout=1.0) else "unreachable",
        )

    async def _clean_up(self) -> None:
        deleted = await self._outbox.delete_published(self._retention_seconds)
        if deleted:
            log.info("outbox relay: deleted %d published rows", deleted)


if __name__ == "__main__":
    # Imported here: bootstrap imports this module (as inventory_svc.relay, while
    # this one runs as __main__).
    from inventory_svc.bootstrap import relay
    from inventory_svc.settings import InventorySettings
    from meshkit.lifecycle import service_main

    service_main("inventory_svc.relay", InventorySettings, relay)
