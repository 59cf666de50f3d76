"""What analytics can be asked to do, written against a store protocol."""

from datetime import UTC, datetime
from typing import Protocol

from analytics_svc import domain
from analytics_svc.domain import EventsPage, ProductSales, Sale, SalesSummary, SummaryWindow


class SalesStore(Protocol):
    async def record(self, sale: Sale) -> bool: ...
    async def product_sales(self, product_id: int) -> ProductSales: ...
    async def summary(self, window: SummaryWindow) -> SalesSummary: ...
    async def recent(self, page: EventsPage) -> list[Sale]: ...


async def record_sale(store: SalesStore, sale: Sale) -> bool:
    """Record a sale once; True when new, False for a redelivered event."""
    return await store.record(sale)


async def product_sales(store: SalesStore, product_id: int) -> ProductSales:
    return await store.product_sales(domain.valid_product_id(product_id))


async def sales_summary(
    store: SalesStore, start: datetime | None, end: datetime | None, top_products: int
) -> SalesSummary:
    window = domain.summary_window(start, end, top_products, now=datetime.now(UTC))
    return await store.summary(window)


async def recent_sale_events(
    store: SalesStore, page_size: int, page_token: str, product_id: int
) -> tuple[list[Sale], str]:
    page = domain.events_page(page_size, page_token, product_id)
    return domain.split_events_page(await store.recent(page), page)
