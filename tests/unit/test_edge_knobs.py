"""The edge knobs from the environment (blueprint/edge/knobs.py): names, profiles, bounds,
the table in envoy/README.md, and what `make up` and `--from-env` render with them. What Envoy
then does with them is tested through a real Envoy (tests/e2e/test_edge_quotas.py)."""

import dataclasses
import re

import pytest
import yaml

from blueprint.edge.knobs import EDGE_ENV, EdgeKnobs, markdown_table, variable, with_environment
from blueprint.edge.render import K8S_SITE, envoy_config, main
from blueprint.edge.settings import EnvoySite
from blueprint.topology import ROOT
from devtools.launcher import edge_config
from devtools.plan import native_plan

DECREASE = "/polyglot.inventory.v1.InventoryService/DecreaseStock"
RESTOCK = "/polyglot.inventory.v1.InventoryService/RestockProduct"
RATE_LIMIT = "envoy.filters.http.local_ratelimit"


def _manager(config: dict) -> dict:
    listener = config["static_resources"]["listeners"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _routes(config: dict) -> dict[str, dict]:
    routes = _manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    return {r["match"]["path"]: r for r in routes if "path" in r["match"]}


def _filters(config: dict) -> list[dict]:
    return _manager(config)["http_filters"]


# --- reading the environment -------------------------------------------------------


def test_without_variables_the_development_defaults_are_the_sites_own():
    knobs = EdgeKnobs.from_env({})
    assert knobs.profile == "development"
    assert knobs.apply(EnvoySite()) == EnvoySite()
    # Generous: 200 simultaneous orders with one token fit in the burst.
    assert knobs.mutation_burst >= 200 and knobs.anonymous_burst >= 200


def test_production_has_per_customer_quotas_and_a_variable_still_wins():
    production = EdgeKnobs.from_env({"EDGE_PROFILE": "production"})
    assert (production.mutations_per_second, production.mutation_burst) == (50, 100)
    assert (production.anonymous_per_second, production.anonymous_burst) == (20, 40)
    # What the profiles do not distinguish stays as in development.
    assert production.rest_body_limit_bytes == EnvoySite().rest_body_limit_bytes
    tuned = EdgeKnobs.from_env({"EDGE_PROFILE": "production", "EDGE_MUTATIONS_PER_SECOND": "80"})
    assert (tuned.mutations_per_second, tuned.mutation_burst) == (80, 100)


@pytest.mark.parametrize(
    ("env", "site_field", "value"),
    [
        ({"EDGE_MUTATIONS_PER_SECOND": "7", "EDGE_MUTATION_BURST": "9"}, "mutation_burst", 9),
        ({"EDGE_MUTATIONS_PER_SECOND": "0"}, "mutation_rate_per_second", 0),
        ({"EDGE_ANONYMOUS_PER_SECOND": "5", "EDGE_ANONYMOUS_BURST": "6"}, "anonymous_burst", 6),
        ({"EDGE_REST_BODY_LIMIT_BYTES": "2048"}, "rest_body_limit_bytes", 2048),
        ({"EDGE_GRPC_MESSAGE_LIMIT_BYTES": "4096"}, "grpc_message_limit_bytes", 4096),
        ({"EDGE_MAX_REQUEST_HEADERS_KB": "4"}, "max_request_headers_kb", 4),
        ({"EDGE_MAX_REQUEST_HEADERS_COUNT": "30"}, "max_request_headers_count", 30),
        ({"EDGE_MAX_REQUESTS_PER_BACKEND": "12"}, "max_requests_per_backend", 12),
        ({"EDGE_MAX_PENDING_PER_BACKEND": "3"}, "max_pending_per_backend", 3),
        ({"EDGE_MAX_CONNECTIONS": "500"}, "max_downstream_connections", 500),
        (
            {"EDGE_CORS_ALLOWED_ORIGINS": "https://a.example, http://b.example:8000"},
            "cors_allowed_origins",
            ("https://a.example", "http://b.example:8000"),
        ),
        (
            {"CORS_ALLOWED_ORIGINS": "https://a.example"},
            "cors_allowed_origins",
            ("https://a.example",),
        ),
    ],
)
def test_each_variable_sets_its_site_field(env, site_field, value):
    site = EdgeKnobs.from_env(env).apply(EnvoySite())
    assert getattr(site, site_field) == value


def test_timeouts_are_one_variable_per_kind_of_rpc():
    env = {"EDGE_READ_TIMEOUT_SECONDS": "3", "EDGE_REPORT_TIMEOUT_SECONDS": "30.5"}
    site = EdgeKnobs.from_env(env).apply(EnvoySite())
    assert site.timeouts == {"read": 3.0, "write": 10.0, "report": 30.5, "meta": 10.0}


@pytest.mark.parametrize(
    ("env", "named", "reason"),
    [
        (
            {"EDGE_MUTATIONS_PER_SECOND": "-1"},
            "EDGE_MUTATIONS_PER_SECOND",
            "greater than or equal to 0",
        ),
        ({"EDGE_MUTATIONS_PER_SECOND": "lots"}, "EDGE_MUTATIONS_PER_SECOND", "valid integer"),
        ({"EDGE_MUTATION_BURST": "0"}, "EDGE_MUTATION_BURST", "greater than or equal to 1"),
        (
            {"EDGE_ANONYMOUS_PER_SECOND": "2000000"},
            "EDGE_ANONYMOUS_PER_SECOND",
            "less than or equal",
        ),
        ({"EDGE_PROFILE": "staging"}, "EDGE_PROFILE", "'development' or 'production'"),
        (
            {"EDGE_REST_BODY_LIMIT_BYTES": "10"},
            "EDGE_REST_BODY_LIMIT_BYTES",
            "greater than or equal to 1024",
        ),
        (
            {"EDGE_MAX_REQUEST_HEADERS_KB": "8"},
            "EDGE_MAX_REQUEST_HEADERS_KB",
            "less than or equal to 7",
        ),
        ({"EDGE_WRITE_TIMEOUT_SECONDS": "0"}, "EDGE_WRITE_TIMEOUT_SECONDS", "greater than 0"),
        (
            {"EDGE_CORS_ALLOWED_ORIGINS": "shop.example"},
            "EDGE_CORS_ALLOWED_ORIGINS",
            "not an origin",
        ),
        (
            {"CORS_ALLOWED_ORIGINS": "https://shop.example/app"},
            "EDGE_CORS_ALLOWED_ORIGINS",
            "not an origin",
        ),
        (
            {"EDGE_MUTATIONS_PER_SECOND": "100", "EDGE_MUTATION_BURST": "50"},
            "EDGE_MUTATION_BURST=50 is below EDGE_MUTATIONS_PER_SECOND=100",
            "one second",
        ),
        (
            {"EDGE_PROFILE": "production", "EDGE_ANONYMOUS_PER_SECOND": "41"},
            "EDGE_ANONYMOUS_BURST=40 is below EDGE_ANONYMOUS_PER_SECOND=41",
            "one second",
        ),
    ],
)
def test_a_wrong_value_stops_with_a_message_naming_the_variable(env, named, reason):
    with pytest.raises(ValueError, match=re.escape(named)) as refused:
        EdgeKnobs.from_env(env)
    assert reason in str(refused.value)


def test_only_the_given_environment_is_read(monkeypatch):
    monkeypatch.setenv("EDGE_MUTATIONS_PER_SECOND", "3")
    assert EdgeKnobs.from_env({}).mutations_per_second == EnvoySite().mutation_rate_per_second
    assert EdgeKnobs.from_env().mutations_per_second == 3  # default: the process's own


def test_every_knob_variable_makes_make_up_render_envoys_config():
    for name in EdgeKnobs.model_fields:
        assert variable(name) in EDGE_ENV
    assert {"CORS_ALLOWED_ORIGINS", "AUTH_ISSUER", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= set(EDGE_ENV)


def test_envoys_readme_lists_every_knob_in_one_table():
    page = (ROOT / "envoy" / "README.md").read_text()
    assert markdown_table() in page
    for name in EdgeKnobs.model_fields:
        assert page.count(f"| `{variable(name)}`") == 1, variable(name)


# --- what the knobs render ---------------------------------------------------------


def test_mutations_are_limited_per_subject_with_a_per_address_bucket_for_tokens_without_one():
    site = EdgeKnobs.from_env(
        {
            "EDGE_MUTATIONS_PER_SECOND": "7",
            "EDGE_MUTATION_BURST": "9",
            "EDGE_ANONYMOUS_PER_SECOND": "3",
            "EDGE_ANONYMOUS_BURST": "4",
        }
    ).apply(EnvoySite())
    routes = _routes(envoy_config(site))
    limited = {
        path for path, r in routes.items() if RATE_LIMIT in r.get("typed_per_filter_config", {})
    }
    assert limited == {DECREASE, RESTOCK}
    limit = routes[DECREASE]["typed_per_filter_config"][RATE_LIMIT]
    by_key = {
        tuple(e["key"] for e in d["entries"]): d["token_bucket"] for d in limit["descriptors"]
    }
    assert by_key[("subject",)] == {"max_tokens": 9, "tokens_per_fill": 7, "fill_interval": "1s"}
    assert by_key[("anonymous", "remote_address")]["max_tokens"] == 4
    assert limit["always_consume_default_token_bucket"] is False


def test_calls_without_a_token_are_counted_per_address_before_the_token_check():
    config = envoy_config(EnvoySite(anonymous_rate_per_second=3, anonymous_burst=4))
    names = [f["name"] for f in _filters(config)]
    anonymous = names.index("mesh.anonymous_ratelimit")
    # After the client's copy of the subject header is removed, before jwt_authn.
    assert names.index("envoy.filters.http.header_mutation") < anonymous
    assert anonymous < names.index("envoy.filters.http.jwt_authn")
    limit = _filters(config)[anonymous]["typed_config"]
    assert [d["token_bucket"]["max_tokens"] for d in limit["descriptors"]] == [4]


def test_zero_turns_each_quota_off():
    site = EdgeKnobs.from_env(
        {"EDGE_MUTATIONS_PER_SECOND": "0", "EDGE_ANONYMOUS_PER_SECOND": "0"}
    ).apply(EnvoySite())
    config = envoy_config(site)
    assert not any(
        RATE_LIMIT in r.get("typed_per_filter_config", {}) for r in _routes(config).values()
    )
    assert "mesh.anonymous_ratelimit" not in [f["name"] for f in _filters(config)]


def test_make_up_renders_envoys_config_from_any_edge_variable(tmp_path):
    plan = dataclasses.replace(native_plan({}, replicas=1), run_dir=tmp_path)
    assert edge_config(plan, {}).envoy_config == plan.envoy_config  # the checked-in file
    rendered = edge_config(plan, {"EDGE_MUTATIONS_PER_SECOND": "5", "EDGE_MUTATION_BURST": "6"})
    assert rendered.envoy_config == tmp_path / "envoy.yaml"
    routes = _routes(yaml.safe_load(rendered.envoy_config.read_text()))
    limit = routes[DECREASE]["typed_per_filter_config"][RATE_LIMIT]
    assert limit["descriptors"][0]["token_bucket"]["max_tokens"] == 6


def test_the_cli_renders_a_deployment_with_every_edge_variable(tmp_path, monkeypatch):
    for name in EDGE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EDGE_PROFILE", "production")
    monkeypatch.setenv("EDGE_REST_BODY_LIMIT_BYTES", "4096")
    monkeypatch.setenv("AUTH_ISSUER", "https://id.example.com/")
    main(["--from-env", "k8s", "--out", str(tmp_path / "envoy.yaml")])
    config = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    assert config == envoy_config(
        with_environment(
            K8S_SITE,
            {
                "EDGE_PROFILE": "production",
                "EDGE_REST_BODY_LIMIT_BYTES": "4096",
                "AUTH_ISSUER": "https://id.example.com/",
            },
        )
    )
    limit = _routes(config)[DECREASE]["typed_per_filter_config"][RATE_LIMIT]
    assert limit["descriptors"][0]["token_bucket"]["tokens_per_fill"] == 50


def test_the_cli_stops_with_the_variable_when_a_value_is_wrong(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_MUTATION_BURST", "-5")
    with pytest.raises(SystemExit) as stopped:
        main(["--from-env", "native", "--out", str(tmp_path / "envoy.yaml")])
    assert stopped.value.code == 2
    assert "EDGE_MUTATION_BURST" in capsys.readouterr().err
    assert not (tmp_path / "envoy.yaml").exists()
