"""Whole mesh (``python -m bench.run --only mesh``): what an order costs with every
consumer running, beside the database's per-order limit and FastAPI, in one run.

Rows, per load (``hot``: every order on one product; ``spread``: over 1000) and
client count, each a closed loop of DecreaseStock calls with unique order ids:

- **REST via Envoy, whole mesh**: wrk → Envoy → inventory_svc → PostgreSQL, and
  every event on through the outbox relay → RabbitMQ → analytics_svc (MongoDB
  wire server) and notify_svc (PostgreSQL, e-mail to the log): every process at
  its defaults as ``make up`` runs it (LOG_LEVEL INFO, metrics endpoints on), with
  Envoy's per-client rate limit off (one address is what a bench is);
- **FastAPI + asyncpg**: the same sale statement from one uvicorn process, wrk,
  no event consumed;
- **pgbench (same SQL), database alone**: pgbench running the same per-order
  transaction: the database's per-order limit at that concurrency.

The baselines work on a database of their own (same schema and products), so their
outbox rows reach no relay and the mesh's processes idle during their rows.

Per row: orders/s, p50 and p99 (the generator's); **CPU per order per process**
from /proc (bench/procstat.py) between the start of the load and the moment every
order of the run had reached analytics (its document) and notify (its notification
marked sent), ÷ the orders the sales table gained. PostgreSQL is the backends of
the bench's databases (pg_stat_activity, sampled every 100 ms, since connections
come and go; the bench's own connections left out), split by database; RabbitMQ
is the broker's process, which other users of the shared broker load too (an
upper bound). **Event lag** per order: the later of its arrival at analytics
(``recorded_at``) and at notify (``sent_at``) minus its commit (``sold_at``);
"all in" is how long after the load ended the last order arrived.

Every row is measured once per round, rows taking turns, so a round's rows share
the machine's state; the table shows medians over rounds.
"""

import asyncio
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import DEVNULL

import asyncpg

from bench.harness import Bench, Generator, Measurement, load_average
from bench.procstat import BackendCpu, ProcessCpu
from bench.sinks import Sinks, bench_connection, now, open_sinks, sold_since
from devtools import sandbox
from devtools.processes import ManagedProcess

SECTION = "## Whole mesh: cost per order"
MESH = "REST via Envoy, whole mesh"
FASTAPI = "FastAPI + asyncpg (no events)"
PGBENCH = "pgbench (same SQL), database alone"
# The mesh's processes, as blueprint/topology.py names them, in the order of an order's path.
MESH_PROCESSES = {
    "envoy": "Envoy",
    "inventory_svc": "inventory_svc",
    "inventory_relay": "relay",
    "analytics_svc": "analytics_svc",
    "notify_svc": "notify_svc",
}
MONGO, RABBIT = "MongoDB", "RabbitMQ"
# PostgreSQL's backends, by the process they serve ("other": autovacuum, unknown).
PG = {
    name: f"PG ← {MESH_PROCESSES[name]}"
    for name in ("inventory_svc", "inventory_relay", "notify_svc")
}
PG_OTHER = "PG other"
# The breakdown's columns, in that order; a baseline's own process (and its backends)
# go under inventory_svc's.
COLUMNS = [*MESH_PROCESSES.values(), MONGO, *PG.values(), PG_OTHER, RABBIT]


@dataclass
class Run:
    """One measured run of a row."""

    measured: Measurement
    orders: int  # sales committed in the run (the database's count)
    cpu_ms: dict[str, float]  # column → CPU ms per order
    generator_ms: float  # the load generator's CPU per order
    missing: int = 0  # orders that never reached analytics or notify
    lag_p50_ms: float = float("nan")
    lag_p99_ms: float = float("nan")
    all_in_s: float = float("nan")  # after the load ended, until the last order arrived

    @property
    def total_ms(self) -> float:
        return sum(self.cpu_ms.values())


@dataclass
class MeshRow:
    scenario: str
    products: str
    clients: int
    runs: list[Run] = field(default_factory=list)

    def median(self, value: Callable[[Run], float]) -> float:
        values = [value(run) for run in self.runs]
        return statistics.median(values) if values else float("nan")

    @property
    def tps(self) -> float:
        return self.median(lambda run: run.measured.tps)

    @property
    def p50_ms(self) -> float:
        return self.median(lambda run: run.measured.p50_ms)

    @property
    def errors(self) -> int:
        return sum(run.measured.errors for run in self.runs)


@dataclass
class Section:
    """What the section's rows run against, set up by bench.run."""

    bench: Bench  # its pgbench on the baselines' own database
    mesh: sandbox.Mesh  # the whole mesh, started
    env: dict[str, str]  # the mesh's settings (databases, broker, MongoDB)
    mongo: ManagedProcess
    fastapi: ManagedProcess  # the baseline's uvicorn, started, on the baselines' database
    fastapi_url: str
    # > 0: the mesh rows alone, gRPC via Envoy with every client paced to this many
    # orders/s in all (A/B of two builds: the same work for both, bench/findings.md).
    rate: float = 0.0

    @property
    def scenarios(self) -> tuple[str, ...]:
        return (MESH,) if self.rate else (PGBENCH, FASTAPI, MESH)

    def generator(self, scenario: str) -> Generator:
        if scenario == MESH and self.rate:
            return self.bench.grpc(self.mesh.envoy_target, self.bench.token, self.rate)
        if scenario == PGBENCH:
            return self.bench.pgbench
        if scenario == FASTAPI:
            return self.bench.wrk(self.fastapi_url)
        return self.bench.wrk(self.mesh.http_url, self.bench.token)

    def generator_seconds(self, seconds: float) -> float:
        """CPU seconds the last run's generator used."""
        return self.bench.cpu_share * seconds * (os.cpu_count() or 1)


async def measure_mesh(
    section: Section,
    loads: list[tuple[str, int]],
    *,
    seconds: float,
    warmup: float,
    rounds: int,
) -> tuple[list[MeshRow], dict[str, str]]:
    """The rows (per load: pgbench, FastAPI, whole mesh), and the load average
    before and after."""
    machine = {"load before": load_average()}
    env, mesh = section.env, section.mesh
    rows = {
        (scenario, products, clients): MeshRow(scenario, products, clients)
        for products, clients in loads
        for scenario in section.scenarios
    }
    watcher = await bench_connection(section.bench.db_url)
    baseline_db = await bench_connection(section.bench.db_url)
    sinks = await open_sinks(env)
    mesh_cpu = ProcessCpu(
        {label: mesh.processes[name].pid or -1 for name, label in MESH_PROCESSES.items()}
        | {MONGO: section.mongo.pid or -1},
        {RABBIT: "beam.smp"},
    )
    mesh_backends = BackendCpu(
        watcher,
        [env["INVENTORY_DATABASE_URL"], env["NOTIFY_DATABASE_URL"]],
        {label: mesh.processes[name].pid or -1 for name, label in PG.items()},
        PG_OTHER,
    )
    # The baselines' backends all count as their API's (pgbench's client is no process here).
    baseline_pg = PG["inventory_svc"]
    baseline_backends = BackendCpu(watcher, [section.bench.db_url], {}, baseline_pg)
    try:
        # What the mesh spends with no orders at all (health checks, probes, polling,
        # metrics sampling): part of every row's CPU per order, the more the fewer orders.
        with mesh_cpu.measuring():
            async with mesh_backends.measuring():
                await asyncio.sleep(seconds)
        idle = mesh_cpu.seconds() | mesh_backends.seconds()
        machine["idle"] = ", ".join(
            f"{label} {1000 * used / seconds:.0f}" for label, used in idle.items() if used
        )
        print(f"mesh idle, CPU ms per second: {machine['idle']}", flush=True)
        for turn in range(rounds):
            for products, clients in loads:
                for scenario in section.scenarios:
                    row = rows[scenario, products, clients]
                    if scenario == MESH:
                        run = await _mesh_run(
                            section, sinks, mesh_cpu, mesh_backends, row, seconds, warmup
                        )
                    else:
                        run = await _baseline_run(
                            section, baseline_db, baseline_backends, row, seconds, warmup
                        )
                    row.runs.append(run)
                    print(f"mesh round {turn + 1} {_describe(row, run)}", flush=True)
    finally:
        machine["load after"] = load_average()
        await sinks.close()
        await baseline_db.close()
        await watcher.close()
    return list(rows.values()), machine


# --- profiles -----------------------------------------------------------------------

PROFILES = Path(__file__).with_name("profiles")
# The mesh's Python processes py-spy can read (Envoy and RabbitMQ are not Python).
PROFILED = ["inventory_svc", "inventory_relay", "analytics_svc", "notify_svc"]


async def profile_mesh(
    section: Section, loads: list[tuple[str, int]], *, seconds: float, native: bool
) -> list[Path]:
    """Flame graphs (py-spy, bench/profiles/<load>-<clients>-<process>.svg) of every
    Python process of the mesh, MongoDB's wire server included, recorded at the
    same time while wrk loads the mesh (after 2 s of load, for ``seconds``);
    ``native`` adds C frames (grpcio's core, asyncpg, uvloop) and blocking
    samples. py-spy comes with the dev extra."""
    spy = Path(sys.executable).with_name("py-spy")
    generator = section.generator(MESH)
    written = []
    PROFILES.mkdir(exist_ok=True)
    processes = {name: section.mesh.processes[name].pid for name in PROFILED}
    processes["mongodb"] = section.mongo.pid
    for products, clients in loads:
        load = asyncio.create_task(
            asyncio.to_thread(generator, "decrease", products, clients, seconds + 4)
        )
        await asyncio.sleep(2)
        records = []
        for name, pid in processes.items():
            out = PROFILES / f"{products}-{clients}-{name}{'-native' if native else ''}.svg"
            argv = [str(spy), "record", "-p", str(pid), "-d", f"{seconds:g}", "-o", str(out)]
            argv += ["--nolineno", *(["--native"] if native else ["--nonblocking"])]
            records.append(
                await asyncio.create_subprocess_exec(*argv, stdout=DEVNULL, stderr=DEVNULL)
            )
            written.append(out)
        for record in records:
            await record.wait()
        await load
        print(f"profiled {products} c={clients}: {', '.join(processes)}", flush=True)
    return written


async def _mesh_run(
    section: Section,
    sinks: Sinks,
    processes: ProcessCpu,
    backends: BackendCpu,
    row: MeshRow,
    seconds: float,
    warmup: float,
) -> Run:
    generator = section.generator(MESH)
    # The warm-up's orders are all consumed before the measured run starts, so the
    # run's CPU and lag are its own orders'.
    warmed = await now(sinks.inventory)
    await asyncio.to_thread(generator, "decrease", row.products, row.clients, warmup)
    await sinks.consumed(warmed)
    since = await now(sinks.inventory)
    with processes.measuring():
        async with backends.measuring():
            measured = await asyncio.to_thread(
                generator, "decrease", row.products, row.clients, seconds
            )
            generator_seconds = section.generator_seconds(seconds)
            load_ended = await now(sinks.inventory)
            orders, missing = await sinks.consumed(since)
    run = Run(
        measured,
        orders,
        _per_order(processes.seconds() | backends.seconds(), orders),
        1000 * generator_seconds / max(orders, 1),
        missing=missing,
    )
    run.lag_p50_ms, run.lag_p99_ms, run.all_in_s = await sinks.lags(since, load_ended)
    return run


async def _baseline_run(
    section: Section,
    db: asyncpg.Connection,
    backends: BackendCpu,
    row: MeshRow,
    seconds: float,
    warmup: float,
) -> Run:
    generator = section.generator(row.scenario)
    await asyncio.to_thread(generator, "decrease", row.products, row.clients, warmup)
    since = await now(db)
    # FastAPI's uvicorn goes in the API's column; pgbench's client is its generator.
    own = ProcessCpu(
        {} if row.scenario == PGBENCH else {"inventory_svc": section.fastapi.pid or -1}
    )
    with own.measuring():
        async with backends.measuring():
            measured = await asyncio.to_thread(
                generator, "decrease", row.products, row.clients, seconds
            )
            generator_seconds = section.generator_seconds(seconds)
    orders = await sold_since(db, since)
    used = own.seconds() | backends.seconds()
    return Run(
        measured, orders, _per_order(used, orders), 1000 * generator_seconds / max(orders, 1)
    )


def _per_order(used: dict[str, float], orders: int) -> dict[str, float]:
    return {label: 1000 * seconds / max(orders, 1) for label, seconds in used.items()}


def _describe(row: MeshRow, run: Run) -> str:
    lag = (
        f"  lag p50 {run.lag_p50_ms:.0f} / p99 {run.lag_p99_ms:.0f} ms,"
        f" all in +{run.all_in_s:.1f} s, missing {run.missing}"
        if row.scenario == MESH
        else ""
    )
    return (
        f"{row.products:6} c={row.clients:<3} {row.scenario:36} {run.measured.tps:7.0f} orders/s"
        f"  p50 {run.measured.p50_ms:6.2f} ms  p99 {run.measured.p99_ms:7.2f} ms"
        f"  CPU {run.total_ms:.2f} ms/order{lag}"
    )


# --- the report -------------------------------------------------------------------

TARGET_P50_X_FASTAPI = 1.2  # REST via Envoy's p50 at 1 client, at most this x FastAPI's
TARGET_X_PGBENCH = 0.8  # whole mesh, hot product, most clients: at least this x pgbench
TARGET_CPU_MS = 1.5  # whole mesh: CPU per order, every process


def _find(rows: list[MeshRow], scenario: str, products: str, clients: int) -> MeshRow | None:
    return next(
        (r for r in rows if (r.scenario, r.products, r.clients) == (scenario, products, clients)),
        None,
    )


def mesh_targets(rows: list[MeshRow]) -> list[tuple[str, str, bool]]:
    """(target, measured, met?) of issue 20."""
    checks = []
    loads = sorted({(r.products, r.clients) for r in rows})
    for products, clients in loads:
        mesh = _find(rows, MESH, products, clients)
        fastapi = _find(rows, FASTAPI, products, clients)
        if clients == 1 and mesh and fastapi:
            ratio = mesh.p50_ms / fastapi.p50_ms
            checks.append(
                (
                    f"REST via Envoy p50 ≤ {TARGET_P50_X_FASTAPI} x FastAPI's"
                    f" ({products}, 1 client)",
                    f"{ratio:.2f} x ({mesh.p50_ms:.2f} vs {fastapi.p50_ms:.2f} ms)",
                    ratio <= TARGET_P50_X_FASTAPI,
                )
            )
    for products in ("hot", "spread"):
        top = max((c for p, c in loads if p == products), default=0)
        mesh, pgbench = _find(rows, MESH, products, top), _find(rows, PGBENCH, products, top)
        if mesh is None or pgbench is None:
            continue
        missing = sum(run.missing for run in mesh.runs)
        if products == "hot":
            ratio = mesh.tps / pgbench.tps
            checks.append(
                (
                    f"whole mesh ≥ {TARGET_X_PGBENCH} x pgbench, every order at analytics and"
                    f" notify (hot, {top} clients)",
                    f"{ratio:.2f} x ({mesh.tps:.0f} vs {pgbench.tps:.0f} orders/s),"
                    f" {missing} not arrived",
                    ratio >= TARGET_X_PGBENCH and missing == 0,
                )
            )
        cpu = mesh.median(lambda run: run.total_ms)
        checks.append(
            (
                f"whole-mesh CPU per order ≤ {TARGET_CPU_MS} ms ({products}, {top} clients)",
                f"{cpu:.2f} ms",
                cpu <= TARGET_CPU_MS,
            )
        )
    return checks


def render_mesh(
    rows: list[MeshRow], machine: dict[str, str], command: str, seconds: float, rounds: int
) -> list[str]:
    pgbench = {(r.products, r.clients): r for r in rows if r.scenario == PGBENCH}
    fastapi = {(r.products, r.clients): r for r in rows if r.scenario == FASTAPI}
    nan = float("nan")

    def ratio(row: MeshRow, base: dict, value: Callable[[MeshRow], float]) -> float:
        other = base.get((row.products, row.clients))
        return value(row) / value(other) if other else nan

    def lag(row: MeshRow) -> str:
        if row.scenario != MESH:
            return "- | - | -"
        return (
            f"{row.median(lambda r: r.lag_p50_ms):.0f} / {row.median(lambda r: r.lag_p99_ms):.0f}"
            f" | {row.median(lambda r: r.all_in_s):.1f} | {sum(r.missing for r in row.runs)}"
        )

    return [
        SECTION,
        "",
        f"`{command}` (bench/mesh.py), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {rounds} round(s)"
        f" of a {seconds:g} s run per row after a warm-up, medians. Load average (1 / 5 / 15"
        f" min) before: {machine['load before']}, after: {machine.get('load after', '?')},"
        f" on {os.cpu_count()} cores shared with other engineers' test runs: read the ratios"
        " and the CPU per order, which neighbours move less than throughput.",
        "",
        "The whole mesh as `make up` runs it (Envoy, inventory_svc, the outbox relay,"
        " RabbitMQ, analytics_svc on the MongoDB wire server, notify_svc e-mailing to the"
        " log; defaults, LOG_LEVEL INFO; Envoy's per-client rate limit off) under REST"
        " DecreaseStock from wrk, beside FastAPI + asyncpg (the same sale statement, no"
        " events) and pgbench (the same statement; the database's per-order limit), both on"
        " a database of their own. x pgbench / x FastAPI: orders/s ÷ theirs at the same load"
        " and clients; p50 x FastAPI: p50 ÷ theirs. CPU per order: every process's CPU time"
        " (/proc) from the start of the load until every order of the run reached"
        " analytics (its document) and notify (its notification marked sent), ÷ the orders;"
        " PostgreSQL is the backends of the bench's databases, RabbitMQ the shared broker's"
        " process (other users count too: an upper bound). Event lag per order: the later"
        " of its two arrivals minus its commit; all in: seconds from the load's end to the"
        " last arrival; not arrived: orders that never reached both.",
        "",
        "With no orders at all the mesh's processes spent, in ms of CPU per second:"
        f" {machine.get('idle', '?')} (RabbitMQ: the whole shared broker).",
        "",
        "| load | clients | scenario | orders/s | p50 ms | p99 ms | x pgbench | x FastAPI"
        " | p50 x FastAPI | CPU ms / order | event lag p50 / p99 ms | all in after s"
        " | not arrived | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r.products} | {r.clients} | {r.scenario} | {r.tps:.0f} | {r.p50_ms:.2f}"
            f" | {r.median(lambda x: x.measured.p99_ms):.2f}"
            f" | {ratio(r, pgbench, lambda x: x.tps):.2f}"
            f" | {ratio(r, fastapi, lambda x: x.tps):.2f}"
            f" | {ratio(r, fastapi, lambda x: x.p50_ms):.2f}"
            f" | {r.median(lambda x: x.total_ms):.2f} | {lag(r)} | {r.errors} |"
            for r in rows
        ],
        "",
        "CPU per order by process, µs (medians per process; the baselines' own process"
        " under inventory_svc; pgbench's client is its generator):",
        "",
        "| load | clients | scenario | " + " | ".join(COLUMNS) + " | total | generator |",
        "|---|---:|---|" + "---:|" * (len(COLUMNS) + 2),
        *[
            f"| {r.products} | {r.clients} | {r.scenario} | "
            + " | ".join(_cell(r, column) for column in COLUMNS)
            + f" | {1000 * r.median(lambda x: x.total_ms):.0f}"
            f" | {1000 * r.median(lambda x: x.generator_ms):.0f} |"
            for r in rows
        ],
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[
            f"| {name} | {measured} | {'met' if ok else '**missed**'} |"
            for name, measured, ok in mesh_targets(rows)
        ],
        "",
    ]


def _cell(row: MeshRow, column: str) -> str:
    if not any(column in run.cpu_ms for run in row.runs):
        return "-"
    return f"{1000 * row.median(lambda run: run.cpu_ms.get(column, 0.0)):.0f}"
