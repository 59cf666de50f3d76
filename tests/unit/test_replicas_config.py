"""Replicas as rendered: ports and process names (blueprint.topology) and Envoy's
balancing, ejection and retries (the behaviour itself: tests/e2e/test_replicas.py)."""

import dataclasses

import yaml

from blueprint.edge.knobs import EDGE_ENV
from blueprint.edge.render import envoy_config
from blueprint.edge.routes import SAFE_RETRY_ON, UNSAFE_RETRY_ON
from blueprint.edge.settings import AUTH_ENV, EnvoySite
from blueprint.topology import (
    api_replicas,
    backends,
    base_name,
    module_of,
    native_ports,
    process_names,
)
from devtools.launcher import edge_auth
from devtools.plan import native_plan
from tests.unit.test_envoy_limits import _manager, _rpc_routes

INVENTORY = "/polyglot.inventory.v1.InventoryService"


def test_replicas_get_distinct_ports_and_names_and_the_relay_its_own_module():
    ports = native_ports(3)
    assert len(set(ports.values())) == len(ports) == 3 * 4
    assert ports["inventory_svc"] == 50051 and ports["inventory_svc-2"] == 50061
    assert ports["inventory_relay"] == 50054 and ports["inventory_relay-3"] == 50074
    assert process_names(["inventory_svc"], 2) == [
        "inventory_svc",
        "inventory_svc-2",
        "inventory_relay",
        "inventory_relay-2",
    ]
    assert module_of("inventory_relay-2") == "inventory_svc.relay"
    assert module_of("notify_svc-2") == "notify_svc"
    assert base_name("analytics_svc-12") == "analytics_svc"
    # Envoy balances over the API backends' replicas, never over a relay.
    assert api_replicas(ports) == {
        "inventory_svc": [50051, 50061, 50071],
        "analytics_svc": [50052, 50062, 50072],
        "notify_svc": [50053, 50063, 50073],
    }


def test_every_replica_is_an_endpoint_balanced_by_least_request_health_checked_and_ejectable():
    site = EnvoySite(
        backends={
            name: [("127.0.0.1", port) for port in ports]
            for name, ports in api_replicas(native_ports(2)).items()
        }
    )
    clusters = {c["name"]: c for c in envoy_config(site)["static_resources"]["clusters"]}
    for name in backends():
        cluster = clusters[name]
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
        assert ports == [native_ports(2)[name], native_ports(2)[f"{name}-2"]]
        assert cluster["lb_policy"] == "LEAST_REQUEST"
        assert cluster["health_checks"][0]["grpc_health_check"]["service_name"]
        assert cluster["outlier_detection"]["max_ejection_percent"] == 50
        budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]
        assert budget["budget_percent"] == {"value": site.retry_budget_percent}
    assert len(clusters["mesh_any"]["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 6


def test_reads_and_decrease_stock_are_retried_after_a_reset_restock_never():
    config = envoy_config(EnvoySite(per_try_timeout_seconds=6.0))
    routes = _rpc_routes(config)
    # A route without a retry policy of its own follows its virtual host's.
    default = _manager(config)["route_config"]["virtual_hosts"][0]["retry_policy"]
    for path in (
        f"{INVENTORY}/DecreaseStock",
        f"{INVENTORY}/GetStock",
        f"{INVENTORY}/ListProducts",
        "/polyglot.analytics.v1.AnalyticsService/GetSalesSummary",
        "/polyglot.notify.v1.NotificationService/ListNotifications",
    ):
        policy = routes[path]["route"].get("retry_policy", default)
        assert policy["retry_on"] == SAFE_RETRY_ON, path
        assert {"reset", "unavailable"} <= set(policy["retry_on"].split(","))
        assert policy["per_try_timeout"] == "6s"
        assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")
    restock = routes[f"{INVENTORY}/RestockProduct"]["route"].get("retry_policy", default)
    assert restock["retry_on"] == UNSAFE_RETRY_ON
    assert not {"reset", "unavailable", "5xx"} & set(restock["retry_on"].split(","))


def test_a_try_never_outlasts_its_routes_time_limit():
    site = EnvoySite(per_try_timeout_seconds=6.0, timeouts={**EnvoySite().timeouts, "read": 4.0})
    config = envoy_config(site)
    default = _manager(config)["route_config"]["virtual_hosts"][0]["retry_policy"]
    assert default["per_try_timeout"] == "6s"
    read = _rpc_routes(config)[f"{INVENTORY}/GetStock"]["route"].get("retry_policy", default)
    assert read["retry_on"] == SAFE_RETRY_ON
    assert read["per_try_timeout"] == "4s"


def test_replicas_make_up_renders_an_envoy_config_listing_every_replica(tmp_path, monkeypatch):
    for name in (*AUTH_ENV, *EDGE_ENV):
        monkeypatch.delenv(name, raising=False)
    one = dataclasses.replace(native_plan({}, replicas=1), run_dir=tmp_path)
    assert edge_auth(one)[0].envoy_config == one.envoy_config  # the checked-in file
    two = dataclasses.replace(native_plan({}, replicas=2), run_dir=tmp_path)
    plan, _ = edge_auth(two)
    assert plan.envoy_config == tmp_path / "envoy.yaml"
    clusters = yaml.safe_load(plan.envoy_config.read_text())["static_resources"]["clusters"]
    (inventory,) = [c for c in clusters if c["name"] == "inventory_svc"]
    endpoints = inventory["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [
        50051,
        50061,
    ]
