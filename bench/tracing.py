"""What tracing costs (``python -m bench.run --only tracing``): REST DecreaseStock via
Envoy (wrk, as the REST rows) from 32 clients, `spread` products, with tracing off,
on with 10 % of new traces sampled (parentbased_traceidratio 0.1) and on with every
trace sampled (parentbased_always_on), exporting to local OTLP/gRPC receivers
(tests/support/otlp.py, counting spans only).

Each mode is a mesh of its own (inventory_svc, its outbox relay and Envoy, its own
database), started with that mode's OTEL_* variables, so everything that reads them
pays its share: Envoy's tracer and, once they are instrumented, the services'
exporters. The three modes are loaded at the same time, each by its own 32 clients,
round after round: on a machine shared with other work, load drifts within seconds,
and modes measured one after the other compare different machines. Run side by side
they share the same cores in the same seconds, and the one that costs more CPU per
call serves fewer calls; the report shows each round's ratio to "off" (median and
range) and the CPU each mode's processes spent per order.
"""

import asyncio
import os
import statistics
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import load_average
from bench.procstat import cpu_seconds
from bench.replicas import mesh_groups
from devtools import sandbox
from tests.support.otlp import OtlpReceiver

SECTION = "## Tracing cost"
CLIENTS = 32
# Mode → the OTEL_* variables of its mesh (an endpoint is added for traced modes).
MODES: dict[str, dict[str, str] | None] = {
    "off": None,
    "on, 10 % sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "on, 100 % sampled": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
}


@dataclass
class TracingRow:
    mode: str
    tps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_ms_per_order: list[float] = field(default_factory=list)  # the mode's mesh processes
    envoy_cpu_us_per_order: list[float] = field(default_factory=list)  # its Envoy alone
    # Per round: this mode's throughput ÷ "off"'s, measured at the same time.
    ratios: list[float] = field(default_factory=list)
    errors: int = 0
    orders: int = 0  # in the measured runs
    calls: int = 0  # every call Envoy answered, warm-ups included
    spans: int = 0  # received by this mode's OTLP receiver

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def add(
        self, run: Any, seconds: float, mesh_cpu: float, envoy_cpu: float, off_tps: float
    ) -> None:
        orders = max(round(run.tps * seconds), 1)
        self.tps.append(run.tps)
        self.ratios.append(run.tps / off_tps)
        self.p50_ms.append(run.p50_ms)
        self.p99_ms.append(run.p99_ms)
        self.cpu_ms_per_order.append(1000 * mesh_cpu / orders)
        self.envoy_cpu_us_per_order.append(1e6 * envoy_cpu / orders)
        self.errors += run.errors
        self.orders += orders

    def last(self) -> str:
        return (
            f"{self.mode:18} {self.tps[-1]:7.0f} tps ({self.ratios[-1]:.2f} x off)"
            f"  p50 {self.p50_ms[-1]:6.2f} ms  p99 {self.p99_ms[-1]:7.2f} ms"
            f"  mesh CPU {self.cpu_ms_per_order[-1]:.2f} ms/order"
            f"  Envoy CPU {self.envoy_cpu_us_per_order[-1]:.0f} µs/order"
        )


def _calls_served(mesh: sandbox.Mesh) -> int:
    """Every call this mesh's Envoy answered (warm-ups included: spans come from them too)."""
    stats = f"http://127.0.0.1:{mesh.plan.admin_port}/stats?filter=^http.ingress.downstream_rq_completed$"
    with urllib.request.urlopen(stats, timeout=10) as reply:
        return int(reply.read().decode().split(":")[1])


async def measure_tracing(
    make_generator: Callable[[sandbox.Mesh], Callable[..., Any]],
    seed: Callable[[str], Awaitable[None]],
    purge: Callable[[], Awaitable[None]],
    pg_server_url: str,
    work: Path,
    env: dict[str, str],
    edge: dict,
    seconds: float,
    warmup: float,
    rounds: int,
) -> tuple[list[TracingRow], dict[str, str]]:
    """Rows per mode and what the machine was doing (load average before and after).

    ``make_generator(mesh)``: the wrk generator for REST calls to that mesh's Envoy;
    ``seed(db_url)``: the bench's products in a migrated database; ``purge()``: empty
    the event queues (no consumers run here).
    """
    receivers = {mode: OtlpReceiver(keep=False).start() for mode, otel in MODES.items() if otel}
    databases: list[str] = []
    meshes: dict[str, sandbox.Mesh] = {}
    rows = {mode: TracingRow(mode) for mode in MODES}
    machine = {"load before": load_average()}
    try:
        for mode, otel in MODES.items():
            databases.append(await sandbox.create_database(pg_server_url, "polyglot_bench_tracing"))
            mode_env = {**env, "INVENTORY_DATABASE_URL": databases[-1]}
            if otel:
                mode_env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": receivers[mode].endpoint, **otel}
            slug = mode.replace(" ", "").replace(",", "-").replace("%", "pct")
            meshes[mode] = await asyncio.to_thread(
                sandbox.start_mesh, work / f"tracing-{slug}", mode_env, ["inventory_svc"], edge
            )
            await seed(databases[-1])
        generators = {mode: make_generator(mesh) for mode, mesh in meshes.items()}
        for turn in range(rounds):
            await _all_at_once(generators, warmup)
            cpu_before = {mode: _cpu(mesh) for mode, mesh in meshes.items()}
            runs = await _all_at_once(generators, seconds)
            for mode, run in runs.items():
                mesh_cpu, envoy_cpu = (
                    after - before
                    for after, before in zip(_cpu(meshes[mode]), cpu_before[mode], strict=True)
                )
                rows[mode].add(run, seconds, mesh_cpu, envoy_cpu, runs["off"].tps)
                print(f"tracing round {turn + 1} {rows[mode].last()}", flush=True)
            await purge()
        machine["load after"] = load_average()
        for mode, mesh in meshes.items():
            rows[mode].calls = _calls_served(mesh)
    finally:
        for mesh in meshes.values():
            mesh.stop()  # Envoy flushes what it still holds on the way out
        for mode, receiver in receivers.items():
            rows[mode].spans = receiver.span_count
            receiver.stop()
        for url in databases:
            await sandbox.drop_database(url)
    return list(rows.values()), machine


async def _all_at_once(generators: dict[str, Callable[..., Any]], seconds: float) -> dict:
    """Every mode's load at the same time, each with its own clients: they share
    whatever else the machine is doing in those seconds."""
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(generate, "decrease", "spread", CLIENTS, seconds)
            for generate in generators.values()
        )
    )
    return dict(zip(generators, runs, strict=True))


def _cpu(mesh: sandbox.Mesh) -> tuple[float, float]:
    """CPU seconds so far: the mesh's processes, and its Envoy alone."""
    return cpu_seconds(mesh_groups(mesh)), cpu_seconds({mesh.processes["envoy"].pid or 0})


def render_tracing(
    rows: list[TracingRow], machine: dict[str, str], seconds: float, rounds: int
) -> list[str]:
    lines = [
        SECTION,
        "",
        f"`python -m bench.run --only tracing` (bench/tracing.py): REST DecreaseStock via"
        f" Envoy, {CLIENTS} clients (wrk) per mode, `spread` products. The three modes are"
        " three meshes (inventory_svc, outbox relay, Envoy, each with its own database)"
        " started with that mode's OTEL_* variables, exporting to a local OTLP/gRPC"
        f" receiver, loaded **at the same time**: {rounds} round(s) of a {seconds:g} s run"
        " after a warm-up. Ratio to off: each round's throughput ÷ off's in the same"
        " seconds (median, range); other columns: medians. Mesh CPU: the mode's"
        " processes per order; Envoy CPU: its Envoy alone. Load average (1 / 5 / 15 min)"
        f" before: {machine['load before']}, after: {machine.get('load after', '?')}."
        f" **{os.cpu_count()} cores shared with other engineers' test runs: absolute"
        " figures are noisy (and three meshes share them here); read the ratios.**",
        "",
        "| tracing | TPS | ratio to off (range) | p50 ms | p99 ms | mesh CPU ms/order"
        " | Envoy CPU µs/order | errors | spans received | spans per call |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.mode} | {row.median(row.tps):.0f} | {row.median(row.ratios):.2f}"
            f" ({min(row.ratios):.2f} to {max(row.ratios):.2f})"
            f" | {row.median(row.p50_ms):.2f} | {row.median(row.p99_ms):.2f}"
            f" | {row.median(row.cpu_ms_per_order):.2f}"
            f" | {row.median(row.envoy_cpu_us_per_order):.0f} | {row.errors} | {row.spans}"
            f" | {row.spans / max(row.calls, 1):.2f} |"
        )
    return [*lines, ""]
