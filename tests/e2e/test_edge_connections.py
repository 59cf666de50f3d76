"""Client connections are a budget (tests/e2e): one address holding thousands of idle
connections never keeps another client out.

Envoy 1.40 has no cap on connections per client address (see envoy/README.md,
"Connections"). What it has, and the edge uses: a connection must start its request
within ``request_start_timeout_seconds`` of being accepted, finish its headers within
``request_headers_timeout_seconds``, and is closed after ``idle_timeout_seconds``
without a request; under memory pressure the idle timeout shrinks, so the longest
idle go first. An attacker must keep reopening connections to hold any, and cannot
reopen them fast enough to fill the edge's 10 000.
"""

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blueprint.edge.admission import REFUSE_REQUESTS_FROM, SHED_IDLE_FROM, SHED_IDLE_FULLY
from blueprint.edge.knobs import EdgeKnobs
from blueprint.edge.render import envoy_config, to_yaml
from devtools.plan import MeshPlan
from devtools.sandbox import free_port, start_envoy
from tests.support.edge import mesh_auth, stats
from tests.support.flood import HONEST, idle_flood, raise_open_files
from tests.support.waiting import eventually

FLOOD = 10_050  # the issue's: 50 more than the edge's 10 000
PRODUCTION = EdgeKnobs.from_env({"EDGE_PROFILE": "production"})


@pytest.fixture(scope="module")
def edge(mesh, tmp_path_factory) -> Iterator[MeshPlan]:
    """An Envoy with the production profile (a connection must start its request
    within 1 s), in front of the session's backends, allowed the open files 10 000
    connections need (it inherits ours)."""
    raise_open_files(FLOOD + 2_000)
    plan = start_envoy(
        tmp_path_factory.mktemp("connections"),
        mesh.plan.grpc_ports,
        mesh_auth(mesh),
        **PRODUCTION.site_fields(),
    )
    yield plan
    plan.envoy().stop()


async def fresh_call(port: int, headers: dict[str, str], within: float = 2.0) -> httpx.Response:
    """GetStock from another address, each try on a connection of its own, as a new
    client that retries a refused or reset connection: served within ``within`` s."""
    transport = httpx.AsyncHTTPTransport(local_address=HONEST)
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        transport=transport,
        timeout=within,
        headers={**headers, "connection": "close"},
    ) as client:
        while True:
            try:
                return await client.get("/inventory/1")
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def test_idle_connections_from_one_address_never_keep_a_fresh_client_out(mesh, edge):
    with idle_flood(edge.http_port, FLOOD) as attacker:
        # The attacker has opened as many connections as it wants to hold, and
        # keeps reopening every one Envoy closes.
        await eventually(
            lambda: attacker.opened.value >= FLOOD, within=60, what="10 050 connections opened"
        )
        for _ in range(8):
            started = time.monotonic()
            reply = await fresh_call(edge.http_port, mesh.auth_header())
            assert reply.status_code == 200 and reply.json()["name"] == "Laptop Gamer"
            assert time.monotonic() - started < 2
            await asyncio.sleep(0.25)
        assert attacker.opened.value > FLOOD  # it did reopen what Envoy closed
    counters = stats(edge)
    listener = f"listener.127.0.0.1_{edge.http_port}"
    # Envoy closed the silent ones itself, counted from accept.
    assert counters[f"{listener}.downstream_pre_cx_timeout"] > 0


SHORT = {
    "request_start_timeout_seconds": 0.5,
    "request_headers_timeout_seconds": 1.0,
    "idle_timeout_seconds": 1.0,
}


@pytest.fixture(scope="module")
def short_edge(mesh, tmp_path_factory) -> Iterator[MeshPlan]:
    plan = start_envoy(
        tmp_path_factory.mktemp("short-timeouts"), mesh.plan.grpc_ports, mesh_auth(mesh), **SHORT
    )
    yield plan
    plan.envoy().stop()


def closed_after(sock: socket.socket, limit: float = 10) -> tuple[float, bytes]:
    """Read until the server closes ``sock``; (seconds it took, what came)."""
    sock.settimeout(limit)
    started, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return time.monotonic() - started, data


def test_a_connection_that_sends_nothing_is_closed_counted_from_accept(short_edge):
    with socket.create_connection(("127.0.0.1", short_edge.http_port)) as sock:
        seconds, data = closed_after(sock)
    assert data == b""
    assert SHORT["request_start_timeout_seconds"] * 0.8 <= seconds < 5


def test_headers_that_never_end_are_cut_off(short_edge):
    """Slowloris: the request line at once, then headers that never end (a write
    after Envoy's answer would only reset the connection, so the client stops)."""
    with socket.create_connection(("127.0.0.1", short_edge.http_port)) as sock:
        sock.sendall(b"GET /inventory/1 HTTP/1.1\r\nhost: mesh\r\nx-slow: a\r\n")
        seconds, data = closed_after(sock)
    assert SHORT["request_headers_timeout_seconds"] * 0.8 <= seconds < 5
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body) == {
        "code": 4,
        "message": "the request was not received in time",
        "details": [],
    }


def test_an_idle_keep_alive_connection_is_closed(short_edge):
    with socket.create_connection(("127.0.0.1", short_edge.http_port)) as sock:
        sock.sendall(b"GET /inventory/1 HTTP/1.1\r\nhost: mesh\r\n\r\n")
        seconds, data = closed_after(sock)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert SHORT["idle_timeout_seconds"] * 0.8 <= seconds < 5


# --- memory pressure: the longest idle connections go first ---------------------------


@pytest.fixture
def pressured_edge(mesh, tmp_path) -> Iterator[tuple[MeshPlan, Path]]:
    """An Envoy whose memory monitor is swapped for one that reads its pressure from a
    file (Envoy's injected_resource, made for tests): the rest of the config, the
    overload actions included, is the generator's."""
    pressure = tmp_path / "pressure"
    set_pressure(pressure, 0)
    plan = MeshPlan(
        tmp_path, tmp_path / "envoy.yaml", free_port(), free_port(), mesh.plan.grpc_ports
    )
    site = plan.envoy_site(mesh_auth(mesh), health_check_seconds=0.5, idle_timeout_seconds=10.0)
    config = envoy_config(site)
    manager = config["overload_manager"]
    heap = next(m for m in manager["resource_monitors"] if m["name"].endswith("fixed_heap"))
    heap["name"] = "envoy.resource_monitors.injected_resource"
    heap["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource"
        ".v3.InjectedResourceConfig",
        "filename": str(pressure),
    }
    for action in [*manager["actions"], *manager.get("loadshed_points", [])]:
        for trigger in action["triggers"]:
            if trigger["name"].endswith("fixed_heap"):
                trigger["name"] = heap["name"]
    plan.envoy_config.write_text(to_yaml(config))
    plan.envoy().start_until(plan.envoy_ready, "healthy clusters")
    yield plan, pressure
    plan.envoy().stop()


def set_pressure(path: Path, value: float) -> None:
    """Envoy's injected_resource monitor reads the file when one is moved onto it."""
    written = path.with_suffix(".new")
    written.write_text(f"{value:.3f}")
    written.replace(path)


def keep_alive(port: int) -> socket.socket:
    """A connection that made one call and now sits idle (kept alive)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /inventory/1 HTTP/1.1\r\nhost: mesh\r\n\r\n")
    sock.settimeout(10)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    return sock


async def _refused(port: int) -> httpx.Response | None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        reply = await client.get("/inventory/1")
    return reply if reply.status_code == 503 else None


async def _served(port: int) -> bool:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return (await client.get("/inventory/1")).status_code == 200


def is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


async def test_under_memory_pressure_the_longest_idle_connections_are_shed_first(
    pressured_edge,
):
    plan, pressure = pressured_edge
    older = [keep_alive(plan.http_port) for _ in range(5)]
    await asyncio.sleep(5)
    younger = [keep_alive(plan.http_port) for _ in range(5)]
    try:
        # Halfway between where shedding starts and where it is total: the idle
        # timeout (10 s) shrinks to half, so what idled 5 s longer goes first.
        set_pressure(pressure, (SHED_IDLE_FROM + SHED_IDLE_FULLY) / 2)
        await eventually(lambda: all(map(is_closed, older)), within=15, what="older ones shed")
        assert not any(map(is_closed, younger))
        # Past SHED_IDLE_FULLY every idle connection goes; past REFUSE_REQUESTS_FROM
        # new requests get a JSON 503 with retry-after.
        set_pressure(pressure, REFUSE_REQUESTS_FROM + 0.01)
        await eventually(lambda: all(map(is_closed, younger)), within=15, what="all shed")
        refused = await eventually(lambda: _refused(plan.http_port), within=15, what="503")
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == 14
        # Pressure gone: served again.
        set_pressure(pressure, 0)
        await eventually(lambda: _served(plan.http_port), within=15, what="served again")
    finally:
        for sock in older + younger:
            sock.close()
