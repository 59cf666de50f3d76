"""The mesh's metrics as an operator sees them: a real Prometheus (Debian's binary)
scrapes every process's /metrics and Envoy's admin with the config rendered from
the topology (blueprint/prometheus.py) and loads the alert rules; the test's own
calls (and a broker outage of the test mesh alone) move the counters and gauges it
then queries through Prometheus's HTTP API."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aio_pika
import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from blueprint.topology import METRICS_PORTS
from devtools.preflight import PROMETHEUS_INSTALL, prometheus_tool
from devtools.sandbox import Mesh
from meshkit.broker_topology import EXCHANGE, SUBSCRIPTIONS
from meshkit.events import PRODUCT_SOLD
from tests.support.rabbit import take_messages
from tests.support.sales import decrease_body
from tests.support.waiting import eventually

SCRAPE_SECONDS = 0.5
DECREASE_STOCK = 'grpc_service="polyglot.inventory.v1.InventoryService",grpc_method="DecreaseStock"'


@pytest.fixture(scope="module")
def prometheus(mesh: Mesh) -> Iterator[str]:
    """Prometheus for the session mesh, on a free port; its base URL."""
    binary = prometheus_tool()
    if binary is None:
        pytest.fail(
            f"prometheus is missing (the metrics test runs the real one): {PROMETHEUS_INSTALL}"
        )
    mesh.plan.write_prometheus_config(scrape_seconds=SCRAPE_SECONDS)
    server = mesh.plan.prometheus(binary)
    server.start_until(mesh.plan.prometheus_ready, "Prometheus ready")
    try:
        yield f"http://127.0.0.1:{mesh.plan.prometheus_port}"
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module")
async def promql(prometheus: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prometheus, timeout=10) as client:
        yield client


async def query(client: httpx.AsyncClient, expression: str) -> list[dict]:
    reply = await client.get("/api/v1/query", params={"query": expression})
    reply.raise_for_status()
    return reply.json()["data"]["result"]


async def value(client: httpx.AsyncClient, expression: str) -> float | None:
    """The value of a one-series expression, None while Prometheus has none."""
    result = await query(client, expression)
    return float(result[0]["value"][1]) if result else None


def scraped(mesh: Mesh, process: str, name: str, **labels: str) -> float:
    """A sample straight from a process's /metrics (0 if absent): what it counts now."""
    text = httpx.get(f"http://127.0.0.1:{mesh.plan.metrics_ports[process]}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_every_process_and_envoy_is_a_target_and_up(mesh, promql):
    jobs = {*METRICS_PORTS, "envoy"}

    async def all_up() -> bool:
        targets = await query(promql, "up")
        return {t["metric"]["job"] for t in targets if t["value"][1] == "1"} == jobs

    await eventually(all_up, what=f"up == 1 for {sorted(jobs)}")
    targets = await query(promql, "up")
    assert len(targets) == len(mesh.plan.metrics_ports) + 1  # every replica, and Envoy


async def test_the_alert_rules_are_loaded(promql):
    reply = await promql.get("/api/v1/rules")
    [group] = reply.json()["data"]["groups"]
    assert {rule["name"] for rule in group["rules"]} >= {
        "TargetDown",
        "BackendUnhealthy",
        "OutboxStalled",
        "DeadLettersWaiting",
        "GrpcErrorRatioHigh",
    }
    assert all(rule["health"] == "ok" for rule in group["rules"])


async def test_sales_move_the_rpc_consumer_and_relay_counters(mesh, http, promql, new_product):
    product, sales = await new_product(stock=10), 3
    rpc_ok = f'grpc_server_handled_total{{{DECREASE_STOCK},grpc_code="OK"}}'
    before = {
        "rpc": scraped(
            mesh,
            "inventory_svc",
            "grpc_server_handled_total",
            grpc_method="DecreaseStock",
            grpc_code="OK",
        ),
        "published": scraped(
            mesh, "inventory_relay", "faststream_published_messages_total", status="success"
        ),
        "notified": scraped(
            mesh, "notify_svc", "faststream_received_processed_messages_total", status="acked"
        ),
    }
    for _ in range(sales):
        reply = await http.post("/inventory/decrease", json=decrease_body(product))
        assert reply.status_code == 200, reply.text

    async def counted(expression: str, at_least: float) -> bool:
        return (await value(promql, expression) or 0) >= at_least

    await eventually(
        lambda: counted(f"sum({rpc_ok})", before["rpc"] + sales), what="DecreaseStock OK counted"
    )
    await eventually(
        lambda: counted(
            'sum(faststream_published_messages_total{job="inventory_relay",status="success"})',
            before["published"] + sales,
        ),
        what="the relay's publishes counted",
    )
    await eventually(
        lambda: counted(
            'sum(faststream_received_processed_messages_total{job="notify_svc",status="acked"})',
            before["notified"] + sales,
        ),
        what="notify_svc's handled messages counted",
    )
    latency = f"sum(grpc_server_handling_seconds_count{{{DECREASE_STOCK}}})"
    assert await value(promql, latency) >= before["rpc"] + sales


async def test_a_refused_call_is_counted_by_its_code(mesh, http, promql):
    refused = f'grpc_server_handled_total{{{DECREASE_STOCK},grpc_code="NOT_FOUND"}}'
    before = scraped(
        mesh,
        "inventory_svc",
        "grpc_server_handled_total",
        grpc_method="DecreaseStock",
        grpc_code="NOT_FOUND",
    )
    reply = await http.post("/inventory/decrease", json=decrease_body(987_654))
    assert reply.status_code == 404, reply.text
    await eventually(
        lambda: value(promql, f"sum({refused}) >= {before + 1}"), what="NOT_FOUND counted"
    )


async def test_outbox_dead_letters_pools_and_envoy_are_reported(promql):
    expectations = {
        'outbox_unpublished_events{job="inventory_relay"}': "a sampled outbox backlog",
        'outbox_oldest_unpublished_age_seconds{job="inventory_relay"}': "the outbox's age",
        'dead_letter_queue_messages{job="notify_svc",queue="notify.product_sold.dlq"}': "DLQ",
        'dead_letter_queue_messages{job="analytics_svc",queue="analytics.product_sold.dlq"}': "DLQ",
        'db_pool_connections{job="inventory_svc",state="open"} > 0': "inventory's pool",
        'db_pool_connections{job="notify_svc",state="open"} > 0': "notify's pool",
        'envoy_cluster_membership_healthy{envoy_cluster_name="inventory_svc"} == 1': "Envoy",
    }
    for expression, what in expectations.items():
        await eventually(lambda e=expression: query(promql, e), what=what)


async def test_the_outbox_backlog_and_its_age_show_a_broker_outage(
    broker, http, promql, new_product
):
    """Sales while the test mesh's RabbitMQ is cut: their events wait in the outbox,
    which the relay's gauges show, and drain once it is back."""
    product = await new_product(stock=10)
    backlog = 'outbox_unpublished_events{job="inventory_relay"}'
    age = 'outbox_oldest_unpublished_age_seconds{job="inventory_relay"}'
    await asyncio.to_thread(broker.cut)
    try:
        for _ in range(3):
            reply = await http.post(
                "/inventory/decrease",
                json=decrease_body(product),
            )
            assert reply.status_code == 200, reply.text
        await eventually(lambda: query(promql, f"{backlog} >= 3"), what="the backlog seen")
        await eventually(lambda: query(promql, f"{age} > 1"), what="the oldest event aging")
    finally:
        await asyncio.to_thread(broker.restore)
    await eventually(lambda: query(promql, f"{backlog} == 0"), within=60, what="drained")
    await eventually(lambda: query(promql, f"{age} == 0"), what="nothing waiting")


async def test_a_poison_message_shows_as_redeliveries_failures_and_dead_letters(
    mesh, mesh_env, promql
):
    """One unusable event: each consumer fails it, gets it redelivered up to the
    limit, and its DLQ's depth shows it until someone takes it out."""
    failed = 'sum(faststream_received_processed_messages_total{{job="{job}",status!="acked"}})'
    redelivered = 'sum(faststream_received_messages_total{{job="{job}",redelivered="true"}})'
    depth = 'dead_letter_queue_messages{{queue="{queue}"}}'
    handled = "faststream_received_processed_messages_total"
    before = {
        job: {
            "failed": scraped(mesh, job, handled) - scraped(mesh, job, handled, status="acked"),
            "redelivered": scraped(
                mesh, job, "faststream_received_messages_total", redelivered="true"
            ),
        }
        for job in SUBSCRIPTIONS
    }
    poison = json.dumps({"event_id": "not-a-uuid", "quantity": -1}).encode()
    async with await aio_pika.connect(mesh_env["AMQP_URL"]) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE.name)
        await exchange.publish(
            aio_pika.Message(poison, content_type="application/json"), routing_key=PRODUCT_SOLD
        )
    for job, subscription in SUBSCRIPTIONS.items():
        queue = subscription.dead_letter_queue
        await eventually(lambda q=queue: query(promql, f"{depth.format(queue=q)} >= 1"), what=queue)
        for what, expression in (("failed", failed), ("redelivered", redelivered)):
            counted = f"{expression.format(job=job)} > {before[job][what]}"
            await eventually(lambda e=counted: query(promql, e), what=f"{job}: {what}")
        taken: list = []

        async def drained(queue: str = queue, taken: list = taken) -> bool:
            taken.extend(await take_messages(mesh_env["AMQP_URL"], queue))
            return [m.body for m in taken] == [poison]

        await eventually(drained, what=f"the poison taken out of {queue}")
        await eventually(lambda q=queue: query(promql, f"{depth.format(queue=q)} == 0"), what=queue)
