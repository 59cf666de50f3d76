"""analytics_svc's use cases against an in-memory store (the MongoDB side, its
aggregation pipelines included, is tested in tests/integration)."""

from datetime import UTC, datetime, timedelta

import pytest

from analytics_svc import use_cases
from analytics_svc.domain import Sale
from meshkit.errors import InvalidArgument
from tests.support.fakes import FakeSales
from tests.support.sales import consumed_sale

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def sale(minutes: int = 0, quantity: int = 1) -> Sale:
    return consumed_sale(Sale, quantity=quantity, occurred_at=T0 + timedelta(minutes=minutes))


async def test_a_sale_is_recorded_once():
    store, event = FakeSales(), sale()
    assert await use_cases.record_sale(store, event) is True
    assert await use_cases.record_sale(store, event) is False
    assert len(store.sales) == 1


async def test_product_sales_checks_the_product_id():
    with pytest.raises(InvalidArgument, match="positive integer, got -1"):
        await use_cases.product_sales(FakeSales(), -1)


async def test_the_summary_window_defaults_to_the_last_24_hours():
    store = FakeSales()
    await use_cases.sales_summary(store, start=None, end=None, top_products=0)
    [window] = store.windows
    assert window.end - window.start == timedelta(hours=24)
    assert window.top_products == 5


@pytest.mark.parametrize(
    ("start", "end", "top", "complaint"),
    [
        (T0, T0, 0, "must be before end_time"),
        (T0 - timedelta(days=400), T0, 0, "at most 366 days"),
        (None, T0, 101, "top_products must be between 0 and 100"),
    ],
)
async def test_a_bad_summary_request_never_reaches_the_store(start, end, top, complaint):
    store = FakeSales()
    with pytest.raises(InvalidArgument, match=complaint):
        await use_cases.sales_summary(store, start=start, end=end, top_products=top)
    assert store.windows == []


async def test_recent_events_come_newest_first_page_by_page():
    store = FakeSales()
    recorded = [sale(minutes=m) for m in range(5)]
    for event in recorded:
        await use_cases.record_sale(store, event)
    seen, token = [], ""
    while True:
        events, token = await use_cases.recent_sale_events(store, 2, token, 0)
        seen += events
        if not token:
            break
    assert seen == recorded[::-1]


async def test_a_negative_product_filter_is_refused():
    with pytest.raises(InvalidArgument, match="must not be negative"):
        await use_cases.recent_sale_events(FakeSales(), 10, "", -1)
