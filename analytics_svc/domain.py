"""Analytics rules, free of I/O: what a recordable sale is, windows and paging."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meshkit import paging
from meshkit.errors import InvalidArgument
from meshkit.limits import Limit

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)
# No sale predates the Unix epoch; and a window computed back from year 1 would
# overflow datetime (found by the gRPC fuzz test: INTERNAL before this check).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_TOP_PRODUCTS, MAX_TOP_PRODUCTS = 5, 100
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 500
MAX_PRODUCT_ID = 2**31 - 1  # an int32 in the contract

_API = "polyglot.analytics.v1"
# What the checks below enforce, as data for the OpenAPI document (meshkit.limits).
# The window (start before end, at most MAX_WINDOW) spans two fields: the
# contract's comments say it, a JSON schema cannot.
REQUEST_LIMITS = {
    f"{_API}.GetProductSalesRequest.product_id": Limit(minimum=1, maximum=MAX_PRODUCT_ID),
    f"{_API}.GetSalesSummaryRequest.top_products": Limit(minimum=0, maximum=MAX_TOP_PRODUCTS),
    f"{_API}.ListSaleEventsRequest.page_size": Limit(minimum=0, maximum=MAX_PAGE_SIZE),
    f"{_API}.ListSaleEventsRequest.page_token": Limit(max_length=paging.MAX_PAGE_TOKEN_LENGTH),
    f"{_API}.ListSaleEventsRequest.product_id": Limit(minimum=0, maximum=MAX_PRODUCT_ID),
}


@dataclass(frozen=True)
class Sale:
    """One sale as analytics records it (from a ProductSold event)."""

    event_id: str
    order_id: str
    product_id: int
    product_name: str
    quantity: int
    remaining_stock: int
    occurred_at: datetime
    sold_by: str = ""  # the verified subject that made the sale, "" when unknown


@dataclass(frozen=True)
class ProductSales:
    product_id: int
    product_name: str
    units_sold: int
    orders: int
    last_sold_at: datetime | None


@dataclass(frozen=True)
class SummaryWindow:
    start: datetime  # inclusive
    end: datetime  # exclusive
    top_products: int


@dataclass(frozen=True)
class SalesSummary:
    window: SummaryWindow
    units_sold: int
    orders: int
    top_products: list[ProductSales]


@dataclass(frozen=True)
class EventsPage:
    """Events older than ``after`` (occurred_at, event_id), newest first."""

    size: int
    after: tuple[datetime, str] | None
    product_id: int  # 0: every product


def valid_product_id(product_id: int) -> int:
    if product_id <= 0:
        raise InvalidArgument(f"product_id must be a positive integer, got {product_id}")
    return product_id


def summary_window(
    start: datetime | None, end: datetime | None, top_products: int, now: datetime
) -> SummaryWindow:
    for name, at in (("start_time", start), ("end_time", end)):
        if at is not None and at < EARLIEST:
            raise InvalidArgument(f"{name} must not be before {EARLIEST.isoformat()}")
    end = end or now
    start = start or max(end - DEFAULT_WINDOW, EARLIEST)
    if start >= end:
        raise InvalidArgument(
            f"start_time ({start.isoformat()}) must be before end_time ({end.isoformat()})"
        )
    if end - start > MAX_WINDOW:
        raise InvalidArgument(f"the window may span at most {MAX_WINDOW.days} days")
    if not 0 <= top_products <= MAX_TOP_PRODUCTS:
        raise InvalidArgument(
            f"top_products must be between 0 and {MAX_TOP_PRODUCTS}, got {top_products}"
        )
    return SummaryWindow(start, end, top_products or DEFAULT_TOP_PRODUCTS)


def events_page(page_size: int, page_token: str, product_id: int) -> EventsPage:
    size = paging.page_size(page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    if product_id < 0:
        raise InvalidArgument(f"product_id must not be negative, got {product_id}")
    return EventsPage(size, paging.decode_time_cursor(page_token), product_id)


def split_events_page(fetched: list[Sale], page: EventsPage) -> tuple[list[Sale], str]:
    return paging.split_page(
        fetched, page.size, lambda last: paging.encode_time_cursor(last.occurred_at, last.event_id)
    )
