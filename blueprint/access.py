"""Who may call what: the scope each RPC requires, in one table.

Envoy enforces it (``blueprint.edge.auth``: jwt_authn + RBAC, keyed by the
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

from blueprint.contracts import DESCRIPTOR_SET, load_contracts
from blueprint.topology import ROOT

PUBLIC = None  # no token needed

# Whose tokens Envoy trusts by default (blueprint.edge.settings.EdgeAuth): the development
# issuer, whose key pair `make up` keeps under .run/auth/ and whose public JWKS Envoy
# reads from this file (devtools.tokens signs for it). Production names its OIDC
# provider instead (AUTH_ISSUER, AUTH_AUDIENCES, AUTH_JWKS_URI).
DEV_ISSUER = "https://polyglotmicro.local/dev-issuer"
DEV_AUDIENCE = "polyglotmicro-api"
DEV_JWKS_FILE = ROOT / ".run" / "auth" / "jwks.json"

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
            raise UnclassifiedMethod(
                f"blueprint/access.py: no scope decided for {service}/{method}"
            )
        return rule[method]
    if rule is None:
        raise UnclassifiedMethod(f"blueprint/access.py: no scope decided for {service}")
    return rule


def method_access(descriptor_set: Path = DESCRIPTOR_SET) -> list[MethodAccess]:
    """Every RPC of the mesh's contracts with the scope it requires."""
    return [
        MethodAccess(service.full_name, rpc.name, required_scope(service.full_name, rpc.name))
        for service in load_contracts(descriptor_set).services
        for rpc in service.rpcs
    ]


def all_scopes(descriptor_set: Path = DESCRIPTOR_SET) -> list[str]:
    return sorted({m.scope for m in method_access(descriptor_set) if m.scope})
