"""Replica rows of `make bench` (``python -m bench.run --replicas-only``): the whole
mesh with 1 and then 2 processes of every service (and as many outbox relays),
REST DecreaseStock via Envoy from 32 clients, beside the FastAPI baseline and
pgbench on the same database, each with its CPU cost per order:

- mesh CPU per order: CPU time of every mesh process (Envoy, the inventory APIs,
  the relays, analytics and notify with their consumers), read from /proc, from
  the start of the load until every order it sold reached analytics and notify
  (bench/sinks.py's ``Sinks.consumed``), ÷ orders sold;
- PostgreSQL CPU per order: every ``postgres`` process on the machine over the
  same span ÷ orders (machine-wide: on a shared machine it includes other
  users' queries, so it is an upper bound);
- FastAPI's row: the uvicorn process; pgbench's: the pgbench client.

The sum is what one order costs the machine, the figure that says what a bigger
machine would give (orders/s ≈ cores ÷ CPU seconds per order).
"""

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from bench.harness import Bench, Measurement
from bench.procstat import cpu_seconds
from bench.sinks import now, open_sinks
from devtools import sandbox
from devtools.processes import ManagedProcess

SECTION = "## Replicas and CPU per order"
CLIENTS = 32
POOL_CONNECTIONS = 10  # each API's pool with one replica (DB_POOL_SIZE's default)


@dataclass
class ReplicaRow:
    scenario: str
    tps: float
    p50_ms: float
    p99_ms: float
    errors: int
    orders: int
    own_cpu_ms: float  # per order: the mesh's processes (or the baseline's own)
    postgres_cpu_ms: float  # per order: every postgres process on the machine


def mesh_groups(mesh: sandbox.Mesh) -> set[int]:
    return {p.pid for p in mesh.processes.values() if p.pid is not None}


async def measure_replicas(
    work: Path,
    env: dict[str, str],
    db_url: str,
    edge: dict,
    seconds: float,
    warmup: float,
    fastapi: ManagedProcess,
    fastapi_port: int,
) -> list[ReplicaRow]:
    """The rows, in order: 1 replica, 2 replicas, FastAPI, pgbench (``fastapi``
    started by the caller, the mesh ones here)."""
    rows = []
    for replicas in (1, 2):
        # The same PostgreSQL connections in total, split over the replicas: the
        # database's capacity stays the same, and a shared server (100 connections)
        # is not exhausted.
        pools = {"DB_POOL_SIZE": str(POOL_CONNECTIONS // replicas)}
        mesh = sandbox.start_mesh(
            work / f"replicas-{replicas}", {**env, **pools}, edge=edge, replicas=replicas
        )
        sinks = await open_sinks(env)
        try:
            bench = Bench(work, db_url, mesh, fastapi_port)
            load = bench.wrk(mesh.http_url, bench.token)
            warmed = await now(sinks.inventory)
            await asyncio.to_thread(load, "decrease", "spread", CLIENTS, warmup)
            await sinks.consumed(warmed)
            since = await now(sinks.inventory)
            groups = mesh_groups(mesh)
            own, postgres = cpu_seconds(groups), cpu_seconds(command="postgres")
            measured = await asyncio.to_thread(load, "decrease", "spread", CLIENTS, seconds)
            _, missing = await sinks.consumed(since)
            if missing:
                raise RuntimeError(f"{missing} orders did not reach analytics and notify")
            own = cpu_seconds(groups) - own
            postgres = cpu_seconds(command="postgres") - postgres
            label = f"REST via Envoy, {replicas} replica{'s' if replicas > 1 else ''}"
            rows.append(_row(f"{label} (whole mesh)", measured, seconds, own, postgres))
        finally:
            await sinks.close()
            mesh.stop()
    # (the last mesh's bench: its generators need no running mesh)
    baselines = {
        "FastAPI + asyncpg (uvicorn, no events)": (
            bench.wrk(f"http://127.0.0.1:{fastapi_port}"),
            lambda: cpu_seconds({fastapi.pid or -1}),
        ),
        # pgbench has exited when its run ends: its CPU comes from its rusage.
        "pgbench (same SQL; its client)": (bench.pgbench, lambda: 0.0),
    }
    for label, (load, own_cpu) in baselines.items():
        await asyncio.to_thread(load, "decrease", "spread", CLIENTS, warmup)
        own, postgres = own_cpu(), cpu_seconds(command="postgres")
        measured = await asyncio.to_thread(load, "decrease", "spread", CLIENTS, seconds)
        own = own_cpu() - own
        if label.startswith("pgbench"):
            own = bench.cpu_share * seconds * (os.cpu_count() or 1)
        postgres = cpu_seconds(command="postgres") - postgres
        rows.append(_row(label, measured, seconds, own, postgres))
    return rows


def _row(
    label: str, measured: Measurement, seconds: float, own: float, postgres: float
) -> ReplicaRow:
    orders = max(1, round(measured.tps * seconds))
    return ReplicaRow(
        label,
        measured.tps,
        measured.p50_ms,
        measured.p99_ms,
        measured.errors,
        orders,
        own / orders * 1000,
        postgres / orders * 1000,
    )


def render_replicas(rows: list[ReplicaRow], seconds: float, cores: int) -> list[str]:
    one = next(r for r in rows if "1 replica" in r.scenario)
    two = next(r for r in rows if "2 replicas" in r.scenario)
    return [
        SECTION,
        "",
        f"`python -m bench.run --replicas-only`: REST DecreaseStock via Envoy, {CLIENTS}"
        f" clients, `spread` products, one {seconds:g} s run each after a warm-up. The mesh"
        " rows run the whole mesh (Envoy, inventory APIs, outbox relays, analytics and"
        " notify consuming every event) with 1 and 2 processes of each (each replica's"
        f" PostgreSQL pool {POOL_CONNECTIONS} ÷ replicas: the same connections in total)."
        " CPU per order: the"
        " processes' CPU time (/proc) from the start of the load until every order it"
        " sold reached analytics and notify, ÷ orders. PostgreSQL's is every postgres"
        " process on the machine (an upper bound here). **This machine is shared with"
        f" other engineers' test runs and has {cores} cores: absolute figures are noisy,"
        " and 2 replicas cannot show more throughput than the cores allow.**",
        "",
        "| scenario | TPS | p50 ms | p99 ms | errors | orders | own CPU ms/order"
        " | PostgreSQL CPU ms/order |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r.scenario} | {r.tps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors}"
            f" | {r.orders} | {r.own_cpu_ms:.2f} | {r.postgres_cpu_ms:.2f} |"
            for r in rows
        ],
        "",
        f"- 2 replicas ÷ 1 replica: throughput {two.tps / one.tps:.2f} x,"
        f" p50 {two.p50_ms / one.p50_ms:.2f} x, mesh CPU per order"
        f" {two.own_cpu_ms / one.own_cpu_ms:.2f} x",
        f"- what a bigger machine would give (1 replica, cores ÷ CPU per order, mesh +"
        f" PostgreSQL): about {1000 / (one.own_cpu_ms + one.postgres_cpu_ms):.0f} orders/s"
        " per core",
        "- the relay as its own process, the API's p50 at 1 client before and after:"
        ' bench/findings.md ("The outbox relay as its own process")',
        "",
    ]
