"""Generates Envoy's configuration for the native run, the tests, compose and Kubernetes.

One function builds the config from the mesh topology; only addresses and paths
differ between deployments. ``python -m devtools.envoy_config`` rewrites the
checked-in files under envoy/ and deploy/k8s/base/envoy/ (``make generate``; CI
fails when they drift).
"""

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from devtools.access import method_access
from devtools.tokens import DEV_AUDIENCE, DEV_ISSUER, DEV_KEYS_DIR, JWKS
from devtools.topology import DESCRIPTOR_SET, DOCS_SITE, GRPC_PORTS, ROOT, grpc_services
from meshkit.identity import SUBJECT_HEADER

Config = dict[str, Any]

# Envoy's own error replies (bad JSON, unknown route, no healthy upstream, …)
# get the same JSON shape as gRPC errors converted by the transcoder.
ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(X-ENVOY-ORIGINAL-METHOD?:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%'
    ' %PROTOCOL%" %RESPONSE_CODE% grpc=%GRPC_STATUS% %DURATION%ms'
    " upstream=%UPSTREAM_CLUSTER% %RESPONSE_CODE_DETAILS%\n"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".yaml": "application/yaml; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# Per-route: not an API call, so the transcoder (which would answer "no such
# method") stays out of the way.
NOT_AN_API = {
    TRANSCODER: {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "disabled": True,
    }
}
LOCAL_REPLY_CODES = {400: 3, 404: 5, 405: 12, 413: 8, 415: 3, 503: 14, 504: 4}


@dataclass(frozen=True)
class EdgeAuth:
    """Whose tokens Envoy accepts: issuer, audiences and where the signing keys are.

    Development (the default): ``make up`` keeps a key pair under .run/auth/ and
    Envoy reads its public JWKS from a file. Production: any OIDC provider, set
    through the environment (``from_env``): AUTH_ISSUER, AUTH_AUDIENCES
    (comma-separated) and AUTH_JWKS_URI, which Envoy fetches and caches itself.
    """

    issuer: str = DEV_ISSUER
    audiences: tuple[str, ...] = (DEV_AUDIENCE,)
    jwks_file: str = str((DEV_KEYS_DIR / JWKS).relative_to(ROOT))
    jwks_uri: str = ""  # set: remote_jwks, jwks_file unused
    # Where Envoy finds trusted CAs for an https JWKS URI (Debian/Ubuntu and the
    # envoyproxy/envoy image).
    trusted_ca_file: str = "/etc/ssl/certs/ca-certificates.crt"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, base: "EdgeAuth | None" = None
    ) -> "EdgeAuth":
        auth = base or cls()
        if issuer := env.get("AUTH_ISSUER"):
            auth = replace(auth, issuer=issuer)
        if audiences := env.get("AUTH_AUDIENCES"):
            auth = replace(
                auth, audiences=tuple(a.strip() for a in audiences.split(",") if a.strip())
            )
        if jwks_uri := env.get("AUTH_JWKS_URI"):
            if urlsplit(jwks_uri).scheme not in ("http", "https"):
                raise ValueError(f"AUTH_JWKS_URI must be an http(s) URL, got {jwks_uri!r}")
            auth = replace(auth, jwks_uri=jwks_uri)
        if jwks_file := env.get("AUTH_JWKS_FILE"):
            auth = replace(auth, jwks_file=jwks_file)
        return auth


AUTH_ENV = ("AUTH_ISSUER", "AUTH_AUDIENCES", "AUTH_JWKS_URI", "AUTH_JWKS_FILE")


@dataclass(frozen=True)
class EnvoySite:
    """Where one Envoy listens and where it finds the backends."""

    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    admin_port: int = 9901
    descriptor_path: str = str(DESCRIPTOR_SET.relative_to(ROOT))
    # backend name → (host, port)
    backends: dict[str, tuple[str, int]] = field(
        default_factory=lambda: {name: ("127.0.0.1", port) for name, port in GRPC_PORTS.items()}
    )
    health_check_seconds: float = 2.0
    # Where Envoy finds the docs site (built into docs/site by `make docs`).
    docs_dir: str = str(DOCS_SITE.relative_to(ROOT))
    auth: EdgeAuth = field(default_factory=EdgeAuth)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _typed(type_name: str, **fields: Any) -> Config:
    """A typed_config block: ``type_name`` relative to envoy.extensions."""
    return {"@type": f"type.googleapis.com/envoy.extensions.{type_name}", **fields}


def _address(host: str, port: int) -> Config:
    return {"socket_address": {"address": host, "port_value": port}}


def _endpoint(host: str, port: int) -> Config:
    return {"endpoint": {"address": _address(host, port)}}


def _cluster(name: str, host: str, port: int, health_service: str, site: EnvoySite) -> Config:
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "upstreams.http.v3.HttpProtocolOptions",
                explicit_http_config={"http2_protocol_options": {}},
            )
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [_endpoint(host, port)]}],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": _seconds(site.health_check_seconds),
                # Without this, idle clusters are only checked once a minute.
                "no_traffic_interval": _seconds(site.health_check_seconds),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service},
            }
        ],
    }


def _local_reply_mapper(http_status: int, grpc_code: int) -> Config:
    return {
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {
                                    "default_value": http_status,
                                    "runtime_key": f"mesh.local_reply.{http_status}",
                                },
                            }
                        }
                    },
                    # Only REST callers get a JSON body; native gRPC callers get
                    # grpc-status trailers. The transcoder rewrites content-type to
                    # application/grpc before it can fail, so a transcoded request is
                    # recognised by the original path it leaves behind.
                    {
                        "or_filter": {
                            "filters": [
                                {
                                    "header_filter": {
                                        "header": {
                                            "name": "content-type",
                                            "string_match": {"prefix": "application/grpc"},
                                            "treat_missing_header_as_empty": True,
                                            "invert_match": True,
                                        }
                                    }
                                },
                                {
                                    "header_filter": {
                                        "header": {
                                            "name": "x-envoy-original-path",
                                            "present_match": True,
                                        }
                                    }
                                },
                            ]
                        }
                    },
                ]
            }
        },
        "body_format_override": {
            "json_format": {"code": grpc_code, "message": "%LOCAL_REPLY_BODY%", "details": []},
            "content_type": "application/json",
        },
    }


def _route(prefix: str, cluster: str) -> Config:
    return {
        "match": {"prefix": prefix},
        "route": {
            "cluster": cluster,
            "timeout": "30s",
            # Honour the caller's grpc-timeout, capped.
            "max_stream_duration": {"grpc_timeout_header_max": "30s"},
            # Only retries that are safe for every RPC: the request never reached a backend.
            "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2},
        },
    }


def _static_file(path: str, file: str, content_type: str) -> Config:
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": file}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": content_type},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
        "typed_per_filter_config": NOT_AN_API,
    }


def _docs_routes(site: EnvoySite, docs_site: Path) -> list[Config]:
    """/docs/…: every file of the built docs site, served by Envoy itself.

    Envoy reads each file once, at start (direct responses); the site is static.
    """
    routes = []
    for file in sorted(p for p in docs_site.rglob("*") if p.is_file()):
        relative = file.relative_to(docs_site).as_posix()
        content_type = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        paths = [f"/docs/{relative}"]
        if file.name == "index.html":
            paths.append(f"/docs/{relative.removesuffix('index.html')}")
        routes += [_static_file(p, f"{site.docs_dir}/{relative}", content_type) for p in paths]
    return routes + [
        {
            "match": {"path": p},
            "redirect": {"path_redirect": "/docs/"},
            "typed_per_filter_config": NOT_AN_API,
        }
        for p in ("/", "/docs")
    ]


def envoy_config(
    site: EnvoySite, descriptor_set: Path = DESCRIPTOR_SET, docs_site: Path = DOCS_SITE
) -> Config:
    services = grpc_services(descriptor_set)
    backends = sorted({s.backend for s in services}, key=lambda b: GRPC_PORTS[b])
    routes = _docs_routes(site, docs_site)
    routes += [_route(f"/{s.full_name}/", s.backend) for s in services]
    # Reflection: every backend serves the whole mesh's descriptors, so any
    # healthy one may answer. Health: a backend only knows its own services, and
    # a path cannot say which one is asked about, so the front door's
    # (inventory_svc) answers; Envoy's admin /clusters shows every backend.
    routes += [_route("/grpc.reflection.", "mesh_any"), _route("/grpc.health.v1.", backends[0])]
    clusters = [
        _cluster(b, *site.backends[b], next(s.full_name for s in services if s.backend == b), site)
        for b in backends
    ]
    any_backend = _cluster("mesh_any", *site.backends[backends[0]], "", site)
    any_backend["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        _endpoint(*site.backends[b]) for b in backends
    ]
    clusters.append(any_backend)
    if site.auth.jwks_uri:
        clusters.append(_jwks_cluster(site.auth))
    return {
        "admin": {"address": _address("127.0.0.1", site.admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(site.listen_address, site.listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                _http_connection_manager(site, services, routes, descriptor_set)
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _http_connection_manager(
    site: EnvoySite, services: list, routes: list[Config], descriptor_set: Path
) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            **_typed("filters.network.http_connection_manager.v3.HttpConnectionManager"),
            "stat_prefix": "ingress",
            "codec_type": "AUTO",  # HTTP/1.1 for REST, HTTP/2 (h2c) for native gRPC
            "access_log": [
                {
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": _typed(
                        "access_loggers.stream.v3.StdoutAccessLog",
                        log_format={"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}},
                    ),
                }
            ],
            "local_reply_config": {
                "mappers": [
                    *_audience_reply_mappers(),
                    *(
                        _local_reply_mapper(h, g)
                        for h, g in {**LOCAL_REPLY_CODES, **AUTH_REPLY_CODES}.items()
                    ),
                ]
            },
            "route_config": {
                "name": "mesh",
                # The docs' vendored JavaScript is served as direct responses.
                "max_direct_response_body_size_bytes": 16 * 1024 * 1024,
                "virtual_hosts": [{"name": "mesh", "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                {
                    "name": TRANSCODER,
                    "typed_config": _typed(
                        "filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                        proto_descriptor=site.descriptor_path,
                        services=[s.full_name for s in services],
                        # snake_case JSON (as in the seed), zeros and empty lists printed.
                        print_options={
                            "add_whitespace": False,
                            "always_print_primitive_fields": True,
                            "preserve_proto_field_names": True,
                        },
                        # gRPC errors become HTTP codes with a google.rpc.Status JSON body.
                        convert_grpc_status=True,
                        # Unknown routes → 404 and unknown query parameters → 400,
                        # instead of passing garbage upstream.
                        request_validation_options={
                            "reject_unknown_method": True,
                            "reject_unknown_query_parameters": True,
                            "reject_binding_body_field_collisions": True,
                        },
                    ),
                },
                # After the transcoder: REST calls carry their gRPC method path by
                # now, so one rule per RPC covers both ways in.
                *_auth_filters(site.auth, descriptor_set),
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": _typed("filters.http.router.v3.Router"),
                },
            ],
        },
    }


# --- identity and authorization ----------------------------------------------------
#
# Three filters after the transcoder, keyed by the gRPC method path, so REST and
# native gRPC callers meet the same rules (devtools/access.py):
#   1. header_mutation removes any x-mesh-subject a client sent;
#   2. jwt_authn verifies the bearer token on every RPC that needs a scope
#      (missing/invalid → 401 UNAUTHENTICATED) and sets x-mesh-subject from its
#      `sub`; public RPCs, health, reflection and /docs are not checked;
#   3. RBAC refuses a verified token without the RPC's scope (403 PERMISSION_DENIED).

JWT_AUTHN = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "mesh"
JWT_PAYLOAD = "jwt_payload"  # dynamic metadata key RBAC reads the scopes from
JWKS_CLUSTER = "jwks"
AUTH_REPLY_CODES = {401: 16, 403: 7}


def _cel(expression: str) -> Config:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": _typed(
                "access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
            ),
        }
    }


WRONG_AUDIENCE = (
    "response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"
)
# As in _local_reply_mapper: REST callers, including transcoded ones.
REST_CALLER = (
    "(!('content-type' in request.headers)"
    " || !request.headers['content-type'].startsWith('application/grpc')"
    " || 'x-envoy-original-path' in request.headers)"
)


def _audience_reply_mappers() -> list[Config]:
    """jwt_authn answers a token for another audience with 403; like every other
    invalid token it gets a 401 (RFC 6750 §3.1 invalid_token): UNAUTHENTICATED, not
    PERMISSION_DENIED, which RBAC keeps for a valid token without the scope.
    Mappers stop at the first match, so the REST one carries its JSON body."""
    return [
        {
            "filter": _cel(f"{WRONG_AUDIENCE} && {REST_CALLER}"),
            "status_code": 401,
            "body_format_override": {
                "json_format": {"code": 16, "message": "%LOCAL_REPLY_BODY%", "details": []},
                "content_type": "application/json",
            },
        },
        {"filter": _cel(WRONG_AUDIENCE), "status_code": 401},
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


def _jwks_cluster(auth: EdgeAuth) -> Config:
    url = urlsplit(auth.jwks_uri)
    host, tls = url.hostname or "", url.scheme == "https"
    cluster: Config = {
        "name": JWKS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "5s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": JWKS_CLUSTER,
            "endpoints": [{"lb_endpoints": [_endpoint(host, url.port or (443 if tls else 80))]}],
        },
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "transport_sockets.tls.v3.UpstreamTlsContext",
                sni=host,
                common_tls_context={
                    "validation_context": {
                        "trusted_ca": {"filename": auth.trusted_ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": host}}
                        ],
                    }
                },
            ),
        }
    return cluster


def _auth_filters(auth: EdgeAuth, descriptor_set: Path) -> list[Config]:
    methods = method_access(descriptor_set)
    protected = [m for m in methods if m.scope]
    # jwt_authn takes the first rule that matches: the public RPCs by exact path,
    # then anything else under a service's prefix needs a verified token. So a path
    # that is no known RPC (a typo, an encoding trick) is never let through unchecked.
    jwt_rules = [{"match": {"path": m.path}} for m in methods if not m.scope]
    jwt_rules += [
        {"match": {"prefix": f"/{service}/"}, "requires": {"provider_name": JWT_PROVIDER}}
        for service in sorted({m.service for m in methods})
    ]
    by_scope: dict[str, list[str]] = {}
    for method in protected:
        by_scope.setdefault(method.scope or "", []).append(method.path)
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": _typed(
                "filters.http.header_mutation.v3.HeaderMutation",
                mutations={"request_mutations": [{"remove": SUBJECT_HEADER}]},
            ),
        },
        {
            "name": JWT_AUTHN,
            "typed_config": _typed(
                "filters.http.jwt_authn.v3.JwtAuthentication",
                providers={JWT_PROVIDER: _jwt_provider(auth)},
                rules=jwt_rules,
            ),
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": _typed(
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


def render(site: EnvoySite, descriptor_set: Path = DESCRIPTOR_SET) -> str:
    header = "# Generated by `python -m devtools.envoy_config` (make generate). Do not edit.\n"
    return header + yaml.safe_dump(envoy_config(site, descriptor_set), sort_keys=False, width=100)


# The checked-in configs: what `make up` runs natively, and what compose mounts
# (compose.yaml: backends by service name, contracts and docs under /etc/envoy).
COMPOSE_SITE = EnvoySite(
    listen_address="0.0.0.0",
    descriptor_path="/etc/envoy/mesh.binpb",
    docs_dir="/etc/envoy/docs",
    auth=EdgeAuth(jwks_file="/etc/envoy/auth/jwks.json"),
    backends={name: (name.replace("_", "-"), port) for name, port in GRPC_PORTS.items()},
)
# Kubernetes (deploy/k8s): backends are headless Services, so DNS answers with
# every ready pod and STRICT_DNS makes each one an endpoint that Envoy balances
# over and health-checks; a short name resolves in Envoy's own namespace. The
# config and the descriptor set come from one ConfigMap, the docs site from the
# services' image, the token keys from the ConfigMap envoy-jwks the deployer
# makes (deploy/k8s/base/envoy-gateway.yaml).
K8S_DIR = ROOT / "deploy" / "k8s" / "base" / "envoy"
K8S_SITE = EnvoySite(
    listen_address="0.0.0.0",
    descriptor_path="/etc/envoy/config/mesh.binpb",
    docs_dir="/etc/envoy/docs",
    auth=EdgeAuth(jwks_file="/etc/envoy/auth/jwks.json"),
    backends={name: (name.replace("_", "-"), port) for name, port in GRPC_PORTS.items()},
)
SITES = {"native": EnvoySite(), "compose": COMPOSE_SITE, "k8s": K8S_SITE}
CHECKED_IN = {
    ROOT / "envoy" / "envoy.yaml": EnvoySite(),
    ROOT / "envoy" / "envoy.compose.yaml": COMPOSE_SITE,
    K8S_DIR / "envoy.yaml": K8S_SITE,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.envoy_config")
    parser.add_argument(
        "--auth-from-env",
        choices=list(SITES),
        help="render that site with AUTH_ISSUER/AUTH_AUDIENCES/AUTH_JWKS_URI from the"
        " environment (e.g. a real OIDC provider) to --out, instead of the checked-in files",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.auth_from_env:
        base = SITES[args.auth_from_env]
        site = replace(base, auth=EdgeAuth.from_env(base=base.auth))
        text = render(site)
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        return
    for path, site in CHECKED_IN.items():
        path.write_text(render(site))
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    # kustomize reads files only from inside its kustomization: the ConfigMap's
    # copy of the descriptor set lives next to the config.
    (K8S_DIR / DESCRIPTOR_SET.name).write_bytes(DESCRIPTOR_SET.read_bytes())
    print(f"wrote {(K8S_DIR / DESCRIPTOR_SET.name).relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
