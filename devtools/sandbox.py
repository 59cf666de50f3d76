"""Private infrastructure for the tests and the benchmarks.

Throwaway PostgreSQL databases, a RabbitMQ virtual host, an embedded MongoDB
wire server and a whole mesh on free ports — so neither ever touches a mesh
started with `make up`.
"""

import os
import random
import socket
import subprocess
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import httpx

from blueprint.edge.render import render
from blueprint.edge.settings import EdgeAuth, EdgeTracing
from blueprint.topology import backends, base_name, process_names
from devtools.plan import MeshPlan, migrate, mongo_answers
from devtools.processes import ManagedProcess
from devtools.tokens import JWKS, SigningKey, ensure_keys

# The servers the tests and the benchmarks make their databases and vhost on.
PG_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_SERVER_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


# Where free_port looks: below the kernel's ephemeral range (32768-60999 by default,
# /proc/sys/net/ipv4/ip_local_port_range), from which every outgoing connection on
# the machine takes its local port. A port handed out from that range may be taken
# by someone's connection before our server binds it (seen: EADDRINUSE at start).
FREE_PORTS = range(20_000, 32_768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on right now, never handed out before by this process."""
    for _ in range(1000):
        port = random.choice(FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {FREE_PORTS}")


# --- PostgreSQL ---------------------------------------------------------------


def database_url(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def _on_server(url: str, statement: str) -> None:
    """One statement in the server's ``postgres`` database (databases are made there)."""
    conn = await asyncpg.connect(database_url(url, "postgres"))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(server_url: str, prefix: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await _on_server(server_url, f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


async def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    await _on_server(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- RabbitMQ -----------------------------------------------------------------


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def _management(
    amqp_url: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One call to RabbitMQ's management HTTP API as the user of ``amqp_url``."""
    parts = urlsplit(amqp_url)
    base = os.environ.get("RABBITMQ_MANAGEMENT_URL") or f"http://{parts.hostname}:15672"
    login = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    reply = httpx.request(method, f"{base.rstrip('/')}/api/{path}", auth=login, json=body)
    return reply.raise_for_status()


def _use_management(amqp_url: str) -> bool:
    """Whether the management API answers (it may still refuse a non-administrator)."""
    try:
        _management(amqp_url, "GET", "whoami")
    except httpx.HTTPError:
        return False
    return True


def create_vhost(server_url: str, prefix: str) -> str:
    """A RabbitMQ virtual host of our own, for the user of ``server_url``; its AMQP URL.

    Through the management HTTP API when it answers (no root needed: the user needs
    the administrator tag), else with rabbitmqctl (root or the broker's user)."""
    vhost = f"{prefix}_{uuid.uuid4().hex[:10]}"
    user = unquote(urlsplit(server_url).username or "guest")
    if _use_management(server_url):
        _management(server_url, "PUT", f"vhosts/{quote(vhost, safe='')}", {})
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        _management(server_url, "PUT", f"permissions/{vhost}/{quote(user, safe='')}", everything)
    else:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    return f"{server_url.rstrip('/')}/{vhost}"


def delete_vhost(amqp_url: str) -> None:
    vhost = urlsplit(amqp_url).path.lstrip("/")
    if _use_management(amqp_url):
        _management(amqp_url, "DELETE", f"vhosts/{quote(vhost, safe='')}")
    else:
        rabbitmqctl("delete_vhost", vhost)


# --- MongoDB ------------------------------------------------------------------


def start_mongo(run_dir: Path) -> tuple[ManagedProcess, str]:
    """The embedded MongoDB wire server on a free port, data under ``run_dir``."""
    port = free_port()
    url = f"mongodb://127.0.0.1:{port}"
    mongo = MeshPlan(run_dir, run_dir / "unused").embedded_mongo(port)
    mongo.start_until(lambda: mongo_answers(url), "a MongoDB ping answer")
    return mongo, url


# --- a whole mesh ---------------------------------------------------------------


@dataclass
class Mesh:
    plan: MeshPlan
    processes: dict[str, ManagedProcess]
    # The mesh's own token signer: its Envoy trusts only this key's JWKS.
    signing_key: SigningKey

    def token(self, scopes: list[str] | None = None, **claims: object) -> str:
        """A bearer token Envoy accepts (all scopes unless ``scopes`` says otherwise);
        ``claims`` as for ``SigningKey.mint`` (subject, issuer, audience, ttl_seconds)."""
        return self.signing_key.mint(scopes=scopes, **claims)  # type: ignore[arg-type]

    def auth_header(self, scopes: list[str] | None = None, **claims: object) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(scopes, **claims)}"}

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.plan.http_port}"

    @property
    def envoy_target(self) -> str:
        return f"127.0.0.1:{self.plan.http_port}"

    def grpc_target(self, backend: str) -> str:
        return f"127.0.0.1:{self.plan.grpc_ports[backend]}"

    def replicas(self, name: str) -> list[str]:
        """The process names of a backend's or worker's replicas in this mesh."""
        return [p for p in self.plan.grpc_ports if base_name(p) == name]

    def start(self, name: str) -> None:
        """Start (or start again) one process: a backend or worker replica."""
        if name not in self.processes:  # a backend the mesh started without
            migrate(self.plan.env, [base_name(name)])
        process = self.processes[name] = self.processes.get(name) or self.plan.backend(name)
        process.start_until(lambda: self.plan.backend_ready(name), "SERVING health")

    def restart(self, name: str) -> None:
        self.processes[name].stop()
        self.start(name)

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop()


# A sandbox's Envoy notices a restarted or stopped replica quickly.
SANDBOX_EDGE = {"health_check_seconds": 0.5}


def start_envoy(
    run_dir: Path,
    grpc_ports: dict[str, int],
    auth: EdgeAuth,
    *,
    wait_healthy: bool = True,
    **edge: Any,
) -> MeshPlan:
    """Another Envoy, on free ports, in front of backends at ``grpc_ports`` (running
    ones, or none at all with ``wait_healthy=False``), with other ``auth`` settings
    (e.g. a remote JWKS) or other limits (``edge``: EnvoySite fields); returns its
    plan. Stop it with ``plan.envoy().stop()``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = MeshPlan(run_dir, run_dir / "envoy.yaml", free_port(), free_port(), grpc_ports)
    plan.envoy_config.write_text(render(plan.envoy_site(auth, **{**SANDBOX_EDGE, **edge})))
    plan.envoy().start_until(
        plan.envoy_ready if wait_healthy else plan.envoy_live,
        "healthy clusters" if wait_healthy else "a live admin endpoint",
    )
    return plan


def start_mesh(
    run_dir: Path,
    env: dict[str, str],
    only: list[str] | None = None,
    edge: dict[str, Any] | None = None,
    replicas: int = 1,
) -> Mesh:
    """Backends (all, or ``only`` these) with their workers (the outbox relay),
    ``replicas`` processes of each, migrated first, and an Envoy in front of them,
    on free ports; ``edge`` overrides the Envoy's limits (EnvoySite fields). With
    OTEL_EXPORTER_OTLP_ENDPOINT in ``env``, Envoy exports its spans there too."""
    names = only or backends()
    migrate(env, names)
    # Ports for every process of the mesh, started or not: Envoy knows them all.
    grpc_ports = {name: free_port() for name in process_names(backends(), replicas)}
    plan = MeshPlan(
        run_dir,
        run_dir / "envoy.yaml",
        free_port(),
        free_port(),
        grpc_ports,
        env,
        metrics_ports={name: free_port() for name in grpc_ports},
        prometheus_port=free_port(),
    )
    mesh = Mesh(plan, {}, ensure_keys(run_dir / "auth"))
    auth = EdgeAuth(jwks_file=str(run_dir / "auth" / JWKS))
    edge = {"tracing": EdgeTracing.from_env(env), **SANDBOX_EDGE, **(edge or {})}
    plan.envoy_config.write_text(render(plan.envoy_site(auth, **edge)))
    try:
        started = process_names(names, replicas)
        for name in started:
            mesh.processes[name] = plan.backend(name)
            mesh.processes[name].start()
        for name in started:
            mesh.processes[name].wait_until(partial(plan.backend_ready, name), "SERVING health")
        mesh.processes["envoy"] = plan.envoy()
        mesh.processes["envoy"].start_until(lambda: plan.envoy_ready(names), "healthy clusters")
    except Exception:
        mesh.stop()
        raise
    return mesh
