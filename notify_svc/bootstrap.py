"""Wiring: the one place that decides what notify_svc runs and with what."""

import asyncio

from meshkit.broker import EventConsumer, rabbit_broker
from meshkit.broker_topology import SUBSCRIPTIONS
from meshkit.grpc_server import GrpcServer
from meshkit.lifecycle import serve_until_stopped
from meshkit.metrics import MetricsEndpoint, dead_letter_depth, watch_pool
from meshkit.telemetry import broker_middlewares, start_tracing
from notify_svc.events import Notifier, event_router
from notify_svc.grpc_api import NotificationApi
from notify_svc.mailer import Mailer
from notify_svc.settings import NotifySettings
from notify_svc.store import PostgresNotifications


async def serve(settings: NotifySettings, stop: asyncio.Event) -> None:
    tracing = start_tracing("notify_svc")  # first: the clients below look for it
    store = PostgresNotifications(
        str(settings.notify_database_url),
        pool_size=settings.db_pool_size,
        timeout_seconds=settings.db_timeout_seconds,
    )
    mailer = Mailer(
        str(settings.smtp_url) if settings.smtp_url else None,
        timeout_seconds=settings.smtp_timeout_seconds,
    )
    broker = rabbit_broker(
        str(settings.amqp_url),
        prefetch=settings.consumer_prefetch,
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=broker_middlewares(),
    )
    broker.include_router(
        event_router(
            Notifier(
                store,
                mailer,
                settings.mail_from,
                settings.logistics_email,
                lease_seconds=settings.notify_lease_seconds,
            )
        )
    )
    metrics = MetricsEndpoint(
        settings,
        health_name="notify_svc.metrics",
        samplers={"DLQ depth": dead_letter_depth(broker, SUBSCRIPTIONS["notify_svc"])},
    )
    watch_pool(store.db.name, store.db.pool_usage)
    await serve_until_stopped(
        stop,
        GrpcServer(settings, [NotificationApi(store)]),
        ready=store.ready,
        components=[EventConsumer(broker, health_name="notify_svc.consumer"), metrics],
        close=[store.close, tracing.shutdown],
    )
