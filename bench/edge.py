"""The edge under abuse: how fast Envoy refuses what it must refuse, and what that
costs everybody else. Part of `make bench` (and, tiny, of `make bench-smoke`);
``python -m bench.run --edge-only`` measures just this and rewrites the section
in BENCHMARKS.md.

- refusal latency: a 10 MB REST body and a 100 KB native gRPC message, from the
  first byte sent to the 413 / INVALID_ARGUMENT;
- a normal call (REST GetStock) alone, then while oversized bodies keep arriving
  on other connections: the ratio of the two latencies;
- overload: many more closed-loop callers than an Envoy with small circuit
  breakers admits; latency of the refused (503) and of the served calls, and the
  first call after the load stops;
- attacks (``ATTACKS``, one function each): an honest customer's orders, alone and
  beside each attack, on an Envoy with the production profile's quotas: its p50,
  p99 and error rate as ratios to alone, and how much of the attack was refused.
"""

import asyncio
import functools
import json
import multiprocessing
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.replicas import TICKS, proc_stat
from devtools import sandbox
from devtools.plan import MeshPlan
from devtools.tokens import JWKS
from mesh.edge.knobs import EdgeKnobs
from mesh.edge.settings import EdgeAuth
from mesh.topology import ROOT
from tests.support.flood import Counters, hold_connections, raise_open_files
from tests.support.raw_grpc import EDGE_REFUSED, GET_STOCK, h2_call

REST_BODY = 10_000_000
GRPC_MESSAGE = 100_000
DECREASE = "/polyglot.inventory.v1.InventoryService/DecreaseStock"
# The overload Envoy: at most this many calls in flight to inventory_svc (and as
# many waiting for a connection); everything beyond is refused with a 503.
OVERLOAD_EDGE = {"max_requests_per_backend": 8, "max_pending_per_backend": 8}


@dataclass
class EdgeResult:
    rest_refusal_ms: list[float] = field(default_factory=list)
    grpc_refusal_ms: list[float] = field(default_factory=list)
    alone_ms: list[float] = field(default_factory=list)
    beside_flood_ms: list[float] = field(default_factory=list)
    flood_refusals: int = 0
    callers: int = 0
    seconds: float = 0.0
    admitted: int = OVERLOAD_EDGE["max_requests_per_backend"]
    served_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    other_statuses: dict[int, int] = field(default_factory=dict)
    wrk_requests: int = 0
    wrk_non_2xx: int = 0
    wrk_errors: int = 0
    first_after_ms: float = float("nan")
    first_after_status: int = 0
    attacks: list["AttackRow"] = field(default_factory=list)
    # Envoy's CPU per native gRPC call (µs), with and without the gRPC input check.
    check_cpu_us: dict[bool, list[float]] = field(default_factory=dict)


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@functools.cache
def oversized_body(size: int = REST_BODY) -> bytes:
    return json.dumps({"product_id": 1, "quantity": 1, "order_id": "x" * size}).encode()


def refuse_rest(port: int, token: str, size: int = REST_BODY) -> tuple[int, float]:
    """POST an oversized JSON body (with a valid token: the size is the reason to
    refuse it), reading while writing; (status, seconds until the status line)."""
    body = oversized_body(size)
    head = (
        "POST /inventory/decrease HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {token}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.setblocking(False)  # never stuck in a send once the answer is there
        sent = 0
        while sent < len(body):
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(body[sent : sent + 65536])
                except BlockingIOError:
                    continue
                except OSError:
                    break
        sock.setblocking(True)
        first = sock.recv(64)
        elapsed = time.perf_counter() - started
    return int(first.split()[1]), elapsed


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def oversized_decrease(size: int = GRPC_MESSAGE) -> bytes:
    """DecreaseStockRequest{product_id: 1, quantity: 1, order_id: 'x' * size}, encoded."""
    return b"\x08\x01\x10\x01\x1a" + _varint(size) + b"x" * size


def _flood(port: int, token: str, stop: Any, refused: Any) -> None:
    """One flooding process: oversized bodies until ``stop``; counts the 413s."""
    while not stop.is_set():
        status, _ = refuse_rest(port, token)
        if status == 413:
            with refused.get_lock():
                refused.value += 1


async def refuse_grpc(target: str, count: int, metadata: dict[str, str]) -> list[float]:
    message = oversized_decrease()
    timings = []
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(DECREASE)
        for _ in range(count):
            started = time.perf_counter()
            try:
                await call(message, timeout=30, metadata=tuple(metadata.items()))
                raise RuntimeError("an oversized message was accepted")
            except grpc.aio.AioRpcError as error:
                if error.code() is not grpc.StatusCode.INVALID_ARGUMENT:
                    raise
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def normal_calls(base_url: str, product: int, count: int) -> list[float]:
    timings = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            reply = await client.get(f"/inventory/{product}")
            timings.append((time.perf_counter() - started) * 1000)
            reply.raise_for_status()
    return timings


async def overload(
    base_url: str, product: int, callers: int, seconds: float, result: EdgeResult
) -> None:
    """wrk (C, closed loop, ``callers`` connections) overloads the edge; meanwhile a
    probe sends one call after another and times each, as a client arriving during
    the overload sees it (timed in a lone client, so not queued behind wrk's)."""
    wrk = await asyncio.create_subprocess_exec(
        *[
            "wrk",
            "-t",
            "2",
            "-c",
            str(callers),
            "-d",
            f"{seconds:g}s",
            "--timeout",
            "30s",
            "-s",
            str(ROOT / "bench" / "wrk" / "get.lua"),
            base_url,
            "--",
            "edge",
            str(product),
            "1",
        ],
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await asyncio.sleep(min(0.5, seconds / 4))  # let wrk fill the edge first
        while wrk.returncode is None:
            started = time.perf_counter()
            reply = await client.get(f"/inventory/{product}")
            elapsed = (time.perf_counter() - started) * 1000
            if reply.status_code == 200:
                result.served_ms.append(elapsed)
            elif reply.status_code == 503 and reply.headers.get("retry-after"):
                result.refused_ms.append(elapsed)
            else:
                result.other_statuses[reply.status_code] = (
                    result.other_statuses.get(reply.status_code, 0) + 1
                )
        out, _ = await wrk.communicate()
        summary = json.loads(out.decode().strip().splitlines()[-1])
        result.wrk_requests = summary["requests"]
        result.wrk_non_2xx = summary["non_2xx"]
        result.wrk_errors = summary["socket_errors"]
        started = time.perf_counter()
        reply = await client.get(f"/inventory/{product}")
        result.first_after_ms = (time.perf_counter() - started) * 1000
        result.first_after_status = reply.status_code


# --- attacks beside an honest customer ---------------------------------------------------
#
# An attack is a function that runs in ATTACK_PROCESSES processes of its own until
# ``stop`` is set, counting its calls and how many were refused (a quota: 429; the
# others say what in ATTACKS): it competes with the honest customer for Envoy and
# the machine, not for this interpreter. To add one, write it and list it in ATTACKS.

ATTACK_PROCESSES = 2
# The honest customer's pace: within one subject's production quota.
HONEST_ORDERS_PER_SECOND = 20.0
HONEST_SUBJECT, GREEDY_SUBJECT = "honest-shop", "greedy-shop"


@dataclass(frozen=True)
class Target:
    """What an attack process gets (picklable): Envoy's port, a product, a token."""

    port: int
    product: int
    token: str


@dataclass(frozen=True)
class Tally:
    """One attack's counters, shared by its processes."""

    calls: Any = field(default_factory=lambda: multiprocessing.Value("i", 0))
    refused: Any = field(default_factory=lambda: multiprocessing.Value("i", 0))

    def count(self, status: int) -> None:
        with self.calls.get_lock():
            self.calls.value += 1
        if status == 429:
            with self.refused.get_lock():
                self.refused.value += 1


def _decrease(product: int) -> dict:
    return {"product_id": product, "quantity": 1, "order_id": f"ORD-{time.time_ns():x}"}


def flood_subject(target: Target, stop: Any, tally: Tally) -> None:
    """Orders in a closed loop with another customer's token, from the honest one's
    address: that subject's quota throttles it, not the address."""
    headers = {"authorization": f"Bearer {target.token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{target.port}", headers=headers) as client:
        while not stop.is_set():
            tally.count(
                client.post("/inventory/decrease", json=_decrease(target.product)).status_code
            )


def flood_anonymous(target: Target, stop: Any, tally: Tally) -> None:
    """GetStock without a token in a closed loop, from the honest customer's address:
    the address's quota for calls without a token throttles it, nobody with one."""
    with httpx.Client(base_url=f"http://127.0.0.1:{target.port}") as client:
        while not stop.is_set():
            tally.count(client.get(f"/inventory/{target.product}").status_code)


# The idle-connection flood: 50 more than the edge's 10 000 connections.
IDLE_FLOOD = 10_050


def flood_idle_connections(target: Target, stop: Any, tally: Tally) -> None:
    """Its share of IDLE_FLOOD silent connections from another address (127.0.0.2),
    each reopened as soon as Envoy closes it; counts the connections opened."""
    counters = Counters()
    hold_connections(target.port, IDLE_FLOOD // ATTACK_PROCESSES, b"", stop, counters)
    with tally.calls.get_lock():
        tally.calls.value += counters.opened.value


def flood_malformed_grpc(target: Target, stop: Any, tally: Tally) -> None:
    """Every kind of malformed native gRPC call the edge refuses (EDGE_REFUSED), in
    turn, in a closed loop, each on a connection of its own; a refusal is counted
    as refused (it is not a 429: the edge answers it at once, no quota spent)."""
    kinds = list(EDGE_REFUSED.values())
    number = 0
    while not stop.is_set():
        body, headers, code, _ = kinds[number % len(kinds)]
        number += 1
        answer = h2_call(target.port, GET_STOCK, body, headers)
        tally.count(429 if answer.grpc_status == code else 0)


Attack = Callable[[Target, Any, Tally], None]
ATTACKS: dict[str, tuple[Attack, str]] = {
    "a throttled subject": (
        flood_subject,
        f"orders in a closed loop with another customer's token (`{GREEDY_SUBJECT}`)",
    ),
    "an anonymous flooder": (flood_anonymous, "GetStock without a token in a closed loop"),
    "an idle-connection flood": (
        flood_idle_connections,
        f"{IDLE_FLOOD} silent connections held from 127.0.0.2, each reopened when closed"
        " (its calls: connections opened)",
    ),
    "a malformed gRPC flood": (
        flood_malformed_grpc,
        "malformed native gRPC calls (truncated, bad compression flag or encoding, bad"
        " -bin metadata, …) in a closed loop (refused: answered by the edge itself)",
    ),
}


@dataclass
class AttackRow:
    name: str  # "alone", or a key of ATTACKS
    honest_ms: list[float]
    honest_errors: int
    attack_calls: int = 0
    attack_refused: int = 0


async def honest_orders(base_url: str, token: str, product: int, count: int) -> AttackRow:
    """An honest customer: ``count`` orders, one at a time, paced at
    HONEST_ORDERS_PER_SECOND; every call timed, anything but a 200 an error."""
    row = AttackRow("alone", [], 0)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        start = time.perf_counter()
        for i in range(count):
            await asyncio.sleep(
                max(0.0, start + i / HONEST_ORDERS_PER_SECOND - time.perf_counter())
            )
            began = time.perf_counter()
            try:
                reply = await client.post("/inventory/decrease", json=_decrease(product))
                failed = reply.status_code != 200
            except httpx.HTTPError:
                failed = True
            row.honest_ms.append((time.perf_counter() - began) * 1000)
            row.honest_errors += failed
    return row


async def beside(name: str, target: Target, base_url: str, honest: str, count: int) -> AttackRow:
    """The honest customer while the attack ``name`` runs."""
    attack, _ = ATTACKS[name]
    stop, tally = multiprocessing.Event(), Tally()
    processes = [
        multiprocessing.Process(target=attack, args=(target, stop, tally), daemon=True)
        for _ in range(ATTACK_PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        await asyncio.sleep(0.5)  # the attack under way
        row = await honest_orders(base_url, honest, target.product, count)
    finally:
        stop.set()
        for process in processes:
            process.join(30)
    row.name, row.attack_calls, row.attack_refused = name, tally.calls.value, tally.refused.value
    return row


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


# The Envoy of the attacks: the production profile's quotas.
PRODUCTION = EdgeKnobs.from_env({"EDGE_PROFILE": "production"})


async def measure_attacks(
    mesh: sandbox.Mesh, work: Path, product: int, *, smoke: bool
) -> list[AttackRow]:
    raise_open_files(IDLE_FLOOD + 2_000)  # the Envoy started here inherits it
    plan = sandbox.start_envoy(
        work / "quota-edge",
        mesh.plan.grpc_ports,
        EdgeAuth(jwks_file=str(mesh.plan.run_dir / "auth" / JWKS)),
        wait_healthy=False,
        **PRODUCTION.site_fields(),
    )
    try:
        base_url = f"http://127.0.0.1:{plan.http_port}"
        await until_serving(base_url, product)
        honest = mesh.token(["orders:write"], subject=HONEST_SUBJECT)
        target = Target(
            plan.http_port, product, mesh.token(["orders:write"], subject=GREEDY_SUBJECT)
        )
        count = 10 if smoke else 100
        await honest_orders(base_url, honest, product, 5)  # warm
        alone = await honest_orders(base_url, honest, product, count)
        rows = [alone]
        for name in ATTACKS:
            rows.append(await beside(name, target, base_url, honest, count))
        # Alone again after the attacks, pooled with the first: one stall of a shared
        # machine in one alone run would otherwise be every ratio's p99.
        again = await honest_orders(base_url, honest, product, count)
        alone.honest_ms += again.honest_ms
        alone.honest_errors += again.honest_errors
        return rows
    finally:
        plan.envoy().stop()


async def _envoy_cpu_per_call(plan: MeshPlan, product: int, seconds: float) -> float:
    """µs of Envoy CPU per native gRPC GetStock call, over ``seconds`` of
    bench.grpc_load (8 callers) through ``plan``'s Envoy."""
    pid = str(plan.envoy().pid)

    def cpu() -> float:
        fields = proc_stat(pid) or []
        return (int(fields[12]) + int(fields[13])) / TICKS

    before = cpu()
    load = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.grpc_load", "--target", f"127.0.0.1:{plan.http_port}"],
        *["--rpc", "get", "--clients", "8", "--seconds", f"{seconds:g}", "--processes", "1"],
        *["--first-product", str(product), "--products", "1"],
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await load.communicate()
    calls = json.loads(out.decode().strip().splitlines()[-1])["requests"]
    return (cpu() - before) / calls * 1e6


async def grpc_check_cost(
    mesh: sandbox.Mesh, work: Path, product: int, *, smoke: bool
) -> dict[bool, list[float]]:
    """Envoy's CPU per native gRPC call with and without the gRPC input check
    (EnvoySite.grpc_input_check): two Envoys in front of the same backends, driven
    in turn, same run."""
    plans = {
        check: sandbox.start_envoy(
            work / f"grpc-check-{check}",
            mesh.plan.grpc_ports,
            EdgeAuth(jwks_file=str(mesh.plan.run_dir / "auth" / JWKS)),
            wait_healthy=False,
            grpc_input_check=check,
        )
        for check in (True, False)
    }
    try:
        for plan in plans.values():
            await until_serving(f"http://127.0.0.1:{plan.http_port}", product)
        cost: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(1 if smoke else 3):
            for check, plan in plans.items():
                cost[check].append(await _envoy_cpu_per_call(plan, product, 2 if smoke else 6))
        return cost
    finally:
        for plan in plans.values():
            plan.envoy().stop()


async def measure_edge(mesh: sandbox.Mesh, work: Path, product: int, *, smoke: bool) -> EdgeResult:
    result = EdgeResult()
    port = mesh.plan.http_port
    repeats = 3 if smoke else 20
    bearer = mesh.token(["orders:write"])
    for _ in range(repeats):
        status, seconds = await asyncio.to_thread(refuse_rest, port, bearer)
        assert status == 413, status
        result.rest_refusal_ms.append(seconds * 1000)
    # With a token: DecreaseStock is a protected RPC, and the size check comes after
    # the token check (an anonymous oversized call gets its 401 first).
    metadata = {"authorization": f"Bearer {bearer}"}
    result.grpc_refusal_ms = await refuse_grpc(mesh.envoy_target, repeats, metadata)

    calls = 20 if smoke else 300
    await normal_calls(mesh.http_url, product, 10)  # warm
    result.alone_ms = await normal_calls(mesh.http_url, product, calls)
    # The flood comes from other processes, so it competes with the normal call for
    # Envoy and the machine, not for this process's interpreter.
    stop, refused = multiprocessing.Event(), multiprocessing.Value("i", 0)
    flooders = [
        multiprocessing.Process(target=_flood, args=(port, bearer, stop, refused), daemon=True)
        for _ in range(2)
    ]
    for process in flooders:
        process.start()
    try:
        result.beside_flood_ms = await normal_calls(mesh.http_url, product, calls)
    finally:
        stop.set()
        for process in flooders:
            process.join(30)
    result.flood_refusals = refused.value

    plan = sandbox.start_envoy(
        work / "overload-edge",
        mesh.plan.grpc_ports,
        EdgeAuth(jwks_file=str(mesh.plan.run_dir / "auth" / JWKS)),
        wait_healthy=False,
        mutation_rate_per_second=0,
        **OVERLOAD_EDGE,
    )
    try:
        base_url = f"http://127.0.0.1:{plan.http_port}"
        await until_serving(base_url, product)
        result.callers = 16 if smoke else 64
        result.seconds = 2.0 if smoke else 10.0
        await overload(base_url, product, result.callers, result.seconds, result)
    finally:
        plan.envoy().stop()
    result.attacks = await measure_attacks(mesh, work, product, smoke=smoke)
    result.check_cpu_us = await grpc_check_cost(mesh, work, product, smoke=smoke)
    return result


SECTION = "## Edge: refusals and overload"


def render_edge(result: EdgeResult) -> list[str]:
    alone, beside = statistics.median(result.alone_ms), statistics.median(result.beside_flood_ms)
    ratio = beside / alone
    refusals = result.rest_refusal_ms + result.grpc_refusal_ms
    refused_p99 = pct(result.refused_ms, 0.99)
    checks = [
        (
            "an oversized request is refused within a second (slowest of all)",
            f"{max(refusals):.0f} ms",
            max(refusals) < 1000,
        ),
        (
            "a normal call is not slowed by oversized ones beside it (p50 ≤ 1.5 x alone)",
            f"{ratio:.2f} x ({beside:.2f} vs {alone:.2f} ms)",
            ratio <= 1.5,
        ),
        (
            "under overload, p99 of refused calls < 1 s",
            f"{refused_p99:.0f} ms" if result.refused_ms else "nothing was refused",
            bool(result.refused_ms) and refused_p99 < 1000,
        ),
        (
            "right after the overload the next call is served",
            f"HTTP {result.first_after_status} in {result.first_after_ms:.1f} ms",
            result.first_after_status == 200,
        ),
        (
            "an honest customer gets no error beside any attack",
            ", ".join(f"{r.name}: {r.honest_errors}" for r in result.attacks),
            not any(r.honest_errors for r in result.attacks),
        ),
    ]
    return [
        SECTION,
        "",
        "Generated by `bench/edge.py` (`make bench`; alone: `python -m bench.run --edge-only`)."
        " Through the sandbox mesh's Envoy (its documented limits: 64 KiB REST body and gRPC"
        " message), from Python clients on the same machine.",
        "",
        f"- refusal of a 10 MB REST body (413, measured from the first byte sent to the"
        f" status line), {len(result.rest_refusal_ms)} times: p50"
        f" {pct(result.rest_refusal_ms, 0.5):.1f} ms, max {max(result.rest_refusal_ms):.1f} ms",
        f"- refusal of a 100 KB native gRPC message (INVALID_ARGUMENT), "
        f"{len(result.grpc_refusal_ms)} times: p50 {pct(result.grpc_refusal_ms, 0.5):.1f} ms,"
        f" max {max(result.grpc_refusal_ms):.1f} ms",
        f"- REST GetStock, {len(result.alone_ms)} calls one after another: alone p50"
        f" {alone:.2f} ms / p99 {pct(result.alone_ms, 0.99):.2f} ms; while two other"
        f" connections kept sending 10 MB bodies ({result.flood_refusals} refused meanwhile):"
        f" p50 {beside:.2f} ms / p99 {pct(result.beside_flood_ms, 0.99):.2f} ms"
        f" — ratio {ratio:.2f}. The two flooding processes (each a new connection and up to"
        " a few hundred KB per refusal, as fast as Envoy answers) share the machine's cores"
        " with Envoy, inventory_svc and the timed client, so the ratio includes their CPU",
        f"- overload: wrk with {result.callers} connections (closed loop, REST GetStock) for"
        f" {result.seconds:g} s against an Envoy admitting {result.admitted} calls in flight"
        f" to inventory_svc: {result.wrk_requests} answers, {result.wrk_non_2xx} of them"
        f" refused (503), {result.wrk_errors} socket errors. Meanwhile a probe, one call"
        f" after another: {len(result.served_ms)} served (p50"
        f" {pct(result.served_ms, 0.5):.1f} ms, p99 {pct(result.served_ms, 0.99):.1f} ms),"
        f" {len(result.refused_ms)} refused with a JSON 503 + retry-after (p50"
        f" {pct(result.refused_ms, 0.5):.1f} ms, p99 {refused_p99:.1f} ms), other answers:"
        f" {result.other_statuses or 'none'}; the first call after it: HTTP"
        f" {result.first_after_status} in {result.first_after_ms:.1f} ms",
        "",
        *render_attacks(result.attacks),
        *render_check_cost(result.check_cpu_us),
        "| target | measured | |",
        "|---|---|---|",
        *[
            f"| {name} | {measured} | {'met' if ok else '**missed**'} |"
            for name, measured, ok in checks
        ],
        "",
    ]


def render_attacks(rows: list[AttackRow]) -> list[str]:
    """The honest customer alone and beside each attack, as ratios to alone."""
    alone = rows[0]
    p50, p99 = pct(alone.honest_ms, 0.5), pct(alone.honest_ms, 0.99)

    def line(row: AttackRow) -> str:
        attack = (
            f"{row.attack_calls} ({row.attack_refused / row.attack_calls:.0%} refused)"
            if row.attack_calls
            else "—"
        )
        return (
            f"| {row.name} | {pct(row.honest_ms, 0.5):.1f} | {pct(row.honest_ms, 0.5) / p50:.2f}"
            f" | {pct(row.honest_ms, 0.99):.1f} | {pct(row.honest_ms, 0.99) / p99:.2f}"
            f" | {row.honest_errors / len(row.honest_ms):.1%} | {attack} |"
        )

    return [
        f"An honest customer beside each attack: {len(rows[-1].honest_ms)} REST orders (one at"
        f" a time, {HONEST_ORDERS_PER_SECOND:g}/s) with its own token, alone (before and after"
        " the attacks, pooled) and while an attack"
        f" runs in {ATTACK_PROCESSES} processes from the same address (unless its line below"
        " says otherwise), through an Envoy with"
        f" the production profile's quotas ({PRODUCTION.mutations_per_second}/s per subject,"
        f" {PRODUCTION.anonymous_per_second}/s per address without a token). Ratios to alone,"
        " same run; the attackers share the machine's cores with Envoy, inventory_svc and the"
        " customer, so the ratios include their CPU.",
        "",
        "| honest customer | p50 ms | x alone | p99 ms | x alone | errors | attack's calls |",
        "|---|---:|---:|---:|---:|---:|---|",
        *[line(row) for row in rows],
        *[f"- {name}: {what}" for name, (_, what) in ATTACKS.items()],
        "",
    ]


def render_check_cost(cost: dict[bool, list[float]]) -> list[str]:
    """What the native gRPC input check (mesh/edge/grpc_input.lua) costs Envoy."""
    if not cost:
        return []
    with_check, without = statistics.median(cost[True]), statistics.median(cost[False])
    return [
        f"The native gRPC input check (Lua, on gRPC method routes only; REST calls never"
        f" run it): Envoy's CPU per native gRPC GetStock, median of {len(cost[True])} runs"
        f" of 8 callers each, two Envoys driven in turn: {with_check:.0f} µs with it,"
        f" {without:.0f} µs without — ratio {with_check / without:.2f}"
        f" (runs: {', '.join(f'{v:.0f}' for v in cost[True])} vs"
        f" {', '.join(f'{v:.0f}' for v in cost[False])}).",
        "",
    ]


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
