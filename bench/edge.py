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
- attacks beside an honest customer (bench/attacks.py);
- what the native gRPC input check costs Envoy per call.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench.attacks import AttackRow, measure_attacks, render_attacks
from bench.harness import normal_calls, percentile, until_serving
from bench.procstat import process_cpu_seconds
from blueprint.edge.settings import EdgeAuth
from blueprint.topology import ROOT
from devtools import sandbox
from devtools.plan import MeshPlan
from devtools.tokens import JWKS

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
    attacks: list[AttackRow] = field(default_factory=list)
    # Envoy's CPU per native gRPC call (µs), with and without the gRPC input check.
    check_cpu_us: dict[bool, list[float]] = field(default_factory=dict)


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


async def _envoy_cpu_per_call(plan: MeshPlan, product: int, seconds: float) -> float:
    """µs of Envoy CPU per native gRPC GetStock call, over ``seconds`` of
    bench.grpc_load (8 callers) through ``plan``'s Envoy."""
    pid = plan.envoy().pid
    before = process_cpu_seconds(pid)
    load = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.grpc_load", "--target", f"127.0.0.1:{plan.http_port}"],
        *["--rpc", "get", "--clients", "8", "--seconds", f"{seconds:g}", "--processes", "1"],
        *["--first-product", str(product), "--products", "1"],
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await load.communicate()
    calls = json.loads(out.decode().strip().splitlines()[-1])["requests"]
    return (process_cpu_seconds(pid) - before) / calls * 1e6


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
    refused_p99 = percentile(result.refused_ms, 0.99)
    rest_refusals, grpc_refusals = result.rest_refusal_ms, result.grpc_refusal_ms
    served = result.served_ms
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
        f" status line), {len(rest_refusals)} times: p50"
        f" {percentile(rest_refusals, 0.5):.1f} ms, max {max(rest_refusals):.1f} ms",
        f"- refusal of a 100 KB native gRPC message (INVALID_ARGUMENT), "
        f"{len(grpc_refusals)} times: p50 {percentile(grpc_refusals, 0.5):.1f} ms,"
        f" max {max(grpc_refusals):.1f} ms",
        f"- REST GetStock, {len(result.alone_ms)} calls one after another: alone p50"
        f" {alone:.2f} ms / p99 {percentile(result.alone_ms, 0.99):.2f} ms; while two other"
        f" connections kept sending 10 MB bodies ({result.flood_refusals} refused meanwhile):"
        f" p50 {beside:.2f} ms / p99 {percentile(result.beside_flood_ms, 0.99):.2f} ms"
        f" — ratio {ratio:.2f}. The two flooding processes (each a new connection and up to"
        " a few hundred KB per refusal, as fast as Envoy answers) share the machine's cores"
        " with Envoy, inventory_svc and the timed client, so the ratio includes their CPU",
        f"- overload: wrk with {result.callers} connections (closed loop, REST GetStock) for"
        f" {result.seconds:g} s against an Envoy admitting {result.admitted} calls in flight"
        f" to inventory_svc: {result.wrk_requests} answers, {result.wrk_non_2xx} of them"
        f" refused (503), {result.wrk_errors} socket errors. Meanwhile a probe, one call"
        f" after another: {len(served)} served (p50"
        f" {percentile(served, 0.5):.1f} ms, p99 {percentile(served, 0.99):.1f} ms),"
        f" {len(result.refused_ms)} refused with a JSON 503 + retry-after (p50"
        f" {percentile(result.refused_ms, 0.5):.1f} ms, p99 {refused_p99:.1f} ms), other answers:"
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


def render_check_cost(cost: dict[bool, list[float]]) -> list[str]:
    """What the native gRPC input check (blueprint/edge/grpc_input.lua) costs Envoy."""
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
