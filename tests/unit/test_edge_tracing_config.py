"""Envoy's tracer as rendered from the OpenTelemetry variables (the behaviour itself is
tested through a real Envoy and a real OTLP receiver in tests/e2e/test_edge_tracing.py)."""

import dataclasses
import re

import pytest
import yaml

from blueprint.edge.knobs import EDGE_ENV, with_environment
from blueprint.edge.listener import ACCESS_LOG_FORMAT
from blueprint.edge.render import envoy_config
from blueprint.edge.settings import AUTH_ENV, EdgeTracing, EnvoySite
from blueprint.edge.tracing import OTLP_CLUSTER
from devtools.launcher import edge_auth
from devtools.plan import native_plan

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4317"}
SAMPLERS = "envoy.tracers.opentelemetry.samplers."


def _manager(config: dict) -> dict:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _clusters(config: dict) -> dict[str, dict]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _rpc_routes(config: dict) -> list[dict]:
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    return [r for r in routes if r["match"].get("path", "").startswith("/polyglot.")]


def _sampler(env: dict[str, str]) -> dict:
    site = with_environment(EnvoySite(), {**ENDPOINT, **env})
    return _manager(envoy_config(site))["tracing"]["provider"]["typed_config"]["sampler"]


def _ratio(sampler: dict) -> int:
    """Parts per million of a trace_id_ratio_based sampler."""
    assert sampler["name"] == SAMPLERS + "trace_id_ratio_based"
    percentage = sampler["typed_config"]["sampling_percentage"]
    assert percentage["denominator"] == "MILLION"
    return percentage["numerator"]


def test_without_an_endpoint_there_is_no_tracer_at_all():
    for env in (
        {},
        {"OTEL_TRACES_SAMPLER": "always_on"},
        {**ENDPOINT, "OTEL_SDK_DISABLED": "true"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"},
    ):
        site = with_environment(EnvoySite(), env)
        assert site.tracing is None
        config = envoy_config(site)
        manager = _manager(config)
        assert "tracing" not in manager
        assert OTLP_CLUSTER not in _clusters(config)
        assert manager["http_filters"][0]["name"] == "envoy.filters.http.cors"
        assert not any("decorator" in r for r in _rpc_routes(config))
        assert "x-trace-id" not in str(manager)


def test_an_endpoint_gives_envoy_an_opentelemetry_tracer_named_envoy():
    env = {
        **ENDPOINT,
        "OTEL_SERVICE_NAME": "inventory_svc",  # meant for a service, not for Envoy
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,service.name=x,team=a%20b",
    }
    config = envoy_config(with_environment(EnvoySite(), env))
    tracing = _manager(config)["tracing"]
    assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    tracer = tracing["provider"]["typed_config"]
    assert tracer["service_name"] == "envoy"
    assert tracer["grpc_service"]["envoy_grpc"]["cluster_name"] == OTLP_CLUSTER
    [detector] = tracer["resource_detectors"]
    assert detector["typed_config"]["attributes"] == {
        "deployment.environment": "staging",
        "team": "a b",
    }
    otlp = _clusters(config)[OTLP_CLUSTER]
    address = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "collector.example", "port_value": 4317}
    assert "transport_socket" not in otlp


def test_every_answer_gets_the_trace_id_and_each_rpc_names_its_span():
    config = envoy_config(with_environment(EnvoySite(), ENDPOINT))
    first = _manager(config)["http_filters"][0]
    assert first["name"] == "envoy.filters.http.header_mutation"
    [mutation] = first["typed_config"]["mutations"]["response_mutations"]
    assert mutation["append"]["header"] == {"key": "x-trace-id", "value": "%TRACE_ID%"}
    decorators = {r["match"]["path"]: r["decorator"] for r in _rpc_routes(config)}
    assert decorators["/polyglot.inventory.v1.InventoryService/DecreaseStock"] == {
        "operation": "polyglot.inventory.v1.InventoryService/DecreaseStock",
        "propagate": False,
    }
    assert "%TRACE_ID%" in ACCESS_LOG_FORMAT


def test_the_traces_endpoint_wins_and_https_means_tls():
    env = {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otlp.example"}
    otlp = _clusters(envoy_config(with_environment(EnvoySite(), env)))[OTLP_CLUSTER]
    address = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "otlp.example", "port_value": 443}
    assert otlp["transport_socket"]["typed_config"]["sni"] == "otlp.example"


def test_the_default_sampler_continues_the_callers_decision_and_samples_new_traces():
    sampler = _sampler({})
    assert sampler["name"] == SAMPLERS + "parent_based"
    assert sampler["typed_config"]["wrapped_sampler"]["name"] == SAMPLERS + "always_on"


@pytest.mark.parametrize(
    ("name", "argument", "parent_based", "parts_per_million"),
    [
        ("parentbased_traceidratio", "0.1", True, 100_000),
        ("parentbased_traceidratio", "", True, 1_000_000),  # the ratio defaults to 1
        ("traceidratio", "0.25", False, 250_000),
        ("traceidratio", "0.0001", False, 100),
        ("parentbased_always_off", "", True, 0),
        ("always_off", "0.5", False, 0),  # the argument means nothing to always_off
    ],
)
def test_ratio_samplers_map_to_parts_per_million(name, argument, parent_based, parts_per_million):
    sampler = _sampler({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": argument})
    if parent_based:
        assert sampler["name"] == SAMPLERS + "parent_based"
        sampler = sampler["typed_config"]["wrapped_sampler"]
    assert _ratio(sampler) == parts_per_million


def test_always_on_ignores_the_callers_decision():
    assert _sampler({"OTEL_TRACES_SAMPLER": "always_on"})["name"] == SAMPLERS + "always_on"
    assert _sampler({"OTEL_TRACES_SAMPLER": "ALWAYS_ON"})["name"] == SAMPLERS + "always_on"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "jaeger_remote"),
        ({"OTEL_TRACES_SAMPLER_ARG": "ten percent"}, "must be a number"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "within [0, 1]"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "http(s) URL"),
    ],
)
def test_settings_envoy_cannot_apply_are_refused_with_the_reason(env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EdgeTracing.from_env({**ENDPOINT, **env})


def test_make_up_renders_envoys_config_with_the_tracer_when_an_endpoint_is_set(
    tmp_path, monkeypatch
):
    for name in (*AUTH_ENV, *EDGE_ENV):
        monkeypatch.delenv(name, raising=False)
    plan = dataclasses.replace(native_plan({}, replicas=1), run_dir=tmp_path)
    assert edge_auth(plan)[0].envoy_config == plan.envoy_config  # the checked-in file
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    rendered = edge_auth(plan)[0].envoy_config
    assert rendered == tmp_path / "envoy.yaml"
    config = yaml.safe_load(rendered.read_text())
    assert _manager(config)["tracing"]["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert OTLP_CLUSTER in _clusters(config)
