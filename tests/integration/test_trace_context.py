"""Tracing on the real databases: every order of a batch keeps its own caller's
trace context in its outbox row, and database spans never carry values."""

import json
import uuid
from datetime import UTC, datetime

import pytest
from opentelemetry.trace import SpanKind

from analytics_svc.domain import Sale as AnalyticsSale
from analytics_svc.store import MongoSales
from inventory_svc.store import MIGRATIONS, PostgresInventory
from tests.support.sales import consumed_sale, order, sale_request
from tests.support.servers import migrated_database
from tests.support.tracing import in_memory_tracing

SECRET = "ORD-s3cr3tvalue"  # a value that must appear in no span


def traceparent(n: int) -> dict[str, str]:
    return {"traceparent": f"00-{n:032x}-{n:016x}-01"}


@pytest.fixture(scope="module")
async def db_url():
    async with migrated_database("polyglot_test_tracing", MIGRATIONS) as url:
        yield url


@pytest.fixture
async def store(db_url):
    store = PostgresInventory(db_url, pool_size=2, timeout_seconds=5)
    await store.ready()
    yield store
    await store.close()


async def outbox_headers_of(store: PostgresInventory, order_ids: list[str]) -> dict[str, dict]:
    async with store.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT payload->>'order_id' AS order_id, headers::text AS headers FROM outbox"
            " WHERE payload->>'order_id' = ANY($1)",
            order_ids,
        )
    return {row["order_id"]: json.loads(row["headers"]) for row in rows}


async def test_each_order_of_a_batch_keeps_its_own_callers_trace_context(store):
    requests = [sale_request(order(), 1, 1, trace_context=traceparent(n)) for n in (1, 2, 3)]
    requests.append(sale_request(order(), 1, 1))  # an untraced caller in the same batch
    sales = await store.record_sales(requests)
    assert all(sales)
    stored = await outbox_headers_of(store, [r.order_id for r in requests])
    assert stored == {r.order_id: dict(r.trace_context) for r in requests}


async def test_the_one_order_statement_stores_the_trace_context(store):
    request = sale_request(order(), 1, 1, trace_context=traceparent(7))
    assert await store.record_sale(request)
    assert await outbox_headers_of(store, [request.order_id]) == {request.order_id: traceparent(7)}


def values_of(spans) -> str:
    return repr([dict(s.attributes) for s in spans] + [s.name for s in spans])


async def test_sql_spans_carry_the_statement_never_its_values(db_url):
    with in_memory_tracing() as (provider, exporter):
        store = PostgresInventory(db_url, pool_size=1, timeout_seconds=5)
        await store.ready()
        try:
            with provider.get_tracer("test").start_as_current_span("call"):
                assert await store.record_sale(sale_request(SECRET, 1, 1, sold_by="alice"))
        finally:
            await store.close()
        spans = [s for s in exporter.get_finished_spans() if s.name != "call"]
    [sale] = [s for s in spans if "INSERT INTO sales" in s.attributes.get("db.statement", "")]
    assert sale.attributes["db.system"] == "postgresql"
    assert "$1" in sale.attributes["db.statement"]
    assert "db.statement.parameters" not in sale.attributes
    assert SECRET not in values_of(spans) and "alice" not in values_of(spans)


async def test_mongodb_spans_carry_the_command_never_the_document(mongo_url):
    with in_memory_tracing() as (provider, exporter):
        sales = MongoSales(mongo_url, f"tracing_test_{uuid.uuid4().hex[:8]}", timeout_seconds=5)
        await sales.ready()
        try:
            with provider.get_tracer("test").start_as_current_span("call"):
                now = datetime.now(UTC)
                sale = consumed_sale(
                    AnalyticsSale, order_id=SECRET, occurred_at=now, sold_by="alice"
                )
                assert await sales.record(sale)
        finally:
            await sales.close()
        spans = [s for s in exporter.get_finished_spans() if s.name != "call"]
    [insert] = [s for s in spans if s.name.endswith(".insert")]
    assert insert.attributes["db.system"] == "mongodb"
    assert insert.attributes["db.statement"] == "insert"
    assert SECRET not in values_of(spans) and "alice" not in values_of(spans)


async def test_a_batchs_sql_span_joins_its_first_orders_trace_whatever_task_runs_it(db_url):
    """The sale batcher writes in a task the product's first caller started; the
    statement's span still belongs to an order of the batch, not to that caller."""
    batch = [sale_request(order(), 1, 1, trace_context=traceparent(n)) for n in (5, 6)]
    alone = sale_request(order(), 1, 1, trace_context=traceparent(8))
    with in_memory_tracing() as (provider, exporter):
        store = PostgresInventory(db_url, pool_size=1, timeout_seconds=5)
        await store.ready()
        exporter.clear()  # the readiness probe's statements
        try:
            with provider.get_tracer("test").start_as_current_span("another call"):
                assert all(await store.record_sales(batch))
                assert await store.record_sale(alone)
        finally:
            await store.close()
        sql = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert [(s.context.trace_id, s.parent.span_id) for s in sql] == [(5, 5), (8, 8)]
