"""The throughput rows of `make bench`: DecreaseStock and GetStock per scenario
(pgbench, gRPC direct and via Envoy, REST via Envoy, FastAPI) at each client count,
on `spread` products (``measure_all``) and on one hot product (``measure_hot``,
with what each commit carried, the CPU per sale and the PostgreSQL connections
held); the ratios to pgbench (``add_ratios``). Rendered by bench/report.py.
"""

import argparse
import asyncio
import statistics
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from bench.connections import ConnectionWatch
from bench.harness import (
    FASTAPI,
    HOT_PRODUCT,
    Bench,
    FastApiBaseline,
    Generator,
    Stopped,
    purge_event_queues,
)
from bench.procstat import machine_cpu, process_cpu_seconds

RELAY_STOPPED = "pgbench, relay stopped"
RELAY = "inventory_relay"  # the outbox relay's process in the sandbox mesh


@dataclass
class Row:
    scenario: str
    rpc: str  # decrease | get
    products: str  # hot | spread
    clients: int
    tps: float
    p50_ms: float
    p99_ms: float
    generator_cpu: float  # share of the machine's CPU the load generator used
    errors: int
    ratio: float = float("nan")
    # Hot-product rows (measure_hot): what the database and the processes did.
    transactions: int = 0  # sale transactions committed during the measured runs
    orders: int = 0  # sales committed during the measured runs
    max_batch: int = 0  # most sales committed in one transaction
    p90_batch: int = 0  # sales per transaction: 90 % of the transactions carried at most this
    pg_peak: int = 0  # most PostgreSQL connections the bench held at once during the row
    pg_waits: str = ""  # what the bench's busy backends waited for, commonest first
    machine_busy: float = float("nan")  # share of all cores busy during the row (anyone's)
    service_cpu_us: float = float("nan")  # inventory_svc (the API) CPU per committed sale
    relay_cpu_us: float = float("nan")  # the outbox relay's CPU per committed sale
    envoy_cpu_us: float = float("nan")  # Envoy CPU per committed sale
    note: str = ""


def measure_row(
    bench: Bench,
    args: argparse.Namespace,
    amqp_url: str,
    name: str,
    generator: Generator,
    rpc: str,
    products: str,
    clients: int,
) -> Row:
    if bench.stopping.is_set():
        raise Stopped
    generator(rpc, products, clients, args.warmup)
    runs, cpu = [], []
    for _ in range(args.repeats):
        runs.append(generator(rpc, products, clients, args.seconds))
        cpu.append(bench.cpu_share)
    asyncio.run(purge_event_queues(amqp_url))
    best = max(runs, key=lambda m: m.tps)
    row = Row(
        name,
        rpc,
        products,
        clients,
        statistics.median(m.tps for m in runs),
        statistics.median(m.p50_ms for m in runs),
        statistics.median(m.p99_ms for m in runs),
        statistics.median(cpu),
        sum(m.errors for m in runs),
    )
    print(
        f"{rpc:8} {products:6} c={clients:<3} {name:22} "
        f"{row.tps:8.0f} tps  p50 {row.p50_ms:6.2f} ms"
        f"  p99 {row.p99_ms:7.2f} ms  (median of {len(runs)};"
        f" best run {best.tps:.0f})",
        flush=True,
    )
    return row


def measure_all(bench: Bench, args: argparse.Namespace, amqp_url: str) -> list[Row]:
    """The spread and read rows; the hot-product rows come from ``measure_hot``."""
    rows = []
    for rpc, products in (("decrease", "spread"), ("get", "spread")):
        for clients in args.clients:
            for name, generator in bench.scenarios().items():
                rows.append(
                    measure_row(bench, args, amqp_url, name, generator, rpc, products, clients)
                )
    return rows


def add_ratios(rows: list[Row]) -> list[Row]:
    baseline = {
        (r.rpc, r.products, r.clients): r.tps for r in rows if r.scenario.startswith("pgbench (")
    }
    for row in rows:
        row.ratio = row.tps / baseline.get((row.rpc, row.products, row.clients), float("nan"))
    return rows


async def hot_sales_between(
    conn: asyncpg.Connection, since: datetime, until: datetime
) -> tuple[int, int, int, int]:
    """(transactions, sales, most sales in one transaction, 90th percentile of
    sales per transaction) of the hot product.

    A transaction's sales share their sold_at (now() is the transaction's start
    time), so grouping by it counts what each commit carried: the batch sizes as
    the database saw them, whatever the service reports.
    """
    row = await conn.fetchrow(
        "SELECT count(*) AS transactions, coalesce(sum(n), 0)::bigint AS orders,"
        " coalesce(max(n), 0) AS biggest,"
        " coalesce(percentile_disc(0.9) WITHIN GROUP (ORDER BY n), 0) AS p90 FROM ("
        "  SELECT count(*) AS n FROM sales"
        "  WHERE product_id = $1 AND sold_at >= $2 AND sold_at < $3 GROUP BY sold_at) g",
        HOT_PRODUCT,
        since,
        until,
    )
    return row["transactions"], row["orders"], row["biggest"], row["p90"]


def failed_row(name: str, clients: int, note: str) -> Row:
    nan = float("nan")
    return Row(name, "decrease", "hot", clients, nan, nan, nan, nan, 0, note=f"failed: {note}")


def measure_hot(
    bench: Bench,
    args: argparse.Namespace,
    amqp_url: str,
    fastapi: FastApiBaseline,
    databases: list[str],
) -> list[Row]:
    """DecreaseStock on one product at ``args.hot_clients``, with what each commit
    carried, the CPU each sale cost and the PostgreSQL connections the bench held
    (bench/connections.py); then pgbench with the relay stopped.

    The FastAPI baseline runs only during its own rows: its pool would otherwise
    hold 10 of the 4 connections a default server has to spare at 96 clients."""
    watch = ConnectionWatch(bench.db_url, databases)
    fastapi.stop()

    def measured(name: str, generator: Generator, clients: int) -> Row:
        # A pgbench row needs its clients' connections free, and the baseline its pool
        # (the API's idle pool closes what it holds within a second).
        needed = clients if generator == bench.pgbench else 0
        needed += fastapi.pool_size if name == FASTAPI else 0
        watch.settle()
        free = watch.wait_for_room(needed)
        if free < needed:
            print(f"decrease hot   c={clients:<3} {name:22} no room: {free} free", flush=True)
            return failed_row(name, clients, f"{needed} connections needed, {free} free")
        if bench.stopping.is_set():
            raise Stopped
        if name == FASTAPI:
            fastapi.start()
        try:
            # The service column: the FastAPI baseline's own process in its rows.
            api = fastapi.process if name == FASTAPI else bench.mesh.processes["inventory_svc"]
            pids = {
                "service_cpu_us": api.pid,
                "relay_cpu_us": bench.mesh.processes[RELAY].pid,
                "envoy_cpu_us": bench.mesh.processes["envoy"].pid,
            }
            before = {column: process_cpu_seconds(pid) for column, pid in pids.items()}
            busy_before, total_before = machine_cpu()
            since = watch.call(lambda: watch.conn.fetchval("SELECT clock_timestamp()"))
            with watch.sampling() as peak:
                row = measure_row(
                    bench, args, amqp_url, name, generator, "decrease", "hot", clients
                )
            used = {c: process_cpu_seconds(pid) - before[c] for c, pid in pids.items()}
            busy, total = machine_cpu()
        except RuntimeError as exc:  # e.g. pgbench: too many connections for the server
            print(f"decrease hot   c={clients:<3} {name:22} failed: {exc}", flush=True)
            free = watch.wait_for_room(0, within=0)
            return failed_row(
                name,
                clients,
                f"{str(exc).strip().splitlines()[-1][:160]} ({free} connections free)",
            )
        finally:
            if name == FASTAPI:
                fastapi.stop()
        row.pg_peak, row.pg_waits = peak.ours, peak.top_waits()
        row.machine_busy = (busy - busy_before) / max(1, total - total_before)
        print(
            f"{'':15}PostgreSQL connections held by the bench, peak {peak.ours};"
            f" its busy backends: {peak.top_waits() or 'none'}",
            flush=True,
        )
        until = watch.call(lambda: watch.conn.fetchval("SELECT clock_timestamp()"))
        row.transactions, row.orders, row.max_batch, row.p90_batch = watch.call(
            lambda: hot_sales_between(watch.conn, since, until)
        )
        # The warm-up's sales are counted too, so the CPU per sale is over the same span.
        for column, seconds in used.items():
            setattr(row, column, seconds / row.orders * 1e6 if row.orders else float("nan"))
        return row

    try:
        rows = []
        for clients in args.hot_clients:
            for name, generator in bench.scenarios().items():
                rows.append(measured(name, generator, clients))
        # pgbench alone: without the relay (and RabbitMQ) handling its outbox rows on
        # the same two cores.
        bench.mesh.processes[RELAY].stop()
        try:
            for clients in args.hot_clients:
                rows.append(measured(RELAY_STOPPED, bench.pgbench, clients))
            # Their events are bench noise: mark them published rather than have the
            # relay spend the next rows' CPU on them.
            watch.call(
                lambda: watch.conn.execute(
                    "UPDATE outbox SET published_at = now() WHERE published_at IS NULL"
                )
            )
        finally:
            if not bench.stopping.is_set():
                bench.mesh.start(RELAY)
    finally:
        watch.close()
        if not bench.stopping.is_set():
            fastapi.start()  # the sections after this one compare with it
    return rows
