"""What the inventory can be asked to do, written against a store protocol.

Each use case is one store write (or read) plus the domain's judgement of the
outcome, so the rules stay in domain.py and the SQL stays in store.py.
"""

import logging
from typing import Protocol

from inventory_svc import domain
from inventory_svc.domain import Page, Product, Sale, SaleRequest

log = logging.getLogger(__name__)


class InventoryStore(Protocol):
    async def record_sale(self, request: SaleRequest) -> Sale | None: ...
    async def find_sale(self, order_id: str) -> Sale | None: ...
    async def find_product(self, product_id: int) -> Product | None: ...
    async def list_products(self, page: Page) -> list[Product]: ...
    async def restock(self, product_id: int, quantity: int) -> Product | None: ...


async def get_product(store: InventoryStore, product_id: int) -> Product:
    product = await store.find_product(domain.valid_product_id(product_id))
    if product is None:
        raise domain.ProductNotFound(product_id)
    return product


async def list_products(
    store: InventoryStore, page_size: int, page_token: str
) -> tuple[list[Product], str]:
    page = domain.page(page_size, page_token)
    return domain.split_page(await store.list_products(page), page)


async def decrease_stock(store: InventoryStore, request: SaleRequest) -> Sale:
    """Sell once per order id; a replay gets the first answer back."""
    sale = await store.record_sale(request)
    if sale is not None:
        # One line per committed sale: with the trace id (meshkit/logs.py) it is
        # what `grep <order id or trace id> .run/logs/*` finds first.
        log.info(
            "order %s: sold %d x product %d, %d left",
            sale.order_id,
            sale.quantity,
            sale.product_id,
            sale.remaining_stock,
        )
        return sale
    # Nothing was written: find out why, in the order that decides the answer.
    recorded = await store.find_sale(request.order_id)
    if recorded is not None:
        return domain.replayed_sale(recorded, request)
    product = await get_product(store, request.product_id)
    raise domain.InsufficientStock(product, request.quantity)


async def restock_product(store: InventoryStore, product_id: int, quantity: int) -> Product:
    domain.valid_product_id(product_id)
    product = await store.restock(product_id, domain.restock_quantity(quantity))
    if product is not None:
        return product
    raise domain.StockLimitExceeded(await get_product(store, product_id), quantity)
