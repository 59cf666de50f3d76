"""analytics_svc's store on a real MongoDB wire server (the embedded one)."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import (
    BulkWriteError,
    ExecutionTimeout,
    NetworkTimeout,
    WriteError,
    WTimeoutError,
)

from analytics_svc import use_cases
from analytics_svc.domain import Sale
from analytics_svc.store import MongoSales, SaleEvent
from meshkit.errors import InvalidArgument, Unavailable
from tests.support.sales import consumed_sale

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def sales(mongo_url):
    store = MongoSales(mongo_url, f"analytics_test_{uuid.uuid4().hex[:8]}", timeout_seconds=5)
    await store.ready()
    yield store
    await store.close()


def sale(product_id: int, quantity: int, at: datetime, name: str = "Widget", **fields) -> Sale:
    return consumed_sale(
        Sale, product_id=product_id, product_name=name, quantity=quantity, occurred_at=at, **fields
    )


async def test_a_redelivered_event_is_recorded_once(sales):
    event = sale(1, 2, T0)
    assert await use_cases.record_sale(sales, event) is True
    assert await use_cases.record_sale(sales, event) is False
    totals = await use_cases.product_sales(sales, 1)
    assert (totals.units_sold, totals.orders) == (2, 1)


async def test_a_recorded_sale_is_a_saleevent_document_read_back_unchanged(sales):
    """The insert writes plain documents (no Beanie Document): they hold exactly
    SaleEvent's fields and read back as the sale that was recorded."""
    event = sale(90, 3, T0, name="Plain", sold_by="alice")
    assert await use_cases.record_sale(sales, event) is True
    stored = await SaleEvent.get_pymongo_collection().find_one({"event_id": event.event_id})
    assert set(stored) == {"_id", *(set(SaleEvent.model_fields) - {"id", "revision_id"})}
    [document] = await SaleEvent.find(SaleEvent.event_id == event.event_id).to_list()
    assert document.to_sale() == event
    assert document.recorded_at >= T0


async def test_product_totals_and_latest_name(sales):
    for quantity, minutes, name in [(1, 0, "Mouse"), (4, 5, "Mouse"), (2, 10, "Mouse Pro")]:
        await use_cases.record_sale(sales, sale(2, quantity, T0 + timedelta(minutes=minutes), name))
    totals = await use_cases.product_sales(sales, 2)
    assert (totals.units_sold, totals.orders, totals.product_name) == (7, 3, "Mouse Pro")
    assert totals.last_sold_at == T0 + timedelta(minutes=10)
    nothing = await use_cases.product_sales(sales, 999)
    assert (nothing.units_sold, nothing.orders, nothing.last_sold_at) == (0, 0, None)


async def test_summary_counts_only_the_window_and_ranks_products(sales):
    day = datetime(2026, 10, 5, tzinfo=UTC)
    for product_id, quantity, hour in [(10, 1, 1), (11, 5, 2), (12, 5, 3), (10, 1, 4), (11, 1, 30)]:
        await use_cases.record_sale(sales, sale(product_id, quantity, day + timedelta(hours=hour)))
    summary = await use_cases.sales_summary(sales, day, day + timedelta(hours=24), top_products=2)
    assert (summary.units_sold, summary.orders) == (12, 4)
    assert [(p.product_id, p.units_sold, p.orders) for p in summary.top_products] == [
        (11, 5, 1),
        (12, 5, 1),  # tie on units: lower product id first
    ]
    with pytest.raises(InvalidArgument, match="must be before end_time"):
        await use_cases.sales_summary(sales, day, day, top_products=0)


async def test_recent_events_page_newest_first_without_gaps_or_repeats(sales):
    day = datetime(2026, 9, 1, tzinfo=UTC)
    recorded = [sale(20, 1, day + timedelta(seconds=s)) for s in (1, 2, 2, 3, 4)]
    for event in recorded:
        await use_cases.record_sale(sales, event)
    seen, token = [], ""
    while True:
        page, token = await use_cases.recent_sale_events(sales, 2, token, product_id=20)
        assert len(page) <= 2
        seen += page
        if not token:
            break
    assert sorted(e.event_id for e in seen) == sorted(e.event_id for e in recorded)
    assert [e.occurred_at for e in seen] == sorted((e.occurred_at for e in seen), reverse=True)


@pytest.fixture
def insert_many_calls(monkeypatch) -> list[int]:
    """The size of each insert_many call, which still reaches MongoDB."""
    calls: list[int] = []
    insert_many = MongoSales._insert_documents

    async def counted(documents):
        calls.append(len(documents))
        return await insert_many(documents)

    monkeypatch.setattr(MongoSales, "_insert_documents", staticmethod(counted))
    return calls


async def test_concurrent_events_are_written_together_and_each_learns_its_outcome(
    sales, insert_many_calls
):
    """Group commit: one insert_many for what arrives together; a duplicate in the
    batch is reported as such and does not stop the others."""
    events = [sale(30, 1, T0 + timedelta(seconds=i)) for i in range(40)]
    await use_cases.record_sale(sales, events[0])  # already there before the batch
    assert insert_many_calls == [1]
    outcomes = await asyncio.gather(
        *(use_cases.record_sale(sales, e) for e in [*events, *events[:5]])
    )
    assert outcomes[0] is False  # recorded before
    assert outcomes[1:40] == [True] * 39
    assert outcomes[40:] == [False] * 5  # the redelivered copies
    assert insert_many_calls == [1, 45]  # all 45 in a single write
    totals = await use_cases.product_sales(sales, 30)
    assert (totals.units_sold, totals.orders) == (40, 40)


# One event that cannot be written must fail its own message only: failing its
# batch would nack its neighbours with it, redelivered and likely batched together
# again, until honest events reached their delivery limit and the DLQ.

REFUSED_QUANTITY = 1_000_000  # what the validator below makes MongoDB refuse


@pytest.fixture
async def refusing_validator(sales):
    """MongoDB refuses documents with a quantity of REFUSED_QUANTITY or more (code 121)."""
    database = SaleEvent.get_pymongo_collection().database
    await database.command(
        "collMod", "sales_events", validator={"quantity": {"$lt": REFUSED_QUANTITY}}
    )
    yield
    await database.command("collMod", "sales_events", validator={})


async def test_a_document_mongodb_refuses_fails_only_its_own_caller(
    sales, refusing_validator, insert_many_calls
):
    """The unordered insert_many writes the others and reports the refused one by
    its index: no second write, and a duplicate in the batch is still a duplicate."""
    recorded = sale(60, 1, T0)
    await use_cases.record_sale(sales, recorded)
    good = [sale(60, 1, T0 + timedelta(seconds=i)) for i in range(1, 4)]
    poison = sale(60, REFUSED_QUANTITY, T0)
    outcomes = await asyncio.gather(
        *(use_cases.record_sale(sales, e) for e in [good[0], poison, recorded, *good[1:]]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], WriteError) and outcomes[1].code == 121
    assert [outcomes[0], *outcomes[2:]] == [True, False, True, True]
    assert insert_many_calls == [1, 5]
    totals = await use_cases.product_sales(sales, 60)
    assert (totals.units_sold, totals.orders) == (4, 4)  # the poison is not stored


async def test_a_batch_failing_as_a_whole_is_written_again_one_document_at_a_time(
    sales, insert_many_calls
):
    """A document the driver cannot encode fails the whole insert_many (nothing of it
    is written): each document is then written alone, and only the poison fails."""
    recorded = sale(61, 1, T0)
    await use_cases.record_sale(sales, recorded)
    good = [sale(61, 1, T0 + timedelta(seconds=i)) for i in range(1, 4)]
    poison = sale(61, 2**64, T0)  # past BSON's 8-byte integers
    outcomes = await asyncio.gather(
        *(use_cases.record_sale(sales, e) for e in [good[0], poison, recorded, *good[1:]]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], OverflowError)
    assert [outcomes[0], *outcomes[2:]] == [True, False, True, True]  # new, duplicate, new
    assert insert_many_calls == [1, 5, 1, 1, 1, 1, 1]
    totals = await use_cases.product_sales(sales, 61)
    assert (totals.units_sold, totals.orders) == (4, 4)


async def test_an_unconfirmed_write_is_unavailable_to_every_caller(sales, monkeypatch):
    """writeConcernErrors: the handler must retry, not ack a write MongoDB did not confirm."""

    async def unconfirmed(documents):
        raise BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]})

    monkeypatch.setattr(MongoSales, "_insert_documents", staticmethod(unconfirmed))
    outcomes = await asyncio.gather(
        *(use_cases.record_sale(sales, sale(40, 1, T0)) for _ in range(3)),
        return_exceptions=True,
    )
    assert [type(outcome) for outcome in outcomes] == [Unavailable] * 3


@pytest.mark.parametrize(
    "error",
    [ExecutionTimeout("time limit", 50), NetworkTimeout("timed out"), WTimeoutError("wtimeout")],
    ids=lambda exc: type(exc).__name__,
)
async def test_a_pymongo_timeout_is_unavailable(sales, error):
    with pytest.raises(Unavailable):
        async with sales._mongo():
            raise error


async def test_close_waits_for_the_batch_in_flight(mongo_url, monkeypatch):
    store = MongoSales(mongo_url, f"analytics_test_{uuid.uuid4().hex[:8]}", timeout_seconds=5)
    await store.ready()
    writing = asyncio.Event()
    insert_many = MongoSales._insert_documents

    async def slow(documents):
        writing.set()
        await asyncio.sleep(0.2)  # close() is called meanwhile
        return await insert_many(documents)

    monkeypatch.setattr(MongoSales, "_insert_documents", staticmethod(slow))
    recording = [
        asyncio.create_task(store.record(sale(50, 1, T0 + timedelta(seconds=i)))) for i in range(20)
    ]
    await writing.wait()
    await store.close()
    assert all(task.done() for task in recording)
    assert [task.result() for task in recording] == [True] * 20
