"""Wiring: the one place that decides what analytics_svc runs and with what."""

import asyncio

from analytics_svc.events import event_router
from analytics_svc.grpc_api import AnalyticsApi
from analytics_svc.settings import AnalyticsSettings
from analytics_svc.store import MongoSales
from meshkit.broker import EventConsumer, rabbit_broker
from meshkit.broker_topology import SUBSCRIPTIONS
from meshkit.grpc_server import GrpcServer
from meshkit.lifecycle import serve_until_stopped
from meshkit.metrics import MetricsEndpoint, dead_letter_depth
from meshkit.telemetry import broker_middlewares, start_tracing


async def serve(settings: AnalyticsSettings, stop: asyncio.Event) -> None:
    tracing = start_tracing("analytics_svc")  # first: the clients below look for it
    sales = MongoSales(
        str(settings.mongo_url),
        settings.analytics_database,
        timeout_seconds=settings.mongo_timeout_seconds,
    )
    broker = rabbit_broker(
        str(settings.amqp_url),
        prefetch=settings.consumer_prefetch,
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=broker_middlewares(),
    )
    broker.include_router(event_router(sales))
    metrics = MetricsEndpoint(
        settings,
        health_name="analytics_svc.metrics",
        samplers={"DLQ depth": dead_letter_depth(broker, SUBSCRIPTIONS["analytics_svc"])},
    )
    await serve_until_stopped(
        stop,
        GrpcServer(settings, [AnalyticsApi(sales)]),
        ready=sales.ready,
        components=[EventConsumer(broker, health_name="analytics_svc.consumer"), metrics],
        close=[sales.close, tracing.shutdown],
    )
