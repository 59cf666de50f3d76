"""Identity and authorization at the edge.

Three filters after the transcoder, keyed by the gRPC method path, so REST and
native gRPC callers meet the same rules (blueprint/access.py):
  1. header_mutation removes any x-mesh-subject a client sent (``strip_subject_filter``);
  2. jwt_authn verifies the bearer token on every RPC that needs a scope
     (missing/invalid → 401 UNAUTHENTICATED) and sets x-mesh-subject from its
     `sub`; public RPCs, health, reflection and /docs need none, but a bearer token
     sent to them must be valid too, so that a made-up one cannot pass as a
     caller with a token (the quota for calls without one sits between 1 and 2:
     blueprint.edge.admission);
  3. RBAC refuses a verified token without the RPC's scope (403 PERMISSION_DENIED).
Whose tokens are accepted is EdgeAuth (blueprint.edge.settings).
"""

from pathlib import Path

from blueprint.access import method_access
from blueprint.edge.blocks import Config, Named, cel_filter, typed
from blueprint.edge.clusters import external_cluster
from blueprint.edge.settings import EdgeAuth
from meshkit.identity import SUBJECT_HEADER

JWT_AUTHN = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "mesh"
JWT_PAYLOAD = "jwt_payload"  # dynamic metadata key RBAC reads the scopes from
JWKS_CLUSTER = "jwks"

WRONG_AUDIENCE = (
    "response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"
)
# REST callers, including transcoded ones (jwt_authn answers before the router
# drops the transcoder's x-envoy-original-path).
REST_CALLER = (
    "(!('content-type' in request.headers)"
    " || !request.headers['content-type'].startsWith('application/grpc')"
    " || 'x-envoy-original-path' in request.headers)"
)


def audience_reply_mappers() -> list[Config]:
    """jwt_authn answers a token for another audience with 403; like every other
    invalid token it gets a 401 (RFC 6750 §3.1 invalid_token): UNAUTHENTICATED, not
    PERMISSION_DENIED, which RBAC keeps for a valid token without the scope.
    Mappers stop at the first match, so the REST one carries its JSON body."""
    return [
        {
            "filter": cel_filter(f"{WRONG_AUDIENCE} && {REST_CALLER}"),
            "status_code": 401,
            "body_format_override": {
                "json_format": {"code": 16, "message": "%LOCAL_REPLY_BODY%", "details": []}
            },
        },
        {"filter": cel_filter(WRONG_AUDIENCE), "status_code": 401},
    ]


def _jwt_provider(auth: EdgeAuth) -> Config:
    provider: Config = {
        "issuer": auth.issuer,
        "audiences": list(auth.audiences),
        # Only the Authorization header (no access_token query parameter: tokens
        # in URLs end up in logs). gRPC callers send it as `authorization` metadata.
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        "forward": False,  # the backends get the subject, not the token
        "claim_to_headers": [{"header_name": SUBJECT_HEADER, "claim_name": "sub"}],
        "payload_in_metadata": JWT_PAYLOAD,
        # "a b c" → ["a", "b", "c"], so RBAC can match one scope exactly.
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
        # Clients reuse a token for many calls: verify its signature once, not per call
        # (entries still expire with the token).
        "jwt_cache_config": {"jwt_cache_size": 10000},
    }
    if auth.jwks_uri:
        provider["remote_jwks"] = {
            "http_uri": {"uri": auth.jwks_uri, "cluster": JWKS_CLUSTER, "timeout": "5s"},
            "cache_duration": "300s",
            # Fetched at start and refreshed in the background, not on a request's path.
            "async_fetch": {},
            "retry_policy": {"num_retries": 3},
        }
    else:
        provider["local_jwks"] = {"filename": auth.jwks_file}
    return provider


def jwks_cluster(auth: EdgeAuth) -> Config:
    return external_cluster(JWKS_CLUSTER, auth.jwks_uri, 80, auth.trusted_ca_file, "5s")


def strip_subject_filter() -> Config:
    """Whatever x-mesh-subject a client sent is removed: only jwt_authn sets it."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": typed(
            "filters.http.header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [{"remove": SUBJECT_HEADER}]},
        ),
    }


def auth_filters(auth: EdgeAuth, descriptor_set: Path) -> list[Config]:
    """jwt_authn and RBAC (after strip_subject_filter)."""
    methods = method_access(descriptor_set)
    protected = [m for m in methods if m.scope]
    # jwt_authn takes the first rule that matches: the public RPCs by exact path,
    # then anything else under a service's prefix needs a verified token. So a path
    # that is no known RPC (a typo, an encoding trick) is never let through unchecked.
    # Everything else (health, reflection, /docs) is public like the public RPCs.
    public = Named(
        "token_if_any",
        {
            "requires_any": {
                "requirements": [{"provider_name": JWT_PROVIDER}, {"allow_missing": {}}]
            }
        },
    )
    jwt_rules = [{"match": {"path": m.path}, "requires": public} for m in methods if not m.scope]
    jwt_rules += [
        {"match": {"prefix": f"/{service}/"}, "requires": {"provider_name": JWT_PROVIDER}}
        for service in sorted({m.service for m in methods})
    ]
    jwt_rules.append({"match": {"prefix": "/"}, "requires": public})
    by_scope: dict[str, list[str]] = {}
    for method in protected:
        by_scope.setdefault(method.scope or "", []).append(method.path)
    return [
        {
            "name": JWT_AUTHN,
            "typed_config": typed(
                "filters.http.jwt_authn.v3.JwtAuthentication",
                providers={JWT_PROVIDER: _jwt_provider(auth)},
                rules=jwt_rules,
            ),
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": typed(
                "filters.http.rbac.v3.RBAC",
                rules={
                    "action": "DENY",
                    "policies": {
                        f"needs {scope}": {
                            "permissions": [
                                {"or_rules": {"rules": [_exact_path(p) for p in paths]}}
                            ],
                            "principals": [{"not_id": _has_scope(scope)}],
                        }
                        for scope, paths in sorted(by_scope.items())
                    },
                },
            ),
        },
    ]


def _exact_path(path: str) -> Config:
    return {"url_path": {"path": {"exact": path}}}


def _has_scope(scope: str) -> Config:
    return {
        "sourced_metadata": {
            "metadata_matcher": {
                "filter": JWT_AUTHN,
                "path": [{"key": JWT_PAYLOAD}, {"key": "scope"}],
                "value": {"list_match": {"one_of": {"string_match": {"exact": scope}}}},
            }
        }
    }
