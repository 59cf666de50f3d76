"""`make bench`: the mesh against the physical limit of its database, in one run.

    python -m bench.run            # full: 1, 8, 32 clients, repeated (≈ 15 min)
    python -m bench.run --smoke    # seconds, for CI: proves the harness works
    python -m bench.run --pipeline-only [--rate 150]   # only the event pipeline (≈ 2 min)
    python -m bench.run --replicas-only  # only 1 vs 2 replicas and CPU per order (≈ 3 min)
    python -m bench.run --only hot  # only the hot-product section (≈ 7 min)
    python -m bench.run --only tracing  # only the tracing cost, off / 10 % / 100 % (≈ 3 min)
    python -m bench.run --only mesh  # only the whole mesh: cost per order (≈ 8 min)

Everything runs in a private sandbox (own databases, RabbitMQ vhost, MongoDB
wire server, mesh on free ports). Each scenario is warmed up, then measured
``--repeats`` times; the table shows medians. The baseline is pgbench running
the very statement DecreaseStock runs (bench/pgbench_script.py) at the same
concurrency on the same database; every row's "ratio to pgbench" compares with
it. Absolute numbers on shared 2-core machines are noisy: the ratios measured in
the same run are what we track.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg

from bench.connections import ConnectionWatch, check_room
from bench.edge import measure_edge, render_edge, splice
from bench.fastapi_baseline import POOL_SIZE
from bench.mesh import Section, measure_mesh, profile_mesh, render_mesh
from bench.pgbench_script import decrease_stock_script, get_stock_script
from bench.pipeline import run_pipeline
from bench.procstat import machine_cpu, process_cpu_seconds
from bench.replicas import measure_replicas, render_replicas
from bench.report import load_average
from bench.tracing import measure_tracing, render_tracing
from devtools import sandbox
from devtools.processes import ManagedProcess
from mesh.edge.settings import EnvoySite
from mesh.topology import ROOT, backends
from meshkit.events import SUBSCRIPTIONS

# Its own variables, else the tests' servers (TEST_POSTGRES_URL, TEST_AMQP_URL).
PG_SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", sandbox.PG_SERVER_URL)
AMQP_SERVER_URL = os.environ.get("BENCH_AMQP_URL", sandbox.RABBIT_SERVER_URL)
HOT_PRODUCT = 100_000  # one product every client fights over
SPREAD = (100_001, 1_000)  # first id, count: contention spread over 1000 products
BIG_STOCK = 2_000_000_000
BENCH_EDGE = {
    "mutation_rate_per_second": 0,
    "anonymous_rate_per_second": 0,
    "max_requests_per_backend": 4096,
}
# The whole-mesh section: Envoy health-checks as `make up`'s does, not every 0.5 s (sandbox).
MESH_EDGE = {**BENCH_EDGE, "health_check_seconds": EnvoySite.health_check_seconds}
HOT_CLIENTS = [1, 8, 32, 96]  # PostgreSQL's default max_connections is 100
MESH_CLIENTS = [1, 32]  # one customer's latency; the whole mesh loaded
RELAY_STOPPED = "pgbench, relay stopped"
RELAY = "inventory_relay"  # the outbox relay's process in the sandbox mesh
FASTAPI = "FastAPI + asyncpg"
# Bench-only service settings (bench/connections.py): pooled connections idle for a
# second are closed and the health probe runs every 5 s, so a process idle during
# a row (the API during pgbench's) leaves PostgreSQL's connection slots to the row;
# the relay claims and probes on one pooled connection.
BENCH_SERVICE_ENV = {
    "DB_POOL_IDLE_SECONDS": "1",
    "HEALTH_PROBE_SECONDS": "5",
    "RELAY_DB_POOL_SIZE": "1",
}


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


@dataclass
class Measurement:
    tps: float
    p50_ms: float
    p99_ms: float
    errors: int


class Stopped(Exception):
    """The run is being torn down: the section on the worker thread gives up."""


Generator = Callable[[str, str, int, float], Measurement]  # rpc, products, clients, seconds


def products_of(kind: str) -> tuple[int, int]:
    return (HOT_PRODUCT, 1) if kind == "hot" else SPREAD


# Generators running now: the run's clean-up stops them (and what they started,
# e.g. grpc_load's worker processes) when it ends early.
GENERATORS: set[subprocess.Popen] = set()


def timed_child(argv: list[str], seconds: float) -> tuple[str, float]:
    """Run a generator; its stdout and the share of all cores its processes used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group: stop_generators() stops it whole
    ) as child:
        GENERATORS.add(child)
        try:
            out, err = child.communicate()
        finally:
            GENERATORS.discard(child)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {err[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu / (seconds * (os.cpu_count() or 1))


def stop_generators() -> None:
    for child in list(GENERATORS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)


class Bench:
    def __init__(self, work: Path, db_url: str, mesh: sandbox.Mesh, fastapi_port: int) -> None:
        self.work, self.db_url, self.mesh, self.fastapi_port = work, db_url, mesh, fastapi_port
        self.cpu_share = 0.0
        # Set when the run is being torn down (an error, Ctrl-C, SIGTERM) while a
        # section still runs on its worker thread: it starts nothing more.
        self.stopping = threading.Event()
        # One token for the whole run (as a real client reuses its access token).
        self.token = mesh.token(["orders:write"], ttl_seconds=6 * 3600)

    # --- generators ---------------------------------------------------------

    def pgbench(self, rpc: str, products: str, clients: int, seconds: float) -> Measurement:
        first, count = products_of(products)
        script = self.work / f"pgbench-{rpc}.sql"
        make = decrease_stock_script if rpc == "decrease" else get_stock_script
        script.write_text(make(first, count))
        logs = self.work / "pgbench-log"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        url = urlsplit(self.db_url)
        out, self.cpu_share = timed_child(
            [
                "pgbench",
                "-h",
                url.hostname or "127.0.0.1",
                "-p",
                str(url.port or 5432),
                "-U",
                url.username or "postgres",
                "-n",
                "-M",
                "prepared",
                "-c",
                str(clients),
                "-j",
                str(min(clients, 2)),
                "-T",
                str(max(1, round(seconds))),
                "-f",
                str(script),
                "-l",
                f"--log-prefix={logs}/tx",
                url.path.lstrip("/"),
            ],
            seconds,
        )
        latencies = sorted(
            int(line.split()[2]) / 1000
            for log in logs.iterdir()
            for line in log.read_text().splitlines()
        )
        tps = next(
            float(line.split("=")[1].split()[0])
            for line in out.splitlines()
            if line.startswith("tps")
        )
        return Measurement(tps, _pct(latencies, 0.5), _pct(latencies, 0.99), 0)

    def grpc(self, target: str, token: str = "", rate: float = 0.0) -> Generator:
        def run(rpc: str, products: str, clients: int, seconds: float) -> Measurement:
            first, count = products_of(products)
            out, self.cpu_share = timed_child(
                [
                    sys.executable,
                    "-m",
                    "bench.grpc_load",
                    "--target",
                    target,
                    "--rpc",
                    rpc,
                    "--clients",
                    str(clients),
                    "--seconds",
                    str(seconds),
                    "--first-product",
                    str(first),
                    "--products",
                    str(count),
                    *(["--token", token] if token else []),
                    *(["--rate", str(rate)] if rate else []),
                ],
                seconds,
            )
            result = json.loads(out)
            return Measurement(
                result["tps"], result["p50_ms"], result["p99_ms"], sum(result["errors"].values())
            )

        return run

    def wrk(self, base_url: str, token: str = "") -> Generator:
        def run(rpc: str, products: str, clients: int, seconds: float) -> Measurement:
            first, count = products_of(products)
            out, self.cpu_share = timed_child(
                [
                    "wrk",
                    "-t",
                    str(min(clients, 2)),
                    "-c",
                    str(clients),
                    "-d",
                    f"{max(1, round(seconds))}s",
                    "--timeout",
                    "30s",
                    "-s",
                    str(ROOT / "bench" / "wrk" / f"{rpc}.lua"),
                    base_url,
                    "--",
                    os.urandom(4).hex(),
                    str(first),
                    str(count),
                    token,
                ],
                seconds,
            )
            result = json.loads(out.strip().splitlines()[-1])
            seconds_run = result["duration_us"] / 1e6
            ok = result["requests"] - result["non_2xx"]
            return Measurement(
                ok / seconds_run,
                result["p50_us"] / 1000,
                result["p99_us"] / 1000,
                result["non_2xx"] + result["socket_errors"],
            )

        return run

    def scenarios(self) -> dict[str, Generator]:
        return {
            "pgbench (same SQL)": self.pgbench,
            "gRPC direct": self.grpc(self.mesh.grpc_target("inventory_svc")),
            # Envoy verifies the token (ES256) on DecreaseStock; GetStock is public.
            "gRPC via Envoy": self.grpc(self.mesh.envoy_target, self.token),
            "REST via Envoy": self.wrk(self.mesh.http_url, self.token),
            FASTAPI: self.wrk(f"http://127.0.0.1:{self.fastapi_port}"),
        }


def _pct(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def purge_event_queues(amqp_url: str) -> None:
    """Throughput runs have no consumers: keep RabbitMQ from filling up between runs."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for subscription in SUBSCRIPTIONS.values():
            await (await channel.declare_queue(subscription.queue, passive=True)).purge()


async def quiesce(db_url: str, amqp_url: str) -> int:
    """Start the pipeline run from nothing queued: give the relay a minute to
    publish what the throughput runs left, then drop the rest (those events are
    not what the pipeline run measures) and empty the queues. Returns how many
    outbox rows were dropped — more than none says the relay fell behind."""
    conn = await asyncpg.connect(db_url)
    unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # polling the database: nothing to await
            if not await conn.fetchval(unpublished):
                break
            await asyncio.sleep(0.5)
        dropped = await conn.fetchval(unpublished)
        await conn.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
    finally:
        await conn.close()
    await purge_event_queues(amqp_url)
    return dropped


async def seed_products(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO products (product_id, name, stock)"
            " SELECT g, 'Bench product ' || g, $1 FROM generate_series($2::int, $3::int) g"
            " ON CONFLICT (product_id) DO UPDATE SET stock = excluded.stock",
            BIG_STOCK,
            HOT_PRODUCT,
            SPREAD[0] + SPREAD[1] - 1,
        )
    finally:
        await conn.close()


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
    fastapi: "FastApiBaseline",
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes (CI)")
    parser.add_argument("--clients", type=int, nargs="+", help="override the client counts")
    parser.add_argument("--pipeline-only", action="store_true", help="skip the throughput rows")
    parser.add_argument(
        "--only",
        choices=["hot", "tracing", "mesh"],
        help="only that section (hot products, tracing cost, whole mesh), spliced into the"
        " existing report",
    )
    parser.add_argument("--hot-clients", type=int, nargs="+", help="override 1 8 32 96")
    parser.add_argument(
        "--profile",
        choices=["python", "native"],
        help="with --only mesh: record py-spy flame graphs of every Python process under"
        " the mesh's loads into bench/profiles/ instead of measuring (native: with C frames)",
    )
    parser.add_argument(
        "--mesh-rate",
        type=float,
        default=0.0,
        help="with --only mesh: only the whole-mesh rows, each client paced so the mesh gets"
        " this many orders/s (gRPC via Envoy): the same work for two builds to compare",
    )
    parser.add_argument(
        "--mesh-clients", type=int, nargs="+", help="whole mesh: override 1 32 (smoke: 8)"
    )
    parser.add_argument(
        "--rate",
        dest="rate_override",
        type=float,
        help="pipeline: orders per second offered (default 300)",
    )
    parser.add_argument(
        "--edge-only",
        action="store_true",
        help="only the edge section (bench/edge.py), spliced into the existing report",
    )
    parser.add_argument(
        "--replicas-only",
        action="store_true",
        help="only the replica rows and CPU per order (bench/replicas.py), spliced in",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the services, e.g. WORKERS=2 (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown report (default BENCHMARKS.md; smoke: test-artifacts/)",
    )
    args = parser.parse_args()
    missing = {"wrk": "wrk", "pgbench": "postgresql-client"}
    missing = {tool: pkg for tool, pkg in missing.items() if shutil.which(tool) is None}
    if missing:
        sys.exit(
            f"make bench needs {' and '.join(missing)}, which are not installed.\n"
            f"  Debian/Ubuntu: sudo apt-get install -y {' '.join(missing.values())}"
        )
    chosen_clients = args.clients
    if args.smoke:
        args.clients, args.seconds, args.warmup, args.repeats = [8], 1.0, 0.5, 1
        args.rate, args.pipeline_seconds = 100.0, 2.0
    else:
        args.clients, args.seconds, args.warmup, args.repeats = [1, 8, 32], 5.0, 2.0, 3
        args.rate, args.pipeline_seconds = 300.0, 20.0
    args.clients = chosen_clients or args.clients
    args.hot_clients = args.hot_clients or (args.clients if args.smoke else HOT_CLIENTS)
    args.mesh_clients = args.mesh_clients or (args.clients if args.smoke else MESH_CLIENTS)
    args.rate = args.rate_override or args.rate
    output = args.output or (
        ROOT / ("test-artifacts/bench-smoke.md" if args.smoke else "BENCHMARKS.md")
    )
    args.output_path = output
    # What the report says about the run itself (the hot section prints them).
    args.command = "python -m bench.run " + " ".join(sys.argv[1:])
    args.started = datetime.now(UTC)
    args.load_at_start = load_average()
    try:
        report = asyncio.run(run(args))
        if args.profile:
            print(f"flame graphs:\n{report}")
            return
    except asyncio.CancelledError:  # SIGTERM, after the clean-up in run()
        sys.exit("bench: stopped (SIGTERM); every process it started is stopped")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    print(f"\nwrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    # The smoke run proves the harness works: a row that could not be measured
    # (its note says "failed: …") fails it, as a broken pgbench script once did not.
    if args.smoke and "| failed: " in report:
        sys.exit("bench smoke: a row failed to run (its note in the report says why)")
    if args.smoke and getattr(args, "failure", None):
        sys.exit(f"bench smoke: {args.failure}")


async def run(args: argparse.Namespace) -> str:
    from bench.report import render, render_hot

    # SIGTERM (a CI job cancelled, `kill`) ends the run as Ctrl-C does: through the
    # clean-up below, so no process the bench started outlives it.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    hot_rows = not (args.pipeline_only or args.edge_only or args.replicas_only or args.only)
    if (
        hot_rows or args.only == "hot"
    ):  # before anything starts: a server too small for the rows says so
        check_room(await max_connections(PG_SERVER_URL), max(args.hot_clients))
    work = Path(tempfile.mkdtemp(prefix="polyglot-bench-"))
    db_url = await sandbox.create_database(PG_SERVER_URL, "polyglot_bench_inventory")
    notify_url = await sandbox.create_database(PG_SERVER_URL, "polyglot_bench_notify")
    amqp_url = sandbox.create_vhost(AMQP_SERVER_URL, "polyglot_bench")
    mongo, mongo_url = sandbox.start_mongo(work / "mongo")
    servers = {
        "INVENTORY_DATABASE_URL": db_url,
        "NOTIFY_DATABASE_URL": notify_url,
        "AMQP_URL": amqp_url,
        "MONGO_URL": mongo_url,
    }
    service_env = dict(setting.split("=", 1) for setting in args.service_env)
    env = {**servers, "LOG_LEVEL": "WARNING", **BENCH_SERVICE_ENV, **service_env}
    databases = [db_url, notify_url]  # the bench's connections: to these
    mesh = None
    fastapi = None
    bench = None
    try:
        # Load from one address and one token is what the bench is: no quotas, and
        # room for its clients in the circuit breakers.
        if args.only == "mesh":  # the services' defaults, as `make up` runs them
            return await whole_mesh(args, work, {**servers, **service_env}, mongo, databases)
        if args.replicas_only or args.only == "tracing":  # meshes of their own: databases now
            sandbox.migrate(env, backends())
        else:
            mesh = sandbox.start_mesh(work, env, only=["inventory_svc"], edge=BENCH_EDGE)
        await seed_products(db_url)
        if args.only == "tracing":

            def rest_via_envoy(mesh: sandbox.Mesh) -> Generator:
                bench = Bench(work, db_url, mesh, 0)
                return bench.wrk(mesh.http_url, bench.token)

            rows, load = await measure_tracing(
                rest_via_envoy,
                seed_products,
                lambda: purge_event_queues(amqp_url),
                PG_SERVER_URL,
                work,
                env,
                BENCH_EDGE,
                args.seconds,
                args.warmup,
                rounds := 1 if args.smoke else 2 * args.repeats,
            )
            existing = args.output_path.read_text() if args.output_path.exists() else ""
            return splice(existing, render_tracing(rows, load, args.seconds, rounds))
        if args.edge_only:
            edge = await measure_edge(mesh, work, HOT_PRODUCT, smoke=args.smoke)
            existing = args.output_path.read_text() if args.output_path.exists() else ""
            return splice(existing, render_edge(edge))
        fastapi = FastApiBaseline(work, db_url)
        fastapi.start()
        fastapi_port = fastapi.port

        async def replicas() -> list[str]:
            rows = await measure_replicas(
                Bench,
                work,
                env,
                db_url,
                BENCH_EDGE,
                args.seconds,
                args.warmup,
                fastapi.process,
                fastapi_port,
            )
            return render_replicas(rows, args.seconds, os.cpu_count() or 1)

        if args.replicas_only:
            existing = args.output_path.read_text() if args.output_path.exists() else ""
            return splice(existing, await replicas())
        bench = Bench(work, db_url, mesh, fastapi_port)
        if args.only == "hot":
            hot = add_ratios(
                await asyncio.to_thread(measure_hot, bench, args, amqp_url, fastapi, databases)
            )
            existing = args.output_path.read_text() if args.output_path.exists() else ""
            return splice(existing, render_hot(hot, args))
        rows = (
            []
            if args.pipeline_only
            else add_ratios(
                await asyncio.to_thread(measure_hot, bench, args, amqp_url, fastapi, databases)
                + await asyncio.to_thread(measure_all, bench, args, amqp_url)
            )
        )
        edge = await measure_edge(mesh, work, HOT_PRODUCT, smoke=args.smoke)
        args.dropped_backlog = await quiesce(db_url, amqp_url)
        for worker in ("analytics_svc", "notify_svc"):
            await asyncio.to_thread(mesh.start, worker)
        pipeline = await run_pipeline(
            inventory_target=mesh.grpc_target("inventory_svc"),
            amqp_url=amqp_url,
            inventory_db_url=db_url,
            mongo_url=mongo_url,
            rate=args.rate,
            seconds=args.pipeline_seconds,
            product_id=SPREAD[0],
        )
        mesh.stop()
        section = await replicas()
        fastapi.stop()
        return splice(render(rows, pipeline, args, machine(), edge), section)
    finally:
        if bench:
            bench.stopping.set()
        stop_generators()
        if fastapi:
            fastapi.stop()
        if mesh:
            mesh.stop()
        mongo.stop()
        sandbox.delete_vhost(amqp_url)
        for url in databases:
            await sandbox.drop_database(url)
        shutil.rmtree(work, ignore_errors=True)


async def whole_mesh(
    args: argparse.Namespace,
    work: Path,
    env: dict[str, str],
    mongo: ManagedProcess,
    databases: list[str],
) -> str:
    """The whole-mesh section (bench/mesh.py), spliced into the existing report. The
    baselines get a database of their own (dropped at the end with ``databases``)."""
    baseline_url = await sandbox.create_database(PG_SERVER_URL, "polyglot_bench_baseline")
    databases.append(baseline_url)
    sandbox.migrate({**env, "INVENTORY_DATABASE_URL": baseline_url}, ["inventory_svc"])
    await seed_products(baseline_url)
    fastapi = FastApiBaseline(work, baseline_url)
    mesh = None
    bench = None
    try:
        await asyncio.to_thread(fastapi.start)
        mesh = await asyncio.to_thread(
            sandbox.start_mesh, work / "whole-mesh", env, None, MESH_EDGE
        )
        await seed_products(env["INVENTORY_DATABASE_URL"])
        bench = Bench(work, baseline_url, mesh, fastapi.port)
        section = Section(
            bench,
            mesh,
            env,
            mongo,
            fastapi.process,
            f"http://127.0.0.1:{fastapi.port}",
            args.mesh_rate,
        )
        loads = [(products, c) for products in ("hot", "spread") for c in args.mesh_clients]
        if args.profile:
            written = await profile_mesh(
                section, loads, seconds=3 * args.seconds, native=args.profile == "native"
            )
            return "\n".join(str(path.relative_to(ROOT)) for path in written)
        rows, machine = await measure_mesh(
            section, loads, seconds=args.seconds, warmup=args.warmup, rounds=args.repeats
        )
    finally:
        if bench:
            bench.stopping.set()
        stop_generators()
        if mesh:
            await asyncio.to_thread(mesh.stop)
        await asyncio.to_thread(fastapi.stop)
    lost = sum(run.missing for row in rows for run in row.runs)
    if lost:  # the smoke run fails on it (main)
        args.failure = f"{lost} orders never reached analytics and notify (report: not arrived)"
    existing = args.output_path.read_text() if args.output_path.exists() else ""
    return splice(existing, render_mesh(rows, machine, args.command, args.seconds, args.repeats))


class FastApiBaseline:
    """The FastAPI + asyncpg baseline's uvicorn process, started and stopped as the
    rows need it (the hot section runs it only during its own rows)."""

    pool_size = POOL_SIZE

    def __init__(self, work: Path, db_url: str) -> None:
        self.port = sandbox.free_port()
        self.process = ManagedProcess(
            "fastapi",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.fastapi_baseline:app",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            work / "fastapi.log",
            env={"BENCH_DATABASE_URL": db_url},
        )

    def start(self) -> None:
        if self.process.running():
            return
        self.process.start_until(
            lambda: _http_ok(f"http://127.0.0.1:{self.port}/inventory/{HOT_PRODUCT}"), "HTTP 200"
        )

    def stop(self) -> None:
        self.process.stop()


async def max_connections(server_url: str) -> int:
    conn = await asyncpg.connect(sandbox.database_url(server_url, "postgres"))
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "not found"


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgresql": _version(["psql", "--version"]),
        "pgbench": _version(["pgbench", "--version"]),
        "rabbitmq": _version(["rabbitmqctl", "-q", "version"]),
        "envoy": _version([str(Path(sys.executable).parent / "envoy"), "--version"])
        .split("version:")[-1]
        .strip(),
        "wrk": _version(["wrk", "--version"]),
        "grpcio": metadata.version("grpcio"),
        "asyncpg": metadata.version("asyncpg"),
        "faststream": metadata.version("faststream"),
    }


if __name__ == "__main__":
    main()
