"""Wiring: the one place that decides which store, API and server inventory_svc runs."""

import asyncio
import contextlib
import logging

import asyncpg

from inventory_svc.grpc_api import InventoryApi
from inventory_svc.settings import InventorySettings
from inventory_svc.store import PostgresInventory, apply_migrations
from meshkit.grpc_server import GrpcServer

log = logging.getLogger(__name__)


def build_store(settings: InventorySettings) -> PostgresInventory:
    return PostgresInventory(
        str(settings.database_url),
        pool_size=settings.db_pool_size,
        timeout_seconds=settings.db_timeout_seconds,
    )


async def serve(settings: InventorySettings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then drain in-flight RPCs and close the pool."""
    store = build_store(settings)
    server = GrpcServer(settings, [InventoryApi(store)])
    await server.start()
    # SERVING only once PostgreSQL answers (and migrations are applied).
    readiness = asyncio.create_task(server.watch_readiness(store.ready))
    await stop.wait()
    readiness.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await readiness
    await server.stop()
    await store.close()


async def migrate(settings: InventorySettings) -> None:
    """Apply pending migrations and exit (``python -m inventory_svc migrate``)."""
    conn = await asyncpg.connect(str(settings.database_url), timeout=settings.db_timeout_seconds)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    log.info("migrations applied: %s", ", ".join(applied) or "none pending")
