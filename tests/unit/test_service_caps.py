"""The services' own caps and Envoy's agree on who answers first."""

from blueprint.edge.settings import EnvoySite
from meshkit.settings import ServiceSettings


def test_envoys_circuit_breaker_answers_before_a_services_concurrency_cap():
    # Behind one Envoy, an overload gets Envoy's fast 503 with retry-after; the
    # service's RESOURCE_EXHAUSTED is for callers that bypass Envoy.
    assert ServiceSettings().grpc_max_concurrent_rpcs > EnvoySite.max_requests_per_backend


def test_a_service_accepts_every_message_envoy_forwards():
    assert ServiceSettings().grpc_max_message_bytes >= EnvoySite.grpc_message_limit_bytes
