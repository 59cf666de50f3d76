"""What the chosen stack costs before any of our code runs: the floors under issue 20's
targets, measured in one run, in a private sandbox.

    python -m bench.floors [--seconds 8] [--rounds 3] [--messages 20000]

**One customer** (1 client, closed loop, wrk, REST DecreaseStock of one product, the
relay not running), in rounds of changing order, medians:

- the FastAPI + asyncpg baseline (bench/fastapi_baseline.py; asyncpg's default reset
  query on every release, as a user would write it);
- the least gRPC sale (bench/bare_grpc.py: grpc.aio and asyncpg running the same
  statement, nothing else; no reset query, as inventory_svc) behind an Envoy that
  only transcodes and routes;
- inventory_svc (LOG_LEVEL WARNING, as the hot-product rows) behind that same Envoy.

**The event path per order, with no handler code**, on uvloop as the services run:
FastStream, configured as meshkit.broker configures it (publisher confirms, DEBUG
log level) but without our middlewares, publishes ProductSold bodies
(meshkit.events) to the mesh's real topology (the topic exchange, two quorum queues
with their DLQs; meshkit.broker_topology), then a do-nothing FastStream subscriber
drains each queue in turn. CPU per message of the publisher, of each subscriber and
of RabbitMQ (/proc; the whole broker's, an upper bound on a shared broker).
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import uvloop
import yaml
from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitBroker

from bench.harness import (
    AMQP_SERVER_URL,
    FASTAPI,
    HOT_PRODUCT,
    PG_SERVER_URL,
    FastApiBaseline,
    http_ok,
    load_average,
    seed_products,
)
from bench.procstat import cpu_seconds, process_cpu_seconds
from blueprint.contracts import load_contracts
from blueprint.edge.blocks import address, endpoint, typed
from blueprint.edge.clusters import http2_upstream
from blueprint.edge.settings import EnvoySite
from blueprint.edge.transcoder import transcoder_filter
from devtools import sandbox
from devtools.plan import BIN, ENVOY_OPTIONS, migrate
from devtools.processes import ManagedProcess
from meshkit.broker_topology import EXCHANGE, SUBSCRIPTIONS, declare_topology, subscriber_queue
from meshkit.events import PRODUCT_SOLD, product_sold_body

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "polyglot.inventory.v1.InventoryService"
PREFETCH = 50  # analytics_svc's default (notify_svc's is 20)
HTTP_MANAGER = "envoy.filters.network.http_connection_manager"
ROUTER = "filters.http.router.v3.Router"
PUBLISHED_AT_ONCE = 100  # publishes awaited together: the relay's claims are batches
DRAIN_SECONDS = 120


# --- one customer -------------------------------------------------------------------


def transcoding_envoy(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """An Envoy with the mesh's transcoder and a router, nothing else."""
    site = EnvoySite(listen_port=port, admin_port=admin_port)
    inventory = [s for s in load_contracts().services if s.full_name == SERVICE]
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
    manager = typed(
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="floor",
        route_config={"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        http_filters=[
            transcoder_filter(site, inventory),
            {"name": "envoy.filters.http.router", "typed_config": typed(ROUTER)},
        ],
    )
    listener = {
        "name": "ingress",
        "address": address("127.0.0.1", port),
        "filter_chains": [{"filters": [{"name": HTTP_MANAGER, "typed_config": manager}]}],
    }
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [endpoint("127.0.0.1", upstream_port)]}],
        },
        "typed_extension_protocol_options": http2_upstream(),
    }
    return {
        "admin": {"address": address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def one_client(base_url: str, seconds: int) -> dict[str, float]:
    """wrk, 1 connection, a unique order id per sale: rate, p50 and p99 (ms)."""
    argv = [
        "wrk", "-t1", "-c1", f"-d{seconds}s", "-s", str(ROOT / "bench/wrk/decrease.lua"),
        base_url, "--", f"floor{uuid.uuid4().hex[:8]}", str(HOT_PRODUCT), "1",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    if failed := summary["non_2xx"] + summary["socket_errors"]:
        raise RuntimeError(f"{base_url}: {failed} of {summary['requests']} sales failed")
    return {
        "rate": summary["requests"] / summary["duration_us"] * 1e6,
        "requests": summary["requests"],
        "p50": summary["p50_us"] / 1000,
        "p99": summary["p99_us"] / 1000,
    }


def measured(base_url: str, seconds: int, pids: dict[str, int]) -> dict[str, float]:
    """A warm-up, then one_client with the CPU per sale of each of ``pids``."""
    one_client(base_url, 2)
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    row = one_client(base_url, seconds)
    for name, pid in pids.items():
        row[f"{name} µs"] = (process_cpu_seconds(pid) - before[name]) / row["requests"] * 1e6
    return row


def one_customer(args: argparse.Namespace, work: Path, db_url: str) -> list[str]:
    upstream_port, port, admin_port = (sandbox.free_port() for _ in range(3))
    config = work / "envoy.yaml"
    config.write_text(yaml.safe_dump(transcoding_envoy(port, admin_port, upstream_port)))
    envoy_argv = [str(BIN / "envoy"), "-c", str(config), *ENVOY_OPTIONS]
    envoy = ManagedProcess("envoy", envoy_argv, work / "envoy.log", cwd=ROOT)
    grpc_env = {
        "BENCH_DATABASE_URL": db_url, "INVENTORY_DATABASE_URL": db_url,
        "GRPC_PORT": str(upstream_port), "LOG_LEVEL": "WARNING", "WORKERS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",  # no tracing, whatever the caller's environment
    }  # fmt: skip
    backends = {
        "the least gRPC sale (bench/bare_grpc.py), behind Envoy": [
            "bench.bare_grpc",
            str(upstream_port),
        ],
        "inventory_svc, behind Envoy": ["inventory_svc"],
    }
    fastapi = FastApiBaseline(work, db_url)
    envoy_url = f"http://127.0.0.1:{port}"

    @contextlib.contextmanager
    def serving(name: str) -> Iterator[tuple[str, dict[str, int]]]:
        """The server of row ``name`` running: its URL and the processes to measure."""
        if name == FASTAPI:
            fastapi.start()
            try:
                yield f"http://127.0.0.1:{fastapi.port}", {"server": fastapi.process.pid or 0}
            finally:
                fastapi.stop()
            return
        argv = [sys.executable, "-m", *backends[name]]
        server = ManagedProcess("grpc", argv, work / "grpc.log", env=grpc_env, cwd=ROOT)
        server.start_until(lambda: http_ok(f"{envoy_url}/inventory/{HOT_PRODUCT}"), "sales")
        try:
            yield envoy_url, {"server": server.pid or 0, "Envoy": envoy.pid or 0}
        finally:
            server.stop()

    servers = [FASTAPI, *backends]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    envoy.start_until(lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready"), "ready")
    try:
        for round_ in range(args.rounds):
            # Each round in another order: the tables' growth lands on no row alone.
            turn = round_ % len(servers)
            for name in servers[turn:] + servers[:turn]:
                with serving(name) as (url, pids):
                    rows[name].append(measured(url, args.seconds, pids))
    finally:
        envoy.stop()
    return render_customer(rows, args)


def render_customer(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> list[str]:
    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run.get(key, float("nan")) for run in runs)

    def cpu(runs: list[dict[str, float]], key: str) -> str:
        return "-" if key not in runs[0] else f"{median(runs, key):.0f}"

    fastapi_p50 = median(rows[FASTAPI], "p50")
    lines = [
        f"One customer: REST DecreaseStock, 1 client, {args.rounds} rounds in rotating order of"
        f" {args.seconds} s (medians); the Envoy here only transcodes and routes.",
        "",
        "| server | sales/s | p50 ms | p99 ms | p50 x FastAPI | server µs CPU / sale"
        " | Envoy µs CPU / sale |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        lines.append(
            f"| {name} | {median(runs, 'rate'):.0f} | {median(runs, 'p50'):.2f}"
            f" | {median(runs, 'p99'):.2f} | {median(runs, 'p50') / fastapi_p50:.2f}"
            f" | {cpu(runs, 'server µs')} | {cpu(runs, 'Envoy µs')} |"
        )
    return lines


# --- the event path -----------------------------------------------------------------


def broker(amqp_url: str) -> RabbitBroker:
    """FastStream as meshkit.broker.rabbit_broker sets it up, without our middlewares."""
    return RabbitBroker(
        amqp_url,
        default_channel=Channel(prefetch_count=PREFETCH, on_return_raises=True),
        log_level=logging.DEBUG,
    )


async def publish(amqp_url: str, messages: int) -> tuple[float, float]:
    """CPU seconds of the publisher and of RabbitMQ for ``messages`` ProductSold
    bodies, counted once the topology is declared."""
    publisher = broker(amqp_url)
    await publisher.start()
    try:
        await declare_topology(publisher)
        body = product_sold_body(
            event_id=str(uuid.uuid4()), order_id="ORD-2026-000001", product_id=HOT_PRODUCT,
            quantity=1, sold_by="user-1",
        )  # fmt: skip
        started, rabbit = own_cpu(), rabbitmq_cpu()
        for first in range(0, messages, PUBLISHED_AT_ONCE):
            await asyncio.gather(*(
                publisher.publish(
                    body, exchange=EXCHANGE, routing_key=PRODUCT_SOLD, persist=True,
                    mandatory=True, message_id=str(uuid.uuid4()), content_type="application/json",
                )
                for _ in range(min(PUBLISHED_AT_ONCE, messages - first))
            ))  # fmt: skip
        return own_cpu() - started, rabbitmq_cpu() - rabbit
    finally:
        await publisher.stop()


async def drain(amqp_url: str, queue_of: str, messages: int) -> float:
    """A do-nothing subscriber's CPU seconds for ``messages`` of ``queue_of``'s queue."""
    consumer = broker(amqp_url)
    received = 0
    all_in = asyncio.Event()

    @consumer.subscriber(
        subscriber_queue(SUBSCRIPTIONS[queue_of]), EXCHANGE, ack_policy=AckPolicy.NACK_ON_ERROR
    )
    async def handle(body: dict[str, Any]) -> None:
        nonlocal received
        received += 1
        if received == messages:
            all_in.set()

    started = own_cpu()
    await consumer.start()
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await all_in.wait()
    except TimeoutError:
        raise RuntimeError(
            f"{received} of {messages} messages arrived in {DRAIN_SECONDS}s"
        ) from None
    finally:
        used = own_cpu() - started
        await consumer.stop()
    return used


def own_cpu() -> float:
    return process_cpu_seconds(os.getpid())


def rabbitmq_cpu() -> float:
    """The whole broker's: other users of a shared broker count too (an upper bound)."""
    return cpu_seconds(command="beam.smp")


async def event_path(amqp_url: str, messages: int) -> list[str]:
    cpu: dict[str, float] = {}
    cpu["publisher (confirms)"], cpu["RabbitMQ, publishing to 2 quorum queues"] = await publish(
        amqp_url, messages
    )
    for queue_of in SUBSCRIPTIONS:
        rabbit = rabbitmq_cpu()
        cpu[f"do-nothing subscriber of {SUBSCRIPTIONS[queue_of].queue}"] = await drain(
            amqp_url, queue_of, messages
        )
        cpu[f"RabbitMQ, delivering {SUBSCRIPTIONS[queue_of].queue}"] = rabbitmq_cpu() - rabbit
    total = sum(cpu.values())
    return [
        f"The event path: {messages} messages, no handler code (FastStream"
        f" {metadata.version('faststream')}, aiormq {metadata.version('aiormq')}).",
        "",
        "RabbitMQ: the whole broker's CPU, other users of a shared broker included"
        " (an upper bound).",
        "",
        "| process | µs CPU per order |",
        "|---|---:|",
        *(f"| {name} | {used / messages * 1e6:.0f} |" for name, used in cpu.items()),
        f"| **the event path's floor** | **{total / messages * 1e6:.0f}** |",
    ]


# --- the run ------------------------------------------------------------------------


async def prepare_database(db_url: str) -> None:
    migrate({"INVENTORY_DATABASE_URL": db_url}, ["inventory_svc"])
    await seed_products(db_url)


def run(args: argparse.Namespace) -> list[str]:
    header = [
        "## Floors: the stack before our code",
        "",
        f"`python -m bench.floors --seconds {args.seconds} --rounds {args.rounds}"
        f" --messages {args.messages}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        f" load average {load_average()} at the start, on {os.cpu_count()} cores.",
        "",
    ]
    db_url = asyncio.run(sandbox.create_database(PG_SERVER_URL, "polyglot_bench_floors"))
    try:
        asyncio.run(prepare_database(db_url))
        with tempfile.TemporaryDirectory(prefix="polyglot-floors-") as work:
            customer = one_customer(args, Path(work), db_url)
    finally:
        asyncio.run(sandbox.drop_database(db_url))
    amqp_url = sandbox.create_vhost(AMQP_SERVER_URL, "polyglot_bench_floors")
    try:
        # On uvloop, as the services run (meshkit.settings: EVENT_LOOP).
        events = uvloop.run(event_path(amqp_url, args.messages))
    finally:
        sandbox.delete_vhost(amqp_url)
    return [*header, *customer, "", *events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    print("\n".join(run(parser.parse_args())))


if __name__ == "__main__":
    main()
