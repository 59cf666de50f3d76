"""What every section of the bench shares: the load generators (pgbench, bench.grpc_load,
wrk) and what they measure, the bench's products, the FastAPI baseline's process,
and small helpers. Sections import from here; nothing here imports a section.
"""

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import httpx

from bench.fastapi_baseline import POOL_SIZE
from bench.pgbench_script import decrease_stock_script, get_stock_script
from blueprint.topology import ROOT
from devtools import sandbox
from devtools.processes import ManagedProcess
from meshkit.broker_topology import SUBSCRIPTIONS

# Its own variables, else the tests' servers (TEST_POSTGRES_URL, TEST_AMQP_URL).
PG_SERVER_URL = os.environ.get("BENCH_POSTGRES_URL", sandbox.PG_SERVER_URL)
AMQP_SERVER_URL = os.environ.get("BENCH_AMQP_URL", sandbox.RABBIT_SERVER_URL)
HOT_PRODUCT = 100_000  # one product every client fights over
SPREAD = (100_001, 1_000)  # first id, count: contention spread over 1000 products
BIG_STOCK = 2_000_000_000
FASTAPI = "FastAPI + asyncpg"


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
        return Measurement(tps, percentile(latencies, 0.5), percentile(latencies, 0.99), 0)

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


def percentile(values: list[float], fraction: float) -> float:
    """The value ``fraction`` of the way up ``values`` (NaN when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def purge_event_queues(amqp_url: str) -> None:
    """Throughput runs have no consumers: keep RabbitMQ from filling up between runs."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for subscription in SUBSCRIPTIONS.values():
            await (await channel.declare_queue(subscription.queue, passive=True)).purge()


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
            lambda: http_ok(f"http://127.0.0.1:{self.port}/inventory/{HOT_PRODUCT}"), "HTTP 200"
        )

    def stop(self) -> None:
        self.process.stop()


async def max_connections(server_url: str) -> int:
    conn = await asyncpg.connect(sandbox.database_url(server_url, "postgres"))
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def load_average() -> str:
    """The machine's load average (1 / 5 / 15 min), as the reports print it."""
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


async def normal_calls(base_url: str, product: int, count: int) -> list[float]:
    timings = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            reply = await client.get(f"/inventory/{product}")
            timings.append((time.perf_counter() - started) * 1000)
            reply.raise_for_status()
    return timings


async def until_serving(base_url: str, product: int) -> None:
    """Until a new Envoy has seen inventory_svc healthy (the others may be absent)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await normal_calls(base_url, product, 1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
