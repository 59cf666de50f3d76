"""meshkit.telemetry: nothing installed without an endpoint, service names, and the
trace context a sale hands to its outbox row (the relay's side is in
test_outbox_relay.py)."""

import json
import os
import subprocess
import sys

import pytest
from opentelemetry import trace

import polyglot.inventory.v1 as pb
from blueprint.topology import GRPC_PORTS, WORKERS
from inventory_svc import bootstrap
from inventory_svc.domain import Product
from inventory_svc.grpc_api import InventoryApi
from inventory_svc.store import NO_HEADERS, outbox_headers
from meshkit import telemetry
from tests.support.fakes import FakeInventory
from tests.support.tracing import in_memory_tracing

UNTRACED_ENV = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def run_python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**UNTRACED_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_without_an_endpoint_nothing_is_installed():
    """No SDK, no exporter, no interceptor, no middleware, no patched driver."""
    found = run_python(
        "import sys, asyncpg, opentelemetry.trace as t\n"
        "import inventory_svc.bootstrap, analytics_svc.bootstrap, notify_svc.bootstrap\n"
        "from meshkit import telemetry\n"
        "tracing = telemetry.start_tracing('inventory_svc')\n"
        "print(tracing.enabled, telemetry.grpc_server_interceptors(),"
        " telemetry.broker_middlewares(), type(t.get_tracer_provider()).__name__,"
        " hasattr(asyncpg.Connection.execute, '__wrapped__'),"
        " any(m.startswith('opentelemetry.sdk') for m in sys.modules))"
    )
    assert found == "False [] () ProxyTracerProvider False False"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "inventory_relay"),  # the process's own name
        ({"OTEL_SERVICE_NAME": "relay-eu"}, "relay-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=r2,deployment.environment=ci"}, "r2"),
    ],
)
def test_the_service_name_is_the_process_unless_the_environment_says(env, expected):
    found = run_python(
        "from opentelemetry import trace\n"
        "from meshkit import telemetry\n"
        "tracing = telemetry.start_tracing('inventory_relay')\n"
        "attributes = trace.get_tracer_provider().resource.attributes\n"
        "print(tracing.enabled, attributes['service.name'],"
        " bool(attributes['service.instance.id']),"
        " len(telemetry.grpc_server_interceptors()), len(telemetry.broker_middlewares()))",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # nothing exported in this test
        **env,
    )
    assert found == f"True {expected} True 1 1"


def test_default_service_names_are_the_process_names_of_the_topology():
    assert bootstrap.SERVICE_NAME in GRPC_PORTS
    assert bootstrap.RELAY_SERVICE_NAME in WORKERS
    assert WORKERS[bootstrap.RELAY_SERVICE_NAME][0] == "inventory_svc.relay"


@pytest.mark.parametrize(
    ("env", "configured"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_configured_by_the_standard_variables(env, configured):
    assert telemetry.tracing_configured(env) is configured


async def test_decrease_stock_hands_its_trace_context_to_the_outbox_row():
    store = FakeInventory(Product(1, "Laptop", 10))
    with in_memory_tracing() as (provider, _):
        call = provider.get_tracer("test").start_span("DecreaseStock")
        with trace.use_span(call, end_on_exit=True):
            await InventoryApi(store).decrease_stock(
                pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="ORD-t1")
            )
    [request] = store.requests
    ids = call.get_span_context()
    [(name, traceparent)] = json.loads(outbox_headers(request)).items()
    assert name == "traceparent"
    assert traceparent.split("-")[1:3] == [f"{ids.trace_id:032x}", f"{ids.span_id:016x}"]


async def test_an_untraced_call_stores_no_headers():
    store = FakeInventory(Product(1, "Laptop", 10))
    assert not trace.get_current_span().get_span_context().is_valid
    await InventoryApi(store).decrease_stock(
        pb.DecreaseStockRequest(product_id=1, quantity=1, order_id="ORD-t2")
    )
    assert outbox_headers(store.requests[0]) == NO_HEADERS
