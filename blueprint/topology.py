"""The mesh's shape, derived from the contracts: which gRPC services exist and
which backend (``<name>_svc``) serves each of them.

Convention: a service in proto package ``polyglot.<name>.v<N>`` is served by the
Python package ``<name>_svc``. Envoy's routes, the launcher and the tests all
read this instead of keeping their own lists.
"""

import importlib.util
from pathlib import Path

from blueprint.contracts import DESCRIPTOR_SET, load_contracts

ROOT = Path(__file__).resolve().parent.parent
DOCS_SITE = ROOT / "docs" / "site"  # the built docs site Envoy serves at /docs/

# Default gRPC port of each backend when run natively.
GRPC_PORTS = {"inventory_svc": 50051, "analytics_svc": 50052, "notify_svc": 50053}
# Processes that serve no API but run next to the backends: process name →
# (module, default port of its own grpc.health.v1 server). The outbox relay runs
# apart from inventory_svc's API so that neither pays for the other and each
# scales on its own (docs/architecture.md, "Replicas").
WORKERS = {"inventory_relay": ("inventory_svc.relay", 50054)}
# Default port of each process's Prometheus metrics endpoint (/metrics) when
# run natively, workers included; Prometheus scrapes these (blueprint/prometheus.py).
METRICS_PORTS = {
    "inventory_svc": 9101,
    "analytics_svc": 9102,
    "notify_svc": 9103,
    "inventory_relay": 9104,
}
# Replica i (1, 2, …) of a process listens on its default ports + STEP * (i - 1):
# the default ports differ by less than STEP, so no two replicas ever collide.
REPLICA_PORT_STEP = 10


def backends(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    """Backends that serve at least one gRPC service, in port order."""
    names = {service.backend for service in load_contracts(descriptor_set).services}
    return sorted(names, key=lambda name: GRPC_PORTS[name])


def migrators(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    """Backends with a database of their own to migrate (a ``<name>.migrate`` module),
    whose ``python -m <name>.migrate`` must run before they start."""
    return [
        name for name in backends(descriptor_set) if importlib.util.find_spec(f"{name}.migrate")
    ]


# --- replicas: every place that starts processes names and numbers them here ------


def replica_name(name: str, replica: int) -> str:
    """Replica 1 keeps the plain name (``inventory_svc``), the others get a suffix
    (``inventory_svc-2``): logs, pid files and the tests use these names."""
    return name if replica == 1 else f"{name}-{replica}"


def base_name(process: str) -> str:
    """``inventory_svc-2`` → ``inventory_svc``."""
    name, _, replica = process.rpartition("-")
    return name if name and replica.isdigit() else process


def module_of(process: str) -> str:
    """What ``python -m`` runs for a process (a backend or a worker, any replica)."""
    name = base_name(process)
    return WORKERS[name][0] if name in WORKERS else name


def workers_of(backend: str) -> list[str]:
    """Workers that belong to a backend (started and stopped with it)."""
    return [name for name, (module, _) in WORKERS.items() if module.startswith(f"{backend}.")]


def process_names(names: list[str], replicas: int = 1) -> list[str]:
    """Every process of the backends ``names`` (their workers included), each
    ``replicas`` times, in start order."""
    kinds = [kind for name in names for kind in (name, *workers_of(name))]
    return [replica_name(kind, i) for kind in kinds for i in range(1, replicas + 1)]


def native_ports(replicas: int = 1) -> dict[str, int]:
    """Process name → gRPC port for `make up` (REPLICAS=N)."""
    workers = {name: port for name, (_, port) in WORKERS.items()}
    return _replicated({**GRPC_PORTS, **workers}, replicas)


def native_metrics_ports(replicas: int = 1) -> dict[str, int]:
    """Process name → metrics port for `make up` (REPLICAS=N), in native_ports' order."""
    return _replicated(METRICS_PORTS, replicas)


def _replicated(defaults: dict[str, int], replicas: int) -> dict[str, int]:
    return {
        replica_name(name, i): port + REPLICA_PORT_STEP * (i - 1)
        for name, port in defaults.items()
        for i in range(1, replicas + 1)
    }


def api_replicas(ports: dict[str, int]) -> dict[str, list[int]]:
    """Backend → the ports of its replicas, from a process → port map (workers,
    which serve no API, left out): what Envoy balances over."""
    grouped: dict[str, list[int]] = {}
    for process, port in ports.items():
        if base_name(process) in GRPC_PORTS:
            grouped.setdefault(base_name(process), []).append(port)
    return grouped
