"""Wiring: the one place that decides what inventory_svc runs and with what.

Two processes: the API (``python -m inventory_svc``) and the outbox relay
(``python -m inventory_svc.relay``). They share settings and the database; the API
only writes sales and their outbox rows, the relay publishes those rows. Apart,
the API's latency does not pay for publishing, and each scales on its own: any
number of relays may run at once (the claim skips rows another relay holds and
keeps per-product order, see store.CLAIM_OUTBOX).
"""

import asyncio

from inventory_svc.batching import SaleBatcher
from inventory_svc.events import router
from inventory_svc.grpc_api import InventoryApi
from inventory_svc.relay import OutboxRelay
from inventory_svc.settings import InventorySettings
from inventory_svc.store import PostgresInventory, PostgresOutbox
from meshkit.broker import rabbit_broker
from meshkit.grpc_server import GrpcServer
from meshkit.lifecycle import serve_until_stopped
from meshkit.metrics import MetricsEndpoint, outbox_gauges, watch_pool
from meshkit.telemetry import start_tracing

# Trace service names (service.name) by default, as blueprint/topology.py names the
# processes; OTEL_SERVICE_NAME overrides.
SERVICE_NAME = "inventory_svc"
RELAY_SERVICE_NAME = "inventory_relay"


def _store(settings: InventorySettings, pool_size: int | None = None) -> PostgresInventory:
    return PostgresInventory(
        str(settings.inventory_database_url),
        pool_size=pool_size or settings.db_pool_size,
        timeout_seconds=settings.db_timeout_seconds,
        idle_seconds=settings.db_pool_idle_seconds,
    )


async def serve(settings: InventorySettings, stop: asyncio.Event) -> None:
    """The API: SERVING once PostgreSQL answers. Sales never wait for RabbitMQ, the
    outbox keeps their events until a relay publishes them."""
    tracing = start_tracing(SERVICE_NAME)
    store = _store(settings)
    # Concurrent sales of one product share a transaction (batching.py).
    sales = SaleBatcher(
        store,
        max_batch_size=settings.sale_batch_max_size,
        max_queue_length=settings.sale_queue_max_length,
    )
    watch_pool(store.db.name, store.db.pool_usage)
    await serve_until_stopped(
        stop,
        GrpcServer(settings, [InventoryApi(sales)]),
        ready=store.ready,
        components=[MetricsEndpoint(settings, health_name="inventory_svc.metrics")],
        close=[store.close, tracing.shutdown],
    )


async def relay(settings: InventorySettings, stop: asyncio.Event) -> None:
    """The outbox relay: no API, a gRPC server of its own for grpc.health.v1 (""
    while its database answers, ``inventory_svc.outbox_relay`` while it can publish)."""
    tracing = start_tracing(RELAY_SERVICE_NAME)
    store = _store(settings, settings.relay_db_pool_size)
    outbox = PostgresOutbox(store.db)
    broker = rabbit_broker(str(settings.amqp_url))
    broker.include_router(router)
    outbox_relay = OutboxRelay(
        outbox,
        broker,
        batch_size=settings.outbox_batch_size,
        poll_seconds=settings.outbox_poll_seconds,
        linger_seconds=settings.outbox_linger_seconds,
        retention_seconds=settings.outbox_retention_hours * 3600,
    )

    async def sample_outbox() -> None:
        backlog = await outbox.backlog()
        outbox_gauges().record(backlog.unpublished, backlog.oldest)

    metrics = MetricsEndpoint(
        settings, health_name="inventory_relay.metrics", samplers={"outbox backlog": sample_outbox}
    )
    watch_pool(store.db.name, store.db.pool_usage)
    await serve_until_stopped(
        stop,
        GrpcServer(settings, []),
        ready=store.ready,
        components=[outbox_relay, metrics],
        close=[outbox.close, store.close, tracing.shutdown],
    )
