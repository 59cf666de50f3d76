"""BENCHMARKS.md: the table, the targets, the pipeline and the hand-written findings."""

import argparse
import os
from pathlib import Path

from bench.connections import DEFAULT_MAX_CONNECTIONS, SAMPLE_SECONDS
from bench.edge import EdgeResult, render_edge
from bench.harness import load_average
from bench.pipeline import PipelineResult

FINDINGS = Path(__file__).with_name("findings.md")
HOT_SECTION = "## Hot product: sale batching"
# The goals for the hot product (REST via Envoy): x pgbench at a client count,
# x the FastAPI baseline at 32 clients.
HOT_GOALS = {32: 1.3, 96: 1.5}


def _row(rows: list, scenario: str, rpc: str, products: str, clients: int):  # noqa: ANN202
    return next(
        (
            r
            for r in rows
            if (r.scenario, r.rpc, r.products, r.clients) == (scenario, rpc, products, clients)
        ),
        None,
    )


def hot_targets(rows: list) -> list[tuple[str, str, bool]]:
    """(target, measured, met?) for the hot product (issue 12)."""
    checks = []
    for clients, goal in HOT_GOALS.items():
        row = _row(rows, "REST via Envoy", "decrease", "hot", clients)
        if row:
            checks.append(
                (
                    f"REST via Envoy hot ≥ {goal} x pgbench ({clients} clients)",
                    f"{row.ratio:.2f} x",
                    row.ratio >= goal,
                )
            )
    rest_row = _row(rows, "REST via Envoy", "decrease", "hot", 32)
    fastapi_row = _row(rows, "FastAPI + asyncpg", "decrease", "hot", 32)
    if rest_row and fastapi_row:
        ratio = rest_row.tps / fastapi_row.tps
        checks.append(
            (
                "REST via Envoy hot ≥ 1.0 x FastAPI + asyncpg (32 clients)",
                f"{ratio:.2f} x",
                ratio >= 1.0,
            )
        )
    return checks


def render_hot(rows: list, args: argparse.Namespace) -> list[str]:
    """The hot-product section: rows with what each commit carried and CPU per sale."""
    hot = [r for r in rows if r.rpc == "decrease" and r.products == "hot"]
    fastapi = {r.clients: r.tps for r in hot if r.scenario.startswith("FastAPI")}
    load_now = load_average()
    return [
        HOT_SECTION,
        "",
        f"`{args.command}`, {args.started:%Y-%m-%d %H:%M} UTC; load average (1 / 5 / 15 min)"
        f" {args.load_at_start} at the start, {load_now} at the end, on {os.cpu_count()}"
        " cores (other work on a shared machine counts too).",
        "",
        f"Every order on one product, closed loop ({args.repeats} run(s) of {args.seconds:g} s"
        f" after {args.warmup:g} s of warm-up, medians). Orders of one product arriving while"
        " a write for it is in flight are sold together in one transaction"
        " (inventory_svc/batching.py); pgbench and the FastAPI baseline run one transaction"
        " per order. Sales per transaction and CPU per sale count every sale committed"
        " during the row (warm-up included), from the sales table (a transaction's sales"
        ' share their sold_at) and /proc; "API" is inventory_svc\'s process, in the'
        " FastAPI rows the baseline's. `pgbench, relay stopped`: pgbench"
        " with the outbox relay's process stopped, its outbox rows left to nobody."
        ' "PG conns": the most PostgreSQL connections the bench held at once during the'
        f" row (pg_stat_activity sampled every {SAMPLE_SECONDS * 1000:.0f} ms: pgbench's or the"
        " generator's"
        " services', the relay's, the bench's own; bench/connections.py): at most"
        f" {DEFAULT_MAX_CONNECTIONS} fits PostgreSQL's default max_connections."
        ' "machine busy": the share of all cores not idle during the row (/proc/stat),'
        " whoever used them: on a shared machine, other work too.",
        "",
        "| scenario | clients | TPS | p50 ms | p99 ms | x pgbench | x FastAPI"
        " | sales / txn: mean, p90 (max) | API µs CPU / sale | relay µs CPU / sale"
        " | Envoy µs CPU / sale | machine busy | PG conns | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r.scenario} | {r.clients} | {r.tps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f}"
            f" | {r.ratio:.2f} | {r.tps / fastapi.get(r.clients, float('nan')):.2f}"
            f" | {r.orders / r.transactions if r.transactions else float('nan'):.1f},"
            f" {r.p90_batch} ({r.max_batch}) | {r.service_cpu_us:.0f} | {r.relay_cpu_us:.0f}"
            f" | {r.envoy_cpu_us:.0f} | {r.machine_busy:.0%} | {r.pg_peak or '-'}"
            f" | {r.note or r.errors} |"
            for r in hot
        ],
        "",
        "What the bench's busy PostgreSQL backends were waiting for (wait events, share of"
        " the samples above; `running`: on a CPU or runnable; `no query running`: none of the"
        " bench's connections had a statement in progress, the database waited for its"
        " clients): `Lock:transactionid` is the hot row's lock queue, `IO:WALSync` a"
        " commit's flush to disk.",
        "",
        *[f"- {r.scenario}, {r.clients} clients: {r.pg_waits}" for r in hot if r.pg_waits],
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[
            f"| {name} | {measured} | {'met' if ok else '**missed**'} |"
            for name, measured, ok in hot_targets(rows)
        ],
        "",
    ]


def targets(rows: list, pipeline: PipelineResult) -> list[tuple[str, str, bool]]:
    """(target, what was measured, met?) for the issue's goals."""
    checks: list[tuple[str, str, bool]] = hot_targets(rows)
    for products in ("hot", "spread"):
        top = max((r.clients for r in rows if r.products == products), default=0)
        for scenario, goal in (("gRPC direct", 0.75), ("REST via Envoy", 0.6)):
            row = _row(rows, scenario, "decrease", products, top)
            if row:
                checks.append(
                    (
                        f"{scenario} DecreaseStock ≥ {goal} x pgbench ({products}, {top} clients)",
                        f"{row.ratio:.2f} x",
                        row.ratio >= goal,
                    )
                )
    for clients in sorted({r.clients for r in rows}):
        grpc_row = _row(rows, "gRPC direct", "decrease", "spread", clients)
        rest_row = _row(rows, "REST via Envoy", "decrease", "spread", clients)
        if grpc_row and rest_row:
            added = rest_row.p50_ms / grpc_row.p50_ms - 1
            checks.append(
                (
                    f"Envoy transcoding adds ≤ 20 % to p50 over direct gRPC ({clients} clients)",
                    f"{added:+.0%} ({rest_row.p50_ms:.2f} vs {grpc_row.p50_ms:.2f} ms)",
                    added <= 0.20,
                )
            )
    for products in ("hot", "spread"):
        top = max((r.clients for r in rows if r.products == products), default=0)
        rest_row = _row(rows, "REST via Envoy", "decrease", products, top)
        fastapi_row = _row(rows, "FastAPI + asyncpg", "decrease", products, top)
        if rest_row and fastapi_row:
            ratio = rest_row.tps / fastapi_row.tps
            checks.append(
                (
                    f"REST via Envoy ≥ 1.0 x FastAPI + asyncpg ({products}, {top} clients)",
                    f"{ratio:.2f} x",
                    ratio >= 1.0,
                )
            )
    bounded = pipeline.final_queue_depth == 0 and pipeline.recorded == pipeline.sent
    checks.append(
        (
            f"event lag p99 ≤ 250 ms at {pipeline.offered_rate:.0f} orders/s, bounded queues",
            f"p99 {pipeline.lag_p99_ms:.0f} ms, max depth {pipeline.max_queue_depth},"
            f" drained: {'yes' if bounded else 'no'}",
            pipeline.lag_p99_ms <= 250 and bounded,
        )
    )
    return checks


def render(
    rows: list,
    pipeline: PipelineResult,
    args: argparse.Namespace,
    machine: dict,
    edge: EdgeResult | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench`{' --smoke' if args.smoke else ''} on {machine['date']}"
        f" — {args.repeats} measured run(s) of {args.seconds:g} s per row after a"
        f" {args.warmup:g} s warm-up; medians. Everything shares one machine (load"
        " generators included), so absolute numbers are noisy: track the ratios, which"
        " were measured side by side in the same run.",
        "",
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in machine.items() if key != "date"],
        "",
        "## Throughput and latency",
        "",
        "Closed loop: each client sends its next request when the previous one returned."
        " `hot` = every order on one product (row-lock contention), `spread` = over 1000"
        ' products. Every DecreaseStock has a unique order id. "ratio to pgbench" divides'
        " by the pgbench row of the same operation, products and clients. Generators:"
        " pgbench (C), `bench/grpc_load.py` (grpcio, up to 2 processes), wrk with"
        ' `bench/wrk/*.lua`; "generator CPU" is the share of both cores the generator'
        " itself used.",
        "",
        "| scenario | rpc | products | clients | TPS | p50 ms | p99 ms | ratio to pgbench"
        " | generator CPU | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r.scenario} | {r.rpc} | {r.products} | {r.clients} | {r.tps:.0f} | {r.p50_ms:.2f}"
            f" | {r.p99_ms:.2f} | {r.ratio:.2f} | {r.generator_cpu:.0%} | {r.errors} |"
            for r in rows
        ],
        "",
        "## Event pipeline",
        "",
        f"Open loop at {pipeline.offered_rate:.0f} orders/s for {pipeline.seconds:g} s (gRPC"
        " DecreaseStock), outbox relay → RabbitMQ → analytics_svc (MongoDB wire server) and"
        " notify_svc (PostgreSQL, e-mail to the log). Lag = sales_events.recorded_at -"
        " occurred_at (commit).",
        "",
        f"- before it: the relay left {args.dropped_backlog} throughput-run events unpublished"
        " after a minute's grace (dropped so this run starts empty)",
        f"- sent {pipeline.sent} (failed {pipeline.failed}),"
        f" achieved {pipeline.achieved_rate:.0f} orders/s; recorded {pipeline.recorded}",
        f"- lag p50 {pipeline.lag_p50_ms:.0f} ms, p99 {pipeline.lag_p99_ms:.0f} ms,"
        f" max {pipeline.lag_max_ms:.0f} ms",
        f"- subscriber queue depth (both queues): max {pipeline.max_queue_depth},"
        f" at the end {pipeline.final_queue_depth};"
        f" outbox backlog max {pipeline.max_outbox_backlog}",
        "- max depth per queue: "
        + ", ".join(
            f"{queue} {max(sample[1][i] for sample in pipeline.depth_samples)}"
            for i, queue in enumerate(pipeline.queues)
        ),
        f"- depth over time (s: {' / '.join(pipeline.queues)} / outbox backlog): "
        + ", ".join(
            f"{t:.0f}: {'/'.join(map(str, q))}/{o}"
            for t, q, o in pipeline.depth_samples[:: max(1, len(pipeline.depth_samples) // 20)]
        ),
        "",
        *(render_hot(rows, args) if rows else []),
        *(render_edge(edge) if edge else []),
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *[
            f"| {name} | {measured} | {'met' if ok else '**missed**'} |"
            for name, measured, ok in targets(rows, pipeline)
        ],
        "",
    ]
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().strip(), ""]
    return "\n".join(lines)


def splice(document: str, section: list[str]) -> str:
    """``document`` with the section headed ``section[0]`` (edge, replicas) replaced,
    or added before ## Targets."""
    text = "\n".join(section).rstrip("\n") + "\n"  # one blank line before the next
    heading = section[0]
    if heading in document:
        start = document.index(heading)
        end = document.find("\n## ", start + len(heading))
        return document[:start] + text + ("\n" + document[end + 1 :] if end != -1 else "")
    anchor = document.find("## Targets")
    if anchor == -1:
        return document.rstrip("\n") + "\n\n" + text
    return document[:anchor].rstrip("\n") + "\n\n" + text + "\n" + document[anchor:]
