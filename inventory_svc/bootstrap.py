"""Wiring: the one place that decides what inventory_svc runs and with what."""

import asyncio

from inventory_svc.events import OutboxRelay, router
from inventory_svc.grpc_api import InventoryApi
from inventory_svc.settings import InventorySettings
from inventory_svc.store import PostgresInventory, PostgresOutbox
from meshkit.broker import rabbit_broker
from meshkit.grpc_server import GrpcServer
from meshkit.lifecycle import serve_until_stopped


async def serve(settings: InventorySettings, stop: asyncio.Event) -> None:
    store = PostgresInventory(
        str(settings.inventory_database_url),
        pool_size=settings.db_pool_size,
        timeout_seconds=settings.db_timeout_seconds,
    )
    outbox = PostgresOutbox(store.db)
    broker = rabbit_broker(str(settings.amqp_url))
    broker.include_router(router)
    relay = OutboxRelay(
        outbox,
        broker,
        batch_size=settings.outbox_batch_size,
        poll_seconds=settings.outbox_poll_seconds,
        retention_seconds=settings.outbox_retention_hours * 3600,
    )
    # SERVING once PostgreSQL answers: sales never wait for RabbitMQ, the outbox
    # keeps their events until the relay can publish them.
    await serve_until_stopped(
        stop,
        GrpcServer(settings, [InventoryApi(store)]),
        ready=store.ready,
        components=[relay],
        close=[outbox.close, store.close],
    )
