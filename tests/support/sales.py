"""The tests' one way to make sales, so a change of the contracts is one edit here.

- ``order()``: a fresh order id;
- ``sale_request(…)``: inventory's SaleRequest (what DecreaseStock asks for);
- ``decrease_body(…)``: the same as REST/JSON, DecreaseStockRequest's body;
- ``product_sold(…)``: the ProductSold event as consumers receive it (the wire
  type, every field set), ``product_sold_json(…)`` as it travels;
- ``consumed_sale(domain_type, …)``: that event as a consumer's domain sale
  (analytics_svc's or notify_svc's ``Sale``), mapped as the services map it.

Each takes the fields a test cares about; the rest are plausible defaults, with
fresh event and order ids so that no test replays another's.
"""

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from inventory_svc.domain import SaleRequest
from meshkit.events import ProductSold, to_domain

SOLD_AT = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
D = TypeVar("D")


def order() -> str:
    """A fresh order id, so a test never replays another test's order."""
    return f"ORD-{uuid.uuid4().hex[:12]}"


def sale_request(
    order_id: str | None = None,
    product_id: int = 1,
    quantity: int = 1,
    *,
    sold_by: str = "",
    trace_context: Mapping[str, str] | None = None,
) -> SaleRequest:
    return SaleRequest(
        order() if order_id is None else order_id,
        product_id,
        quantity,
        sold_by=sold_by,
        trace_context=trace_context or {},
    )


def decrease_body(product_id: int, quantity: int = 1, order_id: str | None = None) -> dict:
    """A DecreaseStock request as REST/JSON (POST /inventory/decrease)."""
    return {
        "product_id": product_id,
        "quantity": quantity,
        "order_id": order() if order_id is None else order_id,
    }


def product_sold(**fields: Any) -> ProductSold:
    """A ProductSold as consumers receive it; ``fields`` override the defaults."""
    defaults: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "order_id": order(),
        "product_id": 1,
        "product_name": "Laptop Gamer",
        "quantity": 1,
        "remaining_stock": 5,
        "occurred_at": SOLD_AT,
        "sold_by": "",
    }
    return ProductSold(**{**defaults, **fields})


def product_sold_json(**fields: Any) -> str:
    """``product_sold(**fields)`` as a message body."""
    return product_sold(**fields).model_dump_json()


def consumed_sale(domain_type: type[D], **fields: Any) -> D:
    """``product_sold(**fields)`` as the consumer's own ``domain_type``."""
    return to_domain(product_sold(**fields), domain_type)
