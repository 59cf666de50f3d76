"""notify_svc with a slow mail server: e-mails per second, and what ListNotifications waits.

    python -m bench.notify_smtp [--emails 400] [--handlers 20] [--smtp-ms 100]

Runs notify_svc's use case as its subscriber does (``--handlers`` messages in hand
at once, the default prefetch; retries as in meshkit.broker.subscribe) against a
throwaway PostgreSQL database with notify_svc's default pool (5 connections) and a
real SMTP server (aiosmtpd) that takes ``--smtp-ms`` to accept each e-mail. Meanwhile
it calls ListNotifications' store query every 50 ms and records how long each call
waited. A pool connection held across the SMTP conversation shows up there.
"""

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

from aiosmtpd.controller import Controller

from devtools import sandbox
from meshkit.postgres import migrate
from meshkit.resilience import retry_while_unavailable
from notify_svc import use_cases
from notify_svc.domain import NotificationsPage, Sale
from notify_svc.mailer import Mailer
from notify_svc.settings import NotifySettings
from notify_svc.store import MIGRATIONS, PostgresNotifications

PG_SERVER_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class SlowMailServer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.accepted = 0

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        await asyncio.sleep(self.seconds)
        self.accepted += 1
        return "250 accepted"


def _sale() -> Sale:
    return Sale(
        event_id=str(uuid.uuid4()),
        order_id=f"ORD-{uuid.uuid4().hex[:10]}",
        product_id=1,
        product_name="Laptop Gamer",
        quantity=1,
        remaining_stock=5,
        occurred_at=datetime.now(UTC),
    )


async def measure(emails: int, handlers: int, smtp_seconds: float) -> dict[str, float]:
    defaults = NotifySettings()
    port = sandbox.free_port()
    server = SlowMailServer(smtp_seconds)
    controller = Controller(server, hostname="127.0.0.1", port=port)
    controller.start()
    url = await sandbox.create_database(PG_SERVER_URL, "polyglot_bench_notify_smtp")
    await migrate(url, MIGRATIONS)
    store = PostgresNotifications(
        url, pool_size=defaults.db_pool_size, timeout_seconds=defaults.db_timeout_seconds
    )
    await store.ready()
    mailer = Mailer(f"smtp://127.0.0.1:{port}", timeout_seconds=defaults.smtp_timeout_seconds)
    queue: asyncio.Queue[Sale] = asyncio.Queue()
    for _ in range(emails):
        queue.put_nowait(_sale())
    waits: list[float] = []
    done = False

    async def handler() -> None:
        while not queue.empty():
            sale = queue.get_nowait()
            await retry_while_unavailable(
                lambda sale=sale: use_cases.notify_sale(
                    store,
                    mailer,
                    sale,
                    sender="orders@bench.local",
                    recipient="logistics@bench.local",
                    lease_seconds=defaults.notify_lease_seconds,
                ),
                what="bench",
            )

    async def lister() -> None:
        while not done:
            started = time.perf_counter()
            await store.recent(NotificationsPage(size=20, after=None, order_id=""))
            waits.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)

    try:
        listing = asyncio.create_task(lister())
        started = time.perf_counter()
        await asyncio.gather(*(handler() for _ in range(handlers)))
        elapsed = time.perf_counter() - started
        done = True
        await listing
    finally:
        await store.close()
        await sandbox.drop_database(url)
        controller.stop()
    waits.sort()
    return {
        "emails_per_second": emails / elapsed,
        "list_p50_ms": statistics.median(waits),
        "list_p99_ms": waits[min(len(waits) - 1, int(0.99 * len(waits)))],
        "list_max_ms": waits[-1],
        "accepted": server.accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--emails", type=int, default=400)
    parser.add_argument("--handlers", type=int, default=NotifySettings().consumer_prefetch)
    parser.add_argument("--smtp-ms", type=float, default=100.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args.emails, args.handlers, args.smtp_ms / 1000))
    print(
        f"{args.emails} e-mails, {args.handlers} handlers, SMTP {args.smtp_ms:g} ms:"
        f" {result['emails_per_second']:.1f} e-mails/s (accepted {result['accepted']});"
        f" ListNotifications query p50 {result['list_p50_ms']:.1f} ms,"
        f" p99 {result['list_p99_ms']:.1f} ms, max {result['list_max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
