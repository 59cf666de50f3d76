from pydantic import Field, PostgresDsn

from meshkit.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    grpc_port: int = Field(default=50051, ge=1, le=65535)
    inventory_database_url: PostgresDsn = PostgresDsn(
        "postgresql://postgres@127.0.0.1:5432/inventory_db"
    )
    # Connections kept open to PostgreSQL; each in-flight RPC holds one briefly.
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # 0: pooled connections stay open. Otherwise one idle this long is closed and
    # reopened on demand (the bench sets it so idle processes leave PostgreSQL's
    # connection slots to its 96-client rows).
    db_pool_idle_seconds: float = Field(default=0, ge=0, le=3600)
    # The outbox relay's pool (DB_POOL_SIZE is the API's). The relay works on one
    # connection at a time (a claim-and-publish transaction, now and then the
    # backlog report or the clean-up) plus its health probe's, and LISTENs on a
    # connection of its own: a pool of DB_POOL_SIZE would only take PostgreSQL
    # connections from the APIs. With 1 the probe waits for the claim in hand.
    relay_db_pool_size: int = Field(default=2, ge=1, le=20)
    # Upper bound for one statement or for waiting on a pooled connection: past it
    # the caller gets UNAVAILABLE instead of a hang.
    db_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Outbox relay: rows per publishing transaction, the polling fallback when no
    # NOTIFY arrives, and how long published rows are kept before clean-up.
    outbox_batch_size: int = Field(default=200, ge=1, le=5000)
    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Woken by a commit, the relay waits this long before claiming, so the sales
    # committed meanwhile go out in the same claim, publish and mark: fewer
    # round trips per event when orders arrive one by one, for at most this much
    # more event lag (0: claim at once). Measured in bench/findings.md.
    outbox_linger_seconds: float = Field(default=0.005, ge=0, le=1)
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    # Sale batching (inventory_svc/batching.py): orders of one product written in
    # one transaction while a write for it is in flight, at most this many a
    # batch; beyond this many orders waiting for one product, DecreaseStock is
    # refused at once (RESOURCE_EXHAUSTED, HTTP 429) instead of queueing longer.
    sale_batch_max_size: int = Field(default=100, ge=1, le=1000)
    sale_queue_max_length: int = Field(default=1000, ge=1, le=100_000)
