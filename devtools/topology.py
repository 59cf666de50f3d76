"""The mesh's shape, derived from the contracts: which gRPC services exist and
which backend (``<name>_svc``) serves each of them.

Convention: a service in proto package ``polyglot.<name>.v<N>`` is served by the
Python package ``<name>_svc``. Envoy's routes, the launcher and the tests all
read this instead of keeping their own lists.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor_pb2 import FileDescriptorSet

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR_SET = ROOT / "gen" / "python" / "polyglot" / "mesh.binpb"
DOCS_SITE = ROOT / "docs" / "site"  # the built docs site Envoy serves at /docs/

# Default gRPC port of each backend when run natively.
GRPC_PORTS = {"inventory_svc": 50051, "analytics_svc": 50052, "notify_svc": 50053}


@dataclass(frozen=True)
class GrpcService:
    full_name: str  # e.g. polyglot.inventory.v1.InventoryService
    backend: str  # e.g. inventory_svc


def grpc_services(descriptor_set: Path = DESCRIPTOR_SET) -> list[GrpcService]:
    files = FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    return [
        GrpcService(f"{f.package}.{s.name}", f"{f.package.split('.')[1]}_svc")
        for f in files
        if f.package.startswith("polyglot.")
        for s in f.service
    ]


def backends(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    """Backends that serve at least one gRPC service, in port order."""
    names = {service.backend for service in grpc_services(descriptor_set)}
    return sorted(names, key=lambda name: GRPC_PORTS[name])


def migrators(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    """Backends with a database of their own to migrate (a ``<name>.migrate`` module),
    whose ``python -m <name>.migrate`` must run before they start."""
    return [
        name for name in backends(descriptor_set) if importlib.util.find_spec(f"{name}.migrate")
    ]
