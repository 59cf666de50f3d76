"""The servers the suite runs against, and how it starts a mesh of its own."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable
from pathlib import Path

from devtools.processes import ManagedProcess, python_module
from devtools.sandbox import (
    PG_SERVER_URL,
    RABBIT_SERVER_URL,
    Mesh,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
    free_port,
    start_mesh,
)
from meshkit.postgres import migrate

__all__ = [
    "FAST",
    "PG_SERVER_URL",
    "RABBIT_SERVER_URL",
    "lone_inventory",
    "migrated_database",
    "own_mesh",
    "start_test_mesh",
]

# Tests wait on conditions, so fast probes make them fast, not flaky. No drain
# delay: tests stop processes often (test_replicas.py sets its own).
FAST = {
    "HEALTH_PROBE_SECONDS": "0.2",
    "SHUTDOWN_GRACE_SECONDS": "10",
    "OUTBOX_POLL_SECONDS": "0.5",
    "DRAIN_SECONDS": "0",
    "METRICS_SAMPLE_SECONDS": "0.5",
}


def start_test_mesh(run_dir: Path, env: dict[str, str], only: list[str] | None = None) -> Mesh:
    """A mesh with the development profile's quotas, which the suite's bursts of
    hundreds of calls from one address and one token fit in (the quotas themselves:
    tests/e2e/test_edge_quotas.py, on Envoys of their own)."""
    return start_mesh(run_dir, {**FAST, **env}, only)


@asynccontextmanager
async def own_mesh(run_dir: Path, name: str, mongo_url: str, smtp_url: str) -> AsyncIterator[Mesh]:
    """A whole mesh on databases, a vhost and an analytics database of its own,
    named after ``name``: it starts from the seed, whatever other tests did."""
    inventory_url = await create_database(PG_SERVER_URL, f"{name}_inventory")
    notify_url = await create_database(PG_SERVER_URL, f"{name}_notify")
    vhost = create_vhost(RABBIT_SERVER_URL, name)
    env = {
        "INVENTORY_DATABASE_URL": inventory_url,
        "NOTIFY_DATABASE_URL": notify_url,
        "AMQP_URL": vhost,
        "MONGO_URL": mongo_url,
        "ANALYTICS_DATABASE": f"{name.removeprefix('polyglot_')}_{uuid.uuid4().hex[:8]}",
        "SMTP_URL": smtp_url,
    }
    try:
        mesh = start_test_mesh(run_dir, env)
        try:
            yield mesh
        finally:
            mesh.stop()
    finally:
        delete_vhost(vhost)
        await drop_database(inventory_url)
        await drop_database(notify_url)


@asynccontextmanager
async def migrated_database(name: str, migrations: Traversable) -> AsyncIterator[str]:
    """A throwaway database of a module's own, at the schema of ``migrations``."""
    url = await create_database(PG_SERVER_URL, name)
    try:
        await migrate(url, migrations)
        yield url
    finally:
        await drop_database(url)


def lone_inventory(tmp_path, database_url: str, env: dict) -> tuple[ManagedProcess, str]:
    """A started inventory_svc of its own (no Envoy) and its gRPC address."""
    port = free_port()
    process = ManagedProcess(
        "inventory_svc",
        python_module("inventory_svc"),
        tmp_path / "inventory.log",
        env={**FAST, **env, "INVENTORY_DATABASE_URL": database_url, "GRPC_PORT": str(port)},
    )
    process.start()
    return process, f"127.0.0.1:{port}"
