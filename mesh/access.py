"""Who may call what: the scope each RPC requires, in one table.

Envoy enforces it (``mesh.envoy_config``: jwt_authn + RBAC, keyed by the
gRPC method path, so REST and native gRPC follow the same rule), and the docs
read it (the OpenAPI document's security requirements, the gRPC reference).
Nothing else lists methods or scopes.

Every RPC of the descriptor set must be classified here: ``method_scopes`` fails
for an RPC this table does not know, so a new RPC cannot become reachable
without someone deciding who may call it.

Scopes travel in the token's standard ``scope`` claim, a space-separated string
(RFC 8693 section 4.2, as OAuth 2.0 servers issue it).
"""

from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor_pb2 import FileDescriptorSet

from mesh.topology import DESCRIPTOR_SET

PUBLIC = None  # no token needed

# Service → the scope of all its RPCs, or RPC name → scope.
ACCESS: dict[str, str | dict[str, str | None]] = {
    "polyglot.inventory.v1.InventoryService": {
        "GetStock": PUBLIC,
        "ListProducts": PUBLIC,
        "DecreaseStock": "orders:write",
        "RestockProduct": "inventory:admin",
    },
    "polyglot.analytics.v1.AnalyticsService": "reports:read",
    # Notifications hold e-mail addresses.
    "polyglot.notify.v1.NotificationService": "reports:read",
}

# Everything outside the contracts stays public: health, reflection (so grpcurl
# and Postman can discover the API before they hold a token) and the docs site.


class UnclassifiedMethod(LookupError):
    pass


@dataclass(frozen=True)
class MethodAccess:
    service: str  # e.g. polyglot.inventory.v1.InventoryService
    method: str  # e.g. DecreaseStock
    scope: str | None  # None: public

    @property
    def path(self) -> str:
        """The gRPC request path, which the transcoder also gives REST calls."""
        return f"/{self.service}/{self.method}"


def required_scope(service: str, method: str) -> str | None:
    """The scope ``service``/``method`` requires; None when it is public."""
    rule = ACCESS.get(service)
    if isinstance(rule, dict):
        if method not in rule:
            raise UnclassifiedMethod(f"mesh/access.py: no scope decided for {service}/{method}")
        return rule[method]
    if rule is None:
        raise UnclassifiedMethod(f"mesh/access.py: no scope decided for {service}")
    return rule


def method_access(descriptor_set: Path = DESCRIPTOR_SET) -> list[MethodAccess]:
    """Every RPC of the mesh's contracts with the scope it requires."""
    files = FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    return [
        MethodAccess(
            f"{f.package}.{s.name}", m.name, required_scope(f"{f.package}.{s.name}", m.name)
        )
        for f in files
        if f.package.startswith("polyglot.")
        for s in f.service
        for m in s.method
    ]


def all_scopes(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    return sorted({m.scope for m in method_access(descriptor_set) if m.scope})
