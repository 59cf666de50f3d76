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
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import asyncpg

from bench.connections import check_room
from bench.edge import measure_edge, render_edge
from bench.harness import (
    AMQP_SERVER_URL,
    HOT_PRODUCT,
    PG_SERVER_URL,
    SPREAD,
    Bench,
    FastApiBaseline,
    Generator,
    load_average,
    max_connections,
    purge_event_queues,
    seed_products,
    stop_generators,
)
from bench.mesh import Section, measure_mesh, profile_mesh, render_mesh
from bench.pipeline import run_pipeline
from bench.replicas import measure_replicas, render_replicas
from bench.report import render, render_hot, splice
from bench.throughput import add_ratios, measure_all, measure_hot
from bench.tracing import measure_tracing, render_tracing
from blueprint.edge.settings import EnvoySite
from blueprint.topology import ROOT, backends
from devtools import sandbox
from devtools.processes import ManagedProcess

BENCH_EDGE = {
    "mutation_rate_per_second": 0,
    "anonymous_rate_per_second": 0,
    "max_requests_per_backend": 4096,
}
# The whole-mesh section: Envoy health-checks as `make up`'s does, not every 0.5 s (sandbox).
MESH_EDGE = {**BENCH_EDGE, "health_check_seconds": EnvoySite.health_check_seconds}
HOT_CLIENTS = [1, 8, 32, 96]  # PostgreSQL's default max_connections is 100
MESH_CLIENTS = [1, 32]  # one customer's latency; the whole mesh loaded
# Bench-only service settings (bench/connections.py): pooled connections idle for a
# second are closed and the health probe runs every 5 s, so a process idle during
# a row (the API during pgbench's) leaves PostgreSQL's connection slots to the row;
# the relay claims and probes on one pooled connection.
BENCH_SERVICE_ENV = {
    "DB_POOL_IDLE_SECONDS": "1",
    "HEALTH_PROBE_SECONDS": "5",
    "RELAY_DB_POOL_SIZE": "1",
}


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
