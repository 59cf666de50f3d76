"""gRPC adapter: polyglot.inventory.v1.InventoryService on top of the use cases."""

import polyglot.inventory.v1 as pb
from inventory_svc import domain, use_cases
from inventory_svc.use_cases import InventoryStore
from meshkit.identity import caller_subject
from meshkit.messages import built
from meshkit.telemetry import trace_headers


class InventoryApi(pb.InventoryServiceBase):
    def __init__(self, store: InventoryStore) -> None:
        self._store = store

    async def get_stock(self, get_stock_request: pb.GetStockRequest) -> pb.GetStockResponse:
        product = await use_cases.get_product(self._store, get_stock_request.product_id)
        return built(pb.GetStockResponse, _product_fields(product))

    async def list_products(
        self, list_products_request: pb.ListProductsRequest
    ) -> pb.ListProductsResponse:
        products, next_token = await use_cases.list_products(
            self._store, list_products_request.page_size, list_products_request.page_token
        )
        return pb.ListProductsResponse(
            products=[
                pb.Product(product_id=p.product_id, name=p.name, stock=p.stock) for p in products
            ],
            next_page_token=next_token,
        )

    async def decrease_stock(
        self, decrease_stock_request: pb.DecreaseStockRequest
    ) -> pb.DecreaseStockResponse:
        request = domain.sale_request(
            order_id=decrease_stock_request.order_id,
            product_id=decrease_stock_request.product_id,
            quantity=decrease_stock_request.quantity,
            # Set by meshkit.grpc_server from the header Envoy derives from the token.
            sold_by=caller_subject.get(),
            # This call's span (the gRPC server span when tracing): the outbox row
            # keeps it, so the relay's publish continues this trace.
            trace_context=trace_headers(),
        )
        sale = await use_cases.decrease_stock(self._store, request)
        return built(
            pb.DecreaseStockResponse,
            {
                "product_id": sale.product_id,
                "current_stock": sale.remaining_stock,
                "order_id": sale.order_id,
            },
        )

    async def restock_product(
        self, restock_product_request: pb.RestockProductRequest
    ) -> pb.RestockProductResponse:
        product = await use_cases.restock_product(
            self._store, restock_product_request.product_id, restock_product_request.quantity
        )
        return built(pb.RestockProductResponse, _product_fields(product))


def _product_fields(product: domain.Product) -> dict[str, object]:
    return {"product_id": product.product_id, "name": product.name, "stock": product.stock}
