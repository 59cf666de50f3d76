"""The processes of one mesh (backends, Envoy, an embedded MongoDB) and their health.

The native launcher runs one plan with the default ports under .run/; the tests
run another with free ports under a temporary folder. Both start the very same
commands.
"""

import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from blueprint.edge.settings import EdgeAuth, EnvoySite
from blueprint.prometheus import native_site
from blueprint.prometheus import render as render_prometheus
from blueprint.topology import (
    ROOT,
    WORKERS,
    api_replicas,
    backends,
    base_name,
    migrators,
    module_of,
    native_metrics_ports,
    native_ports,
)
from devtools.processes import ManagedProcess, StartupFailed, grpc_serving, python_module, run

BIN = Path(sys.executable).parent
# Every Envoy we run or validate: several may run at once, and only problems are logged.
ENVOY_OPTIONS = ("--disable-hot-restart", "--log-level", "warn")


@dataclass(frozen=True)
class MeshPlan:
    run_dir: Path
    envoy_config: Path
    http_port: int = 8080
    admin_port: int = 9901
    # Process name (inventory_svc, inventory_svc-2, inventory_relay, …; see
    # blueprint.topology) → its gRPC port: every replica of every process.
    grpc_ports: dict[str, int] = field(default_factory=native_ports)
    # Settings for every backend (INVENTORY_DATABASE_URL, AMQP_URL, MONGO_URL, …).
    env: dict[str, str] = field(default_factory=dict)
    # Process name → the port of its /metrics (meshkit/metrics.py); a process
    # left out serves none.
    metrics_ports: dict[str, int] = field(default_factory=dict)
    prometheus_port: int = 9090

    def process(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        return ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.run_dir / "logs" / f"{name}.log",
            pid_path=self.run_dir / "pids" / f"{name}.pid",
            env=env or {},
        )

    def backend(self, name: str) -> ManagedProcess:
        """A backend or a worker (the outbox relay), any replica, by process name."""
        env = {**self.env, "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(self.grpc_ports[name])}
        if name in self.metrics_ports:
            env |= {"METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(self.metrics_ports[name])}
        if base_name(name) in WORKERS:  # nobody routes calls to it: nothing to drain
            env.setdefault("DRAIN_SECONDS", "0")
        return self.process(name, python_module(module_of(name)), env)

    def processes(self) -> list[str]:
        """Every process this plan runs, in start order (the grpc_ports' order)."""
        return list(self.grpc_ports)

    def envoy(self) -> ManagedProcess:
        return self.process(
            "envoy",
            [str(BIN / "envoy"), "-c", str(self.envoy_config), *ENVOY_OPTIONS],
        )

    @property
    def prometheus_config(self) -> Path:
        return self.run_dir / "prometheus" / "prometheus.yml"

    def write_prometheus_config(self, scrape_seconds: float = 15.0) -> None:
        """Prometheus's config for this plan: every process's metrics port and Envoy's
        admin, with the mesh's alert rules (blueprint/prometheus.py)."""
        site = native_site(
            self.metrics_ports,
            self.admin_port,
            scrape_seconds=scrape_seconds,
            evaluation_seconds=scrape_seconds,
        )
        self.prometheus_config.parent.mkdir(parents=True, exist_ok=True)
        self.prometheus_config.write_text(render_prometheus(site))

    def prometheus(self, binary: str) -> ManagedProcess:
        """Prometheus (the binary at ``binary``) on loopback with ``prometheus_config``,
        its data under run_dir/prometheus/data."""
        return self.process(
            "prometheus",
            [
                binary,
                f"--config.file={self.prometheus_config}",
                f"--storage.tsdb.path={self.prometheus_config.parent / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--storage.tsdb.retention.time=2d",
                "--log.level=warn",
            ],
        )

    def prometheus_ready(self) -> bool:
        return _get(f"http://127.0.0.1:{self.prometheus_port}/-/ready") is not None

    def embedded_mongo(self, port: int) -> ManagedProcess:
        """SecantusDB: a MongoDB wire-protocol server, data under run_dir/mongo."""
        return self.process(
            "mongodb",
            [
                str(BIN / "secantusd-py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(self.run_dir / "mongo"),
                "--log-level",
                "WARNING",
            ],
        )

    def envoy_site(self, auth: EdgeAuth, **edge: Any) -> EnvoySite:
        """Envoy on this plan's ports in front of every API replica it runs;
        ``edge``: other EnvoySite fields (limits, health-check interval, …)."""
        backends = {
            name: [("127.0.0.1", port) for port in ports]
            for name, ports in api_replicas(self.grpc_ports).items()
        }
        return EnvoySite(
            listen_port=self.http_port,
            admin_port=self.admin_port,
            backends=backends,
            auth=auth,
            **edge,
        )

    def backend_ready(self, name: str) -> bool:
        return grpc_serving(f"127.0.0.1:{self.grpc_ports[name]}")

    def _admin(self, path: str) -> str | None:
        """Envoy admin's answer to ``path`` (/ready; /clusters: each endpoint's health flags)."""
        return _get(f"http://127.0.0.1:{self.admin_port}{path}")

    def envoy_live(self) -> bool:
        """Envoy's admin answers (whatever the backends' health)."""
        return self._admin("/ready") is not None

    def envoy_ready(self, names: list[str] | None = None) -> bool:
        """Envoy is live and has seen the backends (default: all) pass their health check."""
        clusters = self._admin("/clusters")
        if clusters is None:
            return False
        replicas = api_replicas(self.grpc_ports)
        return all(
            f"{name}::127.0.0.1:{port}::health_flags::healthy" in clusters
            for name in (names or backends())
            for port in replicas[name]
        )

    def envoy_sees(self, process: str, healthy: bool) -> bool:
        """Whether Envoy's health check currently counts one replica as healthy."""
        clusters = self._admin("/clusters")
        if clusters is None:
            return False
        line = f"{base_name(process)}::127.0.0.1:{self.grpc_ports[process]}::health_flags::"
        flags = next((row for row in clusters.splitlines() if row.startswith(line)), None)
        return flags is not None and (flags == f"{line}healthy") == healthy


def _get(url: str) -> str | None:
    """The body of a local HTTP GET; None while nothing answers, or answers with an
    error status (urllib raises HTTPError, an OSError, for those)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            body: str = reply.read().decode()
            return body
    except OSError:
        return None


def mongo_answers(url: str) -> bool:
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=500)
        with client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def migrate(env: dict[str, str], names: list[str]) -> None:
    """``python -m <name>.migrate`` for each of ``names`` that has a database, as
    `make up`, compose and Kubernetes run it before the services."""
    for name in (name for name in migrators() if name in names):
        environment = {**os.environ, **env}
        done = run(python_module(f"{name}.migrate"), timeout=300, env=environment, cwd=ROOT)
        if done.returncode != 0:
            raise StartupFailed(f"{name}.migrate failed:\n{done.stdout}{done.stderr}")


def native_plan(env: dict[str, str], replicas: int = 1) -> MeshPlan:
    """What `make up` runs: default ports (REPLICAS=N: N of each process), state
    under .run/, envoy/envoy.yaml (or .run/envoy.yaml rendered for the replicas)."""
    return MeshPlan(
        run_dir=ROOT / ".run",
        envoy_config=ROOT / "envoy" / "envoy.yaml",
        grpc_ports=native_ports(replicas),
        env=env,
        metrics_ports=native_metrics_ports(replicas),
    )
