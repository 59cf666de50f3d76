"""Run the whole mesh natively: ``python -m devtools.launcher up|down|status``.

``up`` checks the infrastructure (PostgreSQL, RabbitMQ, MongoDB — starting an
embedded MongoDB-compatible server when no MONGO_URL is given), creates the
databases, applies migrations, starts every backend and Envoy in the background
with logs under .run/logs/, waits for their health checks and prints where
everything is. ``down`` stops what ``up`` started. Both are safe to repeat.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from functools import partial
from urllib.parse import urlsplit

from blueprint.edge.knobs import EDGE_ENV, with_environment
from blueprint.edge.render import render
from blueprint.edge.settings import AUTH_ENV, EdgeAuth, EdgeTracing, EnvoySite
from blueprint.topology import backends, base_name, native_ports
from devtools.plan import MeshPlan, migrate, mongo_answers, native_plan
from devtools.preflight import (
    PROMETHEUS_INSTALL,
    TROUBLESHOOTING,
    InfrastructureMissing,
    check_rabbitmq,
    ensure_database,
    prometheus_tool,
)
from devtools.processes import ManagedProcess, StartupFailed, run
from devtools.tokens import DEV_KEYS_DIR, ensure_keys
from inventory_svc.settings import InventorySettings
from meshkit.settings import load_settings, without_credentials
from notify_svc.settings import NotifySettings

EMBEDDED_MONGO_PORT = 27017
RABBITMQ_MANAGEMENT = "rabbitmq_management"
RABBITMQ_UI_URL = "http://localhost:15672"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def rabbitmq_management(amqp_url: str) -> str:
    """Enables RabbitMQ's management UI on a local broker when it can (root, or the
    broker's own user); returns what the summary says about it. Never fails `up`."""
    host = urlsplit(amqp_url).hostname
    if host not in LOCAL_HOSTS:
        return f"http://{host}:15672 if that broker has the management plugin"
    try:
        if _rabbitmq_plugins("is_enabled").returncode != 0:
            enabling = _rabbitmq_plugins("enable")
            if enabling.returncode != 0:
                reason = (enabling.stderr or enabling.stdout).strip().splitlines()
                raise OSError(reason[-1] if reason else f"exit {enabling.returncode}")
            print(f"enabled the RabbitMQ plugin {RABBITMQ_MANAGEMENT}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(
            f"note: RabbitMQ management UI not enabled ({exc}); to enable it:"
            f" sudo rabbitmq-plugins enable {RABBITMQ_MANAGEMENT}"
        )
        return "not enabled (see the note above)"
    return f"{RABBITMQ_UI_URL} (guest/guest)"


def _rabbitmq_plugins(command: str) -> subprocess.CompletedProcess[str]:
    return run(["rabbitmq-plugins", "-q", command, RABBITMQ_MANAGEMENT], timeout=60)


def mongo_url(plan: MeshPlan) -> str:
    """MONGO_URL when given (checked), else an embedded server under .run/mongo."""
    if url := os.environ.get("MONGO_URL"):
        if not mongo_answers(url):
            raise InfrastructureMissing(
                f"MongoDB does not answer at MONGO_URL={without_credentials(url)}."
            )
        return url
    url = f"mongodb://127.0.0.1:{EMBEDDED_MONGO_PORT}"
    mongo = plan.embedded_mongo(EMBEDDED_MONGO_PORT)
    _start(mongo, EMBEDDED_MONGO_PORT, lambda: mongo_answers(url))
    return url


def up(plan: MeshPlan) -> None:
    inventory, notify = load_settings(InventorySettings), load_settings(NotifySettings)
    asyncio.run(ensure_database(str(inventory.inventory_database_url), "INVENTORY_DATABASE_URL"))
    asyncio.run(ensure_database(str(notify.notify_database_url), "NOTIFY_DATABASE_URL"))
    asyncio.run(check_rabbitmq(str(inventory.amqp_url), "AMQP_URL"))
    rabbitmq_ui = rabbitmq_management(str(inventory.amqp_url))
    plan = MeshPlan(**{**plan.__dict__, "env": {**plan.env, "MONGO_URL": mongo_url(plan)}})
    migrate(plan.env, backends())
    plan, token_help = edge_auth(plan)

    for name in plan.processes():
        _start(plan.backend(name), plan.grpc_ports[name], partial(plan.backend_ready, name))
    _start(plan.envoy(), plan.http_port, plan.envoy_ready)
    prometheus_ui = start_prometheus(plan)
    metrics = ", ".join(f"{name} :{port}" for name, port in plan.metrics_ports.items())
    print(
        "\nPolyglotMicro is up.\n"
        f"  REST and gRPC (Envoy):  http://localhost:{plan.http_port}\n"
        f"    curl localhost:{plan.http_port}/inventory/1\n"
        f"    .venv/bin/grpcurl -plaintext localhost:{plan.http_port} list\n"
        f"  Tokens:                 {token_help}\n"
        f"  Docs:                   http://localhost:{plan.http_port}/docs/\n"
        f"  Envoy admin:            http://127.0.0.1:{plan.admin_port}\n"
        f"  Prometheus:             {prometheus_ui}\n"
        f"    each process's /metrics on 127.0.0.1: {metrics}\n"
        f"  Traces:                 {traces_summary()}\n"
        f"  RabbitMQ management:    {rabbitmq_ui}\n"
        f"  MongoDB:                {plan.env['MONGO_URL']} (analytics_db.sales_events)\n"
        "    browse it: make mongo-ui (Mongo Express on http://localhost:8081, admin/pass)\n"
        f"  Logs:                   {plan.run_dir / 'logs'}/\n"
        "  Stop with:              make down"
    )


def start_prometheus(plan: MeshPlan) -> str:
    """Prometheus scraping the mesh when it is installed (Debian's package); what
    the summary says about it. Never fails `up`: the mesh runs without it."""
    binary = prometheus_tool()
    if binary is None:
        return f"not installed ({PROMETHEUS_INSTALL}, then make up again)"
    prometheus = plan.prometheus(binary)
    if not prometheus.running() and _port_in_use(plan.prometheus_port):
        return (
            f"not started: port {plan.prometheus_port} is taken (Debian's own prometheus"
            " service? sudo systemctl disable --now prometheus)"
        )
    plan.write_prometheus_config()
    if prometheus.running():  # an earlier `up`, maybe with other REPLICAS: reload
        prometheus.signal(signal.SIGHUP)
    _start(prometheus, plan.prometheus_port, plan.prometheus_ready)
    return f"http://localhost:{plan.prometheus_port} (/targets, /alerts; rules: prometheus/)"


def traces_summary() -> str:
    tracing = EdgeTracing.from_env()
    if not tracing:
        return "off (set OTEL_EXPORTER_OTLP_ENDPOINT to an OTLP/gRPC receiver, envoy/README.md)"
    return f"to {tracing.endpoint} ({tracing.sampler}); answers carry x-trace-id"


def edge_auth(plan: MeshPlan) -> tuple[MeshPlan, str]:
    """The development key pair Envoy trusts (created once under .run/auth/), or, with
    AUTH_ISSUER/AUTH_AUDIENCES/AUTH_JWKS_URI set, the provider's; Envoy's config
    rendered from the environment when it says anything about the edge (edge_config).

    Returns the plan to run and what the summary says about tokens.
    """
    auth = EdgeAuth.from_env()
    if not auth.jwks_uri:
        ensure_keys(DEV_KEYS_DIR)
    dev_tokens = 'TOKEN=$(make -s token), then -H "authorization: Bearer $TOKEN"'
    plan = edge_config(plan)
    if not any(os.environ.get(name) for name in AUTH_ENV):
        return plan, dev_tokens
    return plan, f"from {auth.issuer} (audiences {', '.join(auth.audiences)}; {plan.envoy_config})"


def edge_config(plan: MeshPlan, env: Mapping[str, str] = os.environ) -> MeshPlan:
    """``plan`` with Envoy's config rendered into its run folder (envoy.yaml) from every
    edge variable of ``env`` (blueprint.edge.knobs: the EDGE_* knobs, AUTH_*, OTEL_*) when
    any is set, or for REPLICAS; otherwise as it is (the checked-in envoy/envoy.yaml).
    A wrong value raises ValueError naming its variable."""
    replicated = plan.grpc_ports != native_ports(1)
    if not replicated and not any(env.get(name) for name in EDGE_ENV):
        return plan
    config = plan.run_dir / "envoy.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(render(with_environment(plan.envoy_site(EdgeAuth()), env)))
    return MeshPlan(**{**plan.__dict__, "envoy_config": config})


def _start(process: ManagedProcess, port: int, ready: Callable[[], bool]) -> None:
    if process.running():
        print(f"{process.name} already running (pid {process.pid})")
        return
    if _port_in_use(port):
        raise InfrastructureMissing(
            f"port {port} is already in use, so {process.name} cannot start there. "
            "Stop whatever listens on it (`make down` if it is an older mesh)."
        )
    print(f"starting {process.name}, waiting for its health check…")
    process.start_until(ready, "a passing health check")


def _all(plan: MeshPlan) -> list[ManagedProcess]:
    """Everything `up` may start, in start order, with every replica an earlier
    `REPLICAS=N make up` left running (found by their pid files)."""
    pids = plan.run_dir / "pids"
    started = {path.stem for path in pids.glob("*.pid")} if pids.is_dir() else set()
    replicas = max(replicas_of(name) for name in [*started, *plan.processes()])
    plan = MeshPlan(**{**plan.__dict__, "grpc_ports": native_ports(replicas)})
    # `up` may have run Envoy on a config rendered into .run/ (REPLICAS, EDGE_*,
    # AUTH_*, OTEL_*), which `down` may be called without: take the one
    # whose process is still running.
    rendered = MeshPlan(**{**plan.__dict__, "envoy_config": plan.run_dir / "envoy.yaml"})
    envoy = next((e for e in (rendered.envoy(), plan.envoy()) if e.running()), plan.envoy())
    return [
        plan.embedded_mongo(EMBEDDED_MONGO_PORT),
        *(plan.backend(name) for name in plan.processes()),
        envoy,
        plan.prometheus(prometheus_tool() or "prometheus"),
    ]


def replicas_of(process: str) -> int:
    """inventory_svc-3 → 3, inventory_svc → 1 (anything else: 1)."""
    suffix = process[len(base_name(process)) + 1 :]
    return int(suffix) if suffix.isdigit() else 1


def down(plan: MeshPlan) -> None:
    for process in reversed(_all(plan)):
        if process.running():
            print(f"stopping {process.name} (pid {process.pid})")
        process.stop()
    print("PolyglotMicro is down.")


def status(plan: MeshPlan) -> None:
    for process in _all(plan):
        state = f"running (pid {process.pid})" if process.running() else "stopped"
        print(f"{process.name:17} {state:22} log: {process.log_path}")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python -m devtools.launcher {'|'.join(commands)}", file=sys.stderr)
        return 2
    try:
        replicas = int(os.environ.get("REPLICAS") or 1)
        if replicas < 1:
            raise ValueError
    except ValueError:
        print(f"REPLICAS must be a whole number ≥ 1, got {os.environ['REPLICAS']!r}")
        return 2
    try:
        # Every edge variable checked before anything starts (a wrong one stops `up`
        # with its name and bounds, not half-way); `down` and `status` need none.
        if argv[0] == "up":
            with_environment(EnvoySite())
    except ValueError as problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        commands[argv[0]](native_plan(env={}, replicas=replicas))
    except (InfrastructureMissing, StartupFailed) as problem:
        print(f"\n{problem}", file=sys.stderr)
        if isinstance(problem, InfrastructureMissing):
            print(TROUBLESHOOTING, file=sys.stderr)
        if argv[0] == "up":
            print("(`make down` stops whatever did start.)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
