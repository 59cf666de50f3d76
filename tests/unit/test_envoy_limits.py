"""The edge's limits as rendered into Envoy's config (the behaviour itself is tested
through a real Envoy in tests/e2e/test_edge_limits.py)."""

from blueprint.edge.grpc_input import LUA
from blueprint.edge.knobs import with_environment
from blueprint.edge.render import envoy_config
from blueprint.edge.replies import LOCAL_REPLIES, QUOTA_REPLIES
from blueprint.edge.settings import EnvoySite


def _manager(config: dict) -> dict:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _rpc_routes(config: dict) -> dict[str, dict]:
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    return {
        r["match"]["path"]: r for r in routes if r["match"].get("path", "").startswith("/polyglot.")
    }


def test_every_rpc_has_a_timeout_by_its_kind_that_also_caps_grpc_timeout():
    site = EnvoySite(timeouts={"read": 3.0, "write": 4.0, "report": 7.0, "meta": 9.0})
    routes = _rpc_routes(envoy_config(site))
    expected = {
        "/polyglot.inventory.v1.InventoryService/GetStock": "3s",
        "/polyglot.inventory.v1.InventoryService/DecreaseStock": "4s",
        "/polyglot.inventory.v1.InventoryService/RestockProduct": "4s",
        "/polyglot.analytics.v1.AnalyticsService/GetSalesSummary": "7s",
        "/polyglot.notify.v1.NotificationService/ListNotifications": "3s",
    }
    for path, timeout in expected.items():
        # max_stream_duration is the route's time limit (Envoy ignores a route's
        # `timeout` once it is set) and caps a caller's grpc-timeout.
        assert routes[path]["route"]["max_stream_duration"] == {
            "max_stream_duration": timeout,
            "grpc_timeout_header_max": timeout,
        }


def test_the_transcoders_copy_of_the_rest_path_is_not_forwarded():
    route_config = _manager(envoy_config(EnvoySite()))["route_config"]
    assert "x-envoy-original-path" in route_config["request_headers_to_remove"]


def test_every_grpc_method_and_health_runs_the_grpc_input_check_and_no_rest_path_does():
    config = envoy_config(EnvoySite())
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    checked = {
        r["match"].get("path") or r["match"].get("prefix")
        for r in routes
        if LUA in r.get("typed_per_filter_config", {})
    }
    assert checked == set(_rpc_routes(config)) | {"/grpc.health.v1."}
    lua = next(f for f in _manager(config)["http_filters"] if f["name"] == LUA)
    assert "default_source_code" not in lua["typed_config"]  # nowhere else
    assert not any(
        LUA in r.get("typed_per_filter_config", {})
        for r in _rpc_routes(envoy_config(EnvoySite(grpc_input_check=False))).values()
    )


def test_every_local_reply_status_gets_the_json_shape_and_a_grpc_status():
    mappers = _manager(envoy_config(EnvoySite()))["local_reply_config"]["mappers"]
    statuses = {
        m["filter"]
        .get("status_code_filter", {})
        .get("comparison", {})
        .get("value", {})
        .get("default_value")
        for m in mappers
        if "body_format_override" in m and "status_code_filter" in m["filter"]
    }
    assert statuses == set(LOCAL_REPLIES)
    grpc = [m for m in mappers if "and_filter" in m["filter"]]
    assert len(grpc) == len(LOCAL_REPLIES) + len(QUOTA_REPLIES)
    assert all(any(h["header"]["key"] == "grpc-status" for h in m["headers_to_add"]) for m in grpc)


def test_cors_origins_come_from_the_environment():
    assert EnvoySite().cors_allowed_origins == ()
    site = with_environment(
        EnvoySite(), {"CORS_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    )
    assert site.cors_allowed_origins == ("https://a.example", "https://b.example")
    vhost = _manager(envoy_config(site))["route_config"]["virtual_hosts"][0]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert policy["allow_origin_string_match"] == [
        {"exact": "https://a.example"},
        {"exact": "https://b.example"},
    ]
    assert (
        "typed_per_filter_config"
        not in _manager(envoy_config(EnvoySite()))["route_config"]["virtual_hosts"][0]
    )


def test_limits_reach_the_config():
    site = EnvoySite(
        rest_body_limit_bytes=1000,
        grpc_message_limit_bytes=2000,
        max_request_headers_kb=3,
        max_requests_per_backend=11,
        max_pending_per_backend=5,
        max_downstream_connections=77,
    )
    config = envoy_config(site)
    manager = _manager(config)
    assert manager["max_request_headers_kb"] == 3
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    assert filters["envoy.filters.http.grpc_json_transcoder"]["max_request_body_size"] == 1000
    assert filters["envoy.filters.http.buffer"]["max_request_bytes"] == 2005
    inventory = next(
        c for c in config["static_resources"]["clusters"] if c["name"] == "inventory_svc"
    )
    threshold = inventory["circuit_breakers"]["thresholds"][0]
    assert (threshold["max_requests"], threshold["max_pending_requests"]) == (11, 5)
    monitor = config["overload_manager"]["resource_monitors"][0]["typed_config"]
    assert monitor["max_active_downstream_connections"] == 77
