"""gRPC adapter: polyglot.analytics.v1.AnalyticsService on top of the use cases."""

import dataclasses
from datetime import datetime

import betterproto

import polyglot.analytics.v1 as pb
import polyglot.events.v1 as events_pb
from analytics_svc import use_cases
from analytics_svc.domain import ProductSales, Sale
from analytics_svc.use_cases import SalesStore


def _timestamp(message: betterproto.Message, field: str) -> datetime | None:
    return getattr(message, field) if message.is_set(field) else None


def _product_sales(sales: ProductSales) -> pb.ProductSales:
    message = pb.ProductSales(
        product_id=sales.product_id,
        product_name=sales.product_name,
        units_sold=sales.units_sold,
        orders=sales.orders,
    )
    if sales.last_sold_at is not None:
        message.last_sold_at = sales.last_sold_at
    return message


def _sale_event(sale: Sale) -> events_pb.ProductSold:
    return events_pb.ProductSold(**dataclasses.asdict(sale))


class AnalyticsApi(pb.AnalyticsServiceBase):
    def __init__(self, store: SalesStore) -> None:
        self._store = store

    async def get_product_sales(
        self, get_product_sales_request: pb.GetProductSalesRequest
    ) -> pb.GetProductSalesResponse:
        sales = await use_cases.product_sales(self._store, get_product_sales_request.product_id)
        return pb.GetProductSalesResponse(sales=_product_sales(sales))

    async def get_sales_summary(
        self, get_sales_summary_request: pb.GetSalesSummaryRequest
    ) -> pb.GetSalesSummaryResponse:
        request = get_sales_summary_request
        summary = await use_cases.sales_summary(
            self._store,
            start=_timestamp(request, "start_time"),
            end=_timestamp(request, "end_time"),
            top_products=request.top_products,
        )
        return pb.GetSalesSummaryResponse(
            start_time=summary.window.start,
            end_time=summary.window.end,
            units_sold=summary.units_sold,
            orders=summary.orders,
            top_products=[_product_sales(p) for p in summary.top_products],
        )

    async def list_sale_events(
        self, list_sale_events_request: pb.ListSaleEventsRequest
    ) -> pb.ListSaleEventsResponse:
        request = list_sale_events_request
        events, next_token = await use_cases.recent_sale_events(
            self._store, request.page_size, request.page_token, request.product_id
        )
        return pb.ListSaleEventsResponse(
            sale_events=[_sale_event(sale) for sale in events], next_page_token=next_token
        )
