"""In-memory fakes of the services' store ports, for unit tests of the use cases.

Each fake keeps its port's contract; the SQL that keeps it under concurrency is
tested on the real databases in tests/integration.
"""

from inventory_svc.domain import MAX_STOCK, Page, Product, Sale, SaleRequest


class FakeInventory:
    """``InventoryStore``: ``record_sale`` writes nothing and answers None for an
    unknown product, too little stock or an order id already sold."""

    def __init__(self, *products: Product) -> None:
        self.products = {p.product_id: p for p in products}
        self.sales: dict[str, Sale] = {}
        self.requests: list[SaleRequest] = []  # every record_sale call's request, in order

    def sell(self, request: SaleRequest) -> Sale | None:
        """One order, all at once (no await: nothing interleaves with it)."""
        self.requests.append(request)
        product = self.products.get(request.product_id)
        if product is None or product.stock < request.quantity or request.order_id in self.sales:
            return None
        left = product.stock - request.quantity
        self.products[product.product_id] = Product(product.product_id, product.name, left)
        sale = Sale(request.order_id, request.product_id, request.quantity, left)
        self.sales[request.order_id] = sale
        return sale

    async def record_sale(self, request: SaleRequest) -> Sale | None:
        return self.sell(request)

    async def find_sale(self, order_id: str) -> Sale | None:
        return self.sales.get(order_id)

    async def find_product(self, product_id: int) -> Product | None:
        return self.products.get(product_id)

    async def list_products(self, page: Page) -> list[Product]:
        ids = sorted(i for i in self.products if i > page.after_product_id)
        return [self.products[i] for i in ids[: page.size + 1]]

    async def restock(self, product_id: int, quantity: int) -> Product | None:
        product = self.products.get(product_id)
        if product is None or product.stock + quantity > MAX_STOCK:
            return None
        self.products[product_id] = Product(product_id, product.name, product.stock + quantity)
        return self.products[product_id]
