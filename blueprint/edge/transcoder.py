"""REST/JSON ↔ gRPC: Envoy's grpc_json_transcoder, from the contracts' descriptor set.

A REST call (``POST /inventory/decrease``) is rewritten to its gRPC method
(``/polyglot.inventory.v1.InventoryService/DecreaseStock``) and re-routed; the
answer goes back as JSON. Routes that are no API call switch it off (NOT_AN_API).
"""

from blueprint.contracts import Service
from blueprint.edge.blocks import Config, Named, typed
from blueprint.edge.settings import EnvoySite

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# Per-route: not an API call, so the transcoder (which would answer "no such
# method") stays out of the way.
NOT_AN_API = Named(
    "not_an_api",
    {
        TRANSCODER: {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    },
)


def transcoder_filter(site: EnvoySite, services: list[Service]) -> Config:
    return {
        "name": TRANSCODER,
        "typed_config": typed(
            "filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=site.descriptor_path,
            services=[s.full_name for s in services],
            # snake_case JSON (as in the seed), zeros and empty lists printed.
            print_options={
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
            # A bigger JSON body is refused (413) while it arrives, before
            # anything is sent upstream.
            max_request_body_size=site.rest_body_limit_bytes,
        ),
    }
