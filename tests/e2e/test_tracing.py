"""One trace per order, from the REST call to the e-mail, across the outbox and the
broker (issue 11). A mesh of its own, Envoy included, exports to a real OTLP/gRPC
receiver (tests/support/otlp.py); its broker connections go through a proxy we can cut.
"""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from devtools.processes import grpc_health
from devtools.sandbox import (
    Mesh,
    create_database,
    create_vhost,
    delete_vhost,
    drop_database,
)
from tests.support.net import TcpProxy
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.sales import decrease_body, order
from tests.support.servers import PG_SERVER_URL, RABBIT_SERVER_URL, start_test_mesh
from tests.support.smtp import MailCatcher
from tests.support.waiting import eventually

DECREASE_STOCK = "/polyglot.inventory.v1.InventoryService/DecreaseStock"
PRODUCT = 1  # seeded with 100 units in the mesh's own database
UNSET, ERROR = 0, 2  # a span's status code (trace.proto's Status.StatusCode)


@dataclass
class TracedMesh:
    mesh: Mesh
    receiver: OtlpReceiver
    broker: TcpProxy  # this mesh's route to RabbitMQ: cut() is an outage for it alone
    mail: MailCatcher


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest_asyncio.fixture(scope="module")
async def traced(tmp_path_factory, receiver, mongo_url, mail) -> AsyncIterator[TracedMesh]:
    inventory_url = await create_database(PG_SERVER_URL, "polyglot_traced_inventory")
    notify_url = await create_database(PG_SERVER_URL, "polyglot_traced_notify")
    vhost = create_vhost(RABBIT_SERVER_URL, "polyglot_traced")
    broker = TcpProxy.in_front_of(vhost, 5672)
    env = {
        "INVENTORY_DATABASE_URL": inventory_url,
        "NOTIFY_DATABASE_URL": notify_url,
        "AMQP_URL": broker.route(vhost),
        "MONGO_URL": mongo_url,
        "ANALYTICS_DATABASE": f"traced_{uuid.uuid4().hex[:8]}",
        "SMTP_URL": mail.url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export spans soon after they end
        "LOG_FORMAT": "json",  # the session mesh logs text (tests/e2e/test_event_pipeline.py)
    }
    mesh = start_test_mesh(tmp_path_factory.mktemp("traced_mesh"), env)
    try:
        yield TracedMesh(mesh, receiver, broker, mail)
    finally:
        mesh.stop()
        broker.close()
        delete_vhost(vhost)
        await drop_database(inventory_url)
        await drop_database(notify_url)


async def sell(mesh: Mesh, order_id: str) -> str:
    """Sell one unit for ``order_id`` through Envoy; the trace id Envoy answers with."""
    async with httpx.AsyncClient(base_url=mesh.http_url, timeout=30) as client:
        reply = await client.post(
            "/inventory/decrease",
            json=decrease_body(PRODUCT, 1, order_id),
            headers=mesh.auth_header(),
        )
    assert reply.status_code == 200, reply.text
    return reply.headers["x-trace-id"]


def order_trace_id(traced: TracedMesh, order_id: str) -> str | None:
    """The trace of an order, found from its e-mail: the Message-ID is made from
    the event id, which the relay's producer span carries as the message id."""
    mails = traced.mail.messages(order_id)
    if not mails:
        return None
    event_id = mails[0]["Message-ID"].strip("<>").partition("@")[0]
    producers = [
        s
        for s in traced.receiver.spans()
        if s.kind == "producer" and s.attributes.get("messaging.message.id") == event_id
    ]
    return producers[0].trace_id if producers else None


# (service, kind) pairs one order's trace holds once every process exported.
EXPECTED = {
    ("envoy", "server"),  # the REST call at the edge
    ("inventory_svc", "server"),  # DecreaseStock
    ("inventory_svc", "client"),  # its SQL
    ("inventory_relay", "producer"),  # the publish
    ("analytics_svc", "consumer"),
    ("analytics_svc", "client"),  # the MongoDB insert
    ("notify_svc", "consumer"),
    ("notify_svc", "client"),  # its SQL and the SMTP send
}


async def complete_trace(traced: TracedMesh, order_id: str) -> list[ReceivedSpan]:
    async def spans() -> list[ReceivedSpan] | None:
        trace_id = order_trace_id(traced, order_id)
        if trace_id is None:
            return None
        found = traced.receiver.spans(trace_id)
        kinds = {(s.service, s.kind) for s in found}
        # Each process exports on its own schedule: complete once every span's
        # parent has arrived too (a consumer's span may come before its producer's).
        ids = {s.span_id for s in found}
        closed = all(not s.parent_span_id or s.parent_span_id in ids for s in found)
        smtp = any(s.name == "smtp send" for s in found)
        return found if kinds >= EXPECTED and smtp and closed else None

    # Envoy exports every 5 s (or 5 spans): give it room on a busy machine.
    return await eventually(spans, within=90, what=f"the complete trace of {order_id}")


def one(spans: list[ReceivedSpan], **match: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {found}"
    return found[0]


def descends(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {s.span_id: s for s in spans}
    while span.parent_span_id:
        if span.parent_span_id == ancestor.span_id:
            return True
        if span.parent_span_id not in by_id:
            return False
        span = by_id[span.parent_span_id]
    return False


def assert_one_order_trace(spans: list[ReceivedSpan], *, failed_publishes: int | None = 0) -> None:
    """Every part of the order in one trace, each parented where it belongs;
    ``failed_publishes``: how many publish attempts failed (None: any number)."""
    assert len({s.trace_id for s in spans}) == 1
    edge = one(spans, service="envoy")
    assert edge.parent_span_id == ""  # Envoy started the trace (no traceparent sent)
    server = one(spans, service="inventory_svc", kind="server", name=DECREASE_STOCK)
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.parent_span_id == edge.span_id

    sql = [s for s in spans if s.service == "inventory_svc" and s.kind == "client"]
    assert sql and all(s.parent_span_id == server.span_id for s in sql), sql
    assert all(s.attributes["db.system"] == "postgresql" for s in sql)

    # The relay published later, in a process of its own, parented on the span
    # that was active when the outbox row was written. Attempts that failed (the
    # broker away) are spans of their own with an error status, in the same trace.
    attempts = [s for s in spans if s.service == "inventory_relay" and s.kind == "producer"]
    assert all(s.parent_span_id == server.span_id for s in attempts)
    failed = [s for s in attempts if s.status_code == ERROR]
    assert len(attempts) == len(failed) + 1
    assert failed_publishes is None or len(failed) == failed_publishes
    [producer] = [s for s in attempts if s.status_code != ERROR]
    assert producer.attributes["messaging.system"] == "rabbitmq"
    assert producer.attributes["messaging.destination.name"] == "polyglot.events"
    assert producer.attributes["messaging.rabbitmq.destination.routing_key"] == (
        "inventory.product_sold"
    )

    for service in ("analytics_svc", "notify_svc"):
        consumer = one(spans, service=service, kind="consumer")
        assert consumer.parent_span_id == producer.span_id, service
        message_id = consumer.attributes["messaging.message.id"]
        assert message_id == producer.attributes["messaging.message.id"]
    analytics = one(spans, service="analytics_svc", kind="consumer")
    [insert] = [s for s in spans if s.service == "analytics_svc" and s.name.endswith(".insert")]
    assert insert.attributes["db.system"] == "mongodb"
    assert descends(insert, analytics, spans)

    notify = one(spans, service="notify_svc", kind="consumer")
    smtp = one(spans, service="notify_svc", name="smtp send")
    assert smtp.kind == "client" and descends(smtp, notify, spans)
    assert smtp.attributes["email.message_id"].startswith(
        f"<{producer.attributes['messaging.message.id']}@"
    )
    # The Message-ID and the server: no addresses, no subject, no text.
    assert set(smtp.attributes) == {"email.message_id", "server.address", "server.port"}


def log_records_about(mesh: Mesh, process: str, order_id: str) -> list[dict]:
    """The JSON log records of ``process`` whose message names the order."""
    log = mesh.plan.run_dir / "logs" / f"{process}.log"
    lines = [line for line in log.read_text().splitlines() if order_id in line]
    return [record for record in map(json.loads, lines) if order_id in record["message"]]


async def assert_logs_carry(mesh: Mesh, trace_id: str, order_id: str) -> None:
    """The services' log records about the order carry the trace id (grep finds them)."""
    for process in ("inventory_svc", "analytics_svc", "notify_svc"):
        records = await eventually(
            lambda p=process: log_records_about(mesh, p, order_id),
            what=f"{process} logging order {order_id}",
        )
        assert {r["trace_id"] for r in records} == {trace_id}, records
        assert {r["service"] for r in records} == {process}


async def test_one_order_is_one_trace_from_the_rest_call_to_the_email(traced):
    order_id = order()
    trace_id = await sell(traced.mesh, order_id)
    spans = await complete_trace(traced, order_id)
    assert_one_order_trace(spans)
    assert spans[0].trace_id == trace_id  # the id the caller was told
    await assert_logs_carry(traced.mesh, trace_id, order_id)
    envoy_log = traced.mesh.plan.run_dir / "logs" / "envoy.log"
    await eventually(lambda: trace_id in envoy_log.read_text(), what="Envoy's access log line")


async def test_an_order_sold_while_the_broker_is_away_is_still_one_trace(traced):
    """The relay publishes after the outage, maybe minutes later, in the same trace."""
    order_id = order()
    relay = traced.mesh.grpc_target("inventory_relay")
    await asyncio.to_thread(traced.broker.cut)
    try:
        await eventually(
            lambda: grpc_health(relay, "inventory_svc.outbox_relay") == "NOT_SERVING",
            what="the relay noticing the outage",
        )
        trace_id = await sell(traced.mesh, order_id)
    finally:
        await asyncio.to_thread(traced.broker.restore)
    spans = await complete_trace(traced, order_id)
    assert_one_order_trace(spans, failed_publishes=None)
    assert spans[0].trace_id == trace_id


async def test_rpc_errors_are_span_statuses_and_health_checks_are_not_traced(traced):
    async with httpx.AsyncClient(base_url=traced.mesh.http_url, timeout=30) as client:
        reply = await client.post(
            "/inventory/decrease",
            json=decrease_body(2, 10_000),
            headers=traced.mesh.auth_header(),
        )
    assert reply.status_code == 400  # FAILED_PRECONDITION: not enough stock

    def refused() -> list[ReceivedSpan]:
        return [
            s
            for s in traced.receiver.spans()
            if s.name == DECREASE_STOCK and s.attributes.get("rpc.grpc.status_code") == 9
        ]

    [span] = await eventually(refused, what="the refused call's span")
    # The code is on the span; its status stays unset, as OpenTelemetry's gRPC
    # conventions say for a server answering a caller's mistake (only UNKNOWN,
    # DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS are errors).
    assert span.status_code == UNSET
    # Envoy checks every backend's health twice a second: none of it is traced.
    assert not [s for s in traced.receiver.spans() if "grpc.health" in s.name]
