"""Generates Envoy's configuration for the native run, the tests and compose.

One function builds the config from the mesh topology; only addresses and paths
differ between deployments. ``python -m devtools.envoy_config`` rewrites the
checked-in files under envoy/ (``make generate``; CI fails when they drift).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.topology import DESCRIPTOR_SET, DOCS_SITE, GRPC_PORTS, ROOT, grpc_services

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
    return {
        "admin": {"address": _address("127.0.0.1", site.admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _address(site.listen_address, site.listen_port),
                    "filter_chains": [
                        {"filters": [_http_connection_manager(site, services, routes)]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _http_connection_manager(site: EnvoySite, services: list, routes: list[Config]) -> Config:
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
                "mappers": [_local_reply_mapper(h, g) for h, g in LOCAL_REPLY_CODES.items()]
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
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": _typed("filters.http.router.v3.Router"),
                },
            ],
        },
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
    backends={name: (name.replace("_", "-"), port) for name, port in GRPC_PORTS.items()},
)
CHECKED_IN = {
    ROOT / "envoy" / "envoy.yaml": EnvoySite(),
    ROOT / "envoy" / "envoy.compose.yaml": COMPOSE_SITE,
}


def main() -> None:
    for path, site in CHECKED_IN.items():
        path.write_text(render(site))
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
