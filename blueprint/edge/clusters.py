"""Where Envoy sends calls: one cluster per backend, and clusters for services
outside the mesh (a JWKS server, an OTLP collector).

A backend's cluster lists every replica (EnvoySite.backends), balances by least
requests, checks each one's gRPC health and ejects one that keeps failing
(blueprint.edge.admission). ``mesh_any`` holds every replica of every backend, for
what any of them can answer (reflection).
"""

from typing import Any
from urllib.parse import urlsplit

from blueprint.edge.admission import circuit_breakers, outlier_detection
from blueprint.edge.blocks import Config, Named, endpoint, seconds, typed
from blueprint.edge.settings import EnvoySite

ANY_BACKEND = "mesh_any"


def http2_upstream(**http2_options: Any) -> Config:
    """A cluster's protocol options: HTTP/2 to the upstream (gRPC needs it)."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": http2_options},
        )
    }


def backend_clusters(site: EnvoySite, health_services: dict[str, str]) -> list[Config]:
    """One cluster per backend (health-checked by the gRPC service name it is
    given), in the given order, then ``mesh_any``. Their limits are the same
    blocks, written once in the YAML."""
    shared = {
        # A backend that died without closing its connection is noticed within
        # seconds, not at the next call's timeout.
        "typed_extension_protocol_options": Named(
            "backend_http2",
            http2_upstream(connection_keepalive={"interval": "10s", "timeout": "2s"}),
        ),
        "circuit_breakers": Named("backend_circuit_breakers", circuit_breakers(site)),
        "outlier_detection": Named("backend_outlier_detection", outlier_detection(site)),
    }
    every_replica = [a for b in health_services for a in site.backends[b]]
    return [
        *(_backend(b, site.backends[b], health_services[b], site, shared) for b in health_services),
        _backend(ANY_BACKEND, every_replica, "", site, shared),
    ]


def _backend(
    name: str,
    addresses: list[tuple[str, int]],
    health_service: str,
    site: EnvoySite,
    shared: Config,
) -> Config:
    """A backend's replicas: least-request balancing, an active gRPC health check of
    each endpoint, and outlier detection that ejects one that keeps failing."""
    return {
        "name": name,
        "type": "STRICT_DNS",
        # Of two random healthy replicas, the one with fewer calls in flight: a slow
        # replica gets less work instead of an equal share.
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint(*address) for address in addresses]}],
        },
        **shared,
        "health_checks": [
            {
                "timeout": "1s",
                "interval": seconds(site.health_check_seconds),
                # Without this, idle clusters are only checked once a minute.
                "no_traffic_interval": seconds(site.health_check_seconds),
                # A backend that is down is probed more often, so a restarted one
                # is back in rotation within half a second of answering SERVING.
                "unhealthy_interval": seconds(min(site.health_check_seconds, 0.5)),
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health_service} if health_service else {},
            }
        ],
    }


def external_cluster(
    name: str, url_text: str, plain_port: int, trusted_ca_file: str, connect_timeout: str
) -> Config:
    """A cluster for a service outside the mesh (an OTLP collector, a JWKS server)
    at a URL: an https URL gets TLS with the server's name checked against the CA."""
    url = urlsplit(url_text)
    host, tls = url.hostname or "", url.scheme == "https"
    cluster: Config = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": connect_timeout,
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [endpoint(host, url.port or (443 if tls else plain_port))]}
            ],
        },
    }
    if tls:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(
                "transport_sockets.tls.v3.UpstreamTlsContext",
                sni=host,
                common_tls_context={
                    "validation_context": {
                        "trusted_ca": {"filename": trusted_ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": host}}
                        ],
                    }
                },
            ),
        }
    return cluster
