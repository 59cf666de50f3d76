"""Inventory rules, free of I/O: what a valid sale is and how replays are judged."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshkit import paging
from meshkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from meshkit.limits import MAX_ORDER_ID_LENGTH, ORDER_ID, Limit

MAX_SALE_QUANTITY = 10_000
MAX_RESTOCK_QUANTITY = 1_000_000
MAX_STOCK = 2**31 - 1  # the stock is an int32 in the contract
MAX_PRODUCT_ID = 2**31 - 1  # an int32 in the contract, an integer column in PostgreSQL
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000

_API = "polyglot.inventory.v1"
_PRODUCT_ID = Limit(minimum=1, maximum=MAX_PRODUCT_ID)
# What the checks below enforce, as data for the OpenAPI document (meshkit.limits).
REQUEST_LIMITS = {
    f"{_API}.GetStockRequest.product_id": _PRODUCT_ID,
    f"{_API}.ListProductsRequest.page_size": Limit(minimum=0, maximum=MAX_PAGE_SIZE),
    f"{_API}.ListProductsRequest.page_token": Limit(max_length=paging.MAX_PAGE_TOKEN_LENGTH),
    f"{_API}.DecreaseStockRequest.product_id": _PRODUCT_ID,
    f"{_API}.DecreaseStockRequest.quantity": Limit(minimum=1, maximum=MAX_SALE_QUANTITY),
    f"{_API}.DecreaseStockRequest.order_id": Limit(
        max_length=MAX_ORDER_ID_LENGTH, pattern=ORDER_ID
    ),
    f"{_API}.RestockProductRequest.product_id": _PRODUCT_ID,
    f"{_API}.RestockProductRequest.quantity": Limit(minimum=1, maximum=MAX_RESTOCK_QUANTITY),
}


@dataclass(frozen=True)
class Product:
    product_id: int
    name: str
    stock: int


@dataclass(frozen=True)
class SaleRequest:
    """A validated request to sell ``quantity`` units of a product for an order."""

    order_id: str
    product_id: int
    quantity: int
    # Who asks: the caller's verified subject (meshkit.identity), "" when none.
    sold_by: str = ""
    # The caller's W3C trace context (traceparent, tracestate; meshkit.telemetry),
    # stored with the sale's event so that the event continues the caller's trace
    # however late it is published; {} when the call is not traced.
    trace_context: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Sale:
    """A committed sale, as recorded for its order id."""

    order_id: str
    product_id: int
    quantity: int
    remaining_stock: int
    sold_by: str = ""  # the subject that made the sale, "" when unknown


@dataclass(frozen=True)
class Page:
    """Products with an id above ``after_product_id``, at most ``size`` of them."""

    after_product_id: int
    size: int


class ProductNotFound(NotFound):
    def __init__(self, product_id: int) -> None:
        super().__init__(f"product {product_id} does not exist")


class InsufficientStock(FailedPrecondition):
    def __init__(self, product: Product, requested: int) -> None:
        super().__init__(
            f"insufficient stock for product {product.product_id} ({product.name}):"
            f" {requested} requested, {product.stock} left"
        )


class OrderConflict(AlreadyExists):
    def __init__(self, recorded: Sale) -> None:
        super().__init__(
            f"order {recorded.order_id} was already used to sell {recorded.quantity}"
            f" unit(s) of product {recorded.product_id}; use a new order id for a new sale"
        )


class StockLimitExceeded(FailedPrecondition):
    def __init__(self, product: Product, added: int) -> None:
        super().__init__(
            f"restocking product {product.product_id} by {added} would exceed the maximum"
            f" stock of {MAX_STOCK} (it has {product.stock})"
        )


def valid_product_id(product_id: int) -> int:
    if product_id <= 0:
        raise InvalidArgument(f"product_id must be a positive integer, got {product_id}")
    return product_id


def sale_request(
    order_id: str,
    product_id: int,
    quantity: int,
    sold_by: str = "",
    trace_context: Mapping[str, str] | None = None,
) -> SaleRequest:
    """Validate what a caller sent to DecreaseStock (``sold_by``: who sent it;
    ``trace_context``: the trace it belongs to)."""
    valid_product_id(product_id)
    if not 1 <= quantity <= MAX_SALE_QUANTITY:
        raise InvalidArgument(f"quantity must be between 1 and {MAX_SALE_QUANTITY}, got {quantity}")
    if not order_id:
        raise InvalidArgument("order_id is required")
    if not ORDER_ID.fullmatch(order_id):
        raise InvalidArgument(
            f"order_id must be 1 to {MAX_ORDER_ID_LENGTH} characters from letters, digits"
            " and '-_.:',"
            f" starting with a letter or digit, got {order_id[:80]!r}"
        )
    return SaleRequest(
        order_id=order_id,
        product_id=product_id,
        quantity=quantity,
        sold_by=sold_by,
        trace_context=trace_context or {},
    )


def replayed_sale(recorded: Sale, request: SaleRequest) -> Sale:
    """The answer to an order id that was already sold: the same sale, or a conflict."""
    if (recorded.product_id, recorded.quantity) != (request.product_id, request.quantity):
        raise OrderConflict(recorded)
    return recorded


def restock_quantity(quantity: int) -> int:
    if not 1 <= quantity <= MAX_RESTOCK_QUANTITY:
        raise InvalidArgument(
            f"quantity must be between 1 and {MAX_RESTOCK_QUANTITY}, got {quantity}"
        )
    return quantity


def page(page_size: int, page_token: str) -> Page:
    """Decode ListProducts paging; 0 means the default size, '' the first page."""
    size = paging.page_size(page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    return Page(after_product_id=_after_product_id(page_token), size=size)


def _after_product_id(page_token: str) -> int:
    if not page_token:
        return 0
    [after] = paging.decode_cursor(page_token, int)
    # Tokens carry a real product id; a larger one would fail in PostgreSQL (INTERNAL).
    if not 0 < int(after) <= MAX_PRODUCT_ID:
        raise paging.ForeignPageToken
    return int(after)


def split_page(fetched: list[Product], requested: Page) -> tuple[list[Product], str]:
    """The page of products and the next page's token (see ``paging.split_page``)."""
    return paging.split_page(
        fetched, requested.size, lambda last: paging.encode_cursor(last.product_id)
    )
