"""Attacks beside an honest customer, part of the edge section (bench/edge.py):
an honest customer's orders, alone and beside each attack (``ATTACKS``, one
function each), on an Envoy with the production profile's quotas: its p50, p99
and error rate as ratios to alone, and how much of the attack was refused.
"""

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import percentile, until_serving
from blueprint.edge.knobs import EdgeKnobs
from blueprint.edge.settings import EdgeAuth
from devtools import sandbox
from devtools.tokens import JWKS
from tests.support.flood import Counters, hold_connections, raise_open_files
from tests.support.raw_grpc import EDGE_REFUSED, GET_STOCK, h2_call

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
    # what the honest customer's failed calls got: "HTTP 503", "ReadError", …
    failures: Counter[str] = field(default_factory=Counter)


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
            failure = ""
            try:
                reply = await client.post("/inventory/decrease", json=_decrease(product))
                if reply.status_code != 200:
                    failure = f"HTTP {reply.status_code}"
            except httpx.HTTPError as error:
                failure = type(error).__name__
            row.honest_ms.append((time.perf_counter() - began) * 1000)
            if failure:
                row.honest_errors += 1
                row.failures[failure] += 1
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
        alone.failures += again.failures
        return rows
    finally:
        plan.envoy().stop()


def render_attacks(rows: list[AttackRow]) -> list[str]:
    """The honest customer alone and beside each attack, as ratios to alone."""
    alone = rows[0]
    p50, p99 = percentile(alone.honest_ms, 0.5), percentile(alone.honest_ms, 0.99)

    def line(row: AttackRow) -> str:
        attack = (
            f"{row.attack_calls} ({row.attack_refused / row.attack_calls:.0%} refused)"
            if row.attack_calls
            else "—"
        )
        its_p50, its_p99 = percentile(row.honest_ms, 0.5), percentile(row.honest_ms, 0.99)
        return (
            f"| {row.name} | {its_p50:.1f} | {its_p50 / p50:.2f} | {its_p99:.1f}"
            f" | {its_p99 / p99:.2f} | {row.honest_errors / len(row.honest_ms):.1%} | {attack} |"
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
        *[
            f"- the honest customer's errors ({row.name}):"
            f" {', '.join(f'{kind} {count} times' for kind, count in row.failures.most_common())}"
            for row in rows
            if row.failures
        ],
        "",
    ]
