"""Sales travel from the inventory's outbox through RabbitMQ to analytics and
notifications: every committed sale arrives exactly once in effect, whatever
breaks in between. Real PostgreSQL, RabbitMQ (own vhost), MongoDB wire server,
SMTP server and Envoy; every wait is a condition with a deadline."""

import asyncio
import json
import signal
from collections.abc import Callable

import aio_pika
import pytest

from devtools.processes import grpc_health
from devtools.sandbox import rabbitmqctl
from meshkit.broker_topology import EXCHANGE, SUBSCRIPTIONS
from meshkit.events import PRODUCT_SOLD
from tests.support.pipeline import PipelineView
from tests.support.rabbit import take_messages
from tests.support.sales import decrease_body, order
from tests.support.waiting import eventually


@pytest.fixture
async def pipeline(mesh, mesh_env, notify_db, mail):
    view = PipelineView(mesh_env["MONGO_URL"], notify_db, mail)
    yield view
    await view.close()


async def sell(http, product: int, order_id: str, quantity: int = 1) -> dict:
    reply = await http.post(
        "/inventory/decrease",
        json=decrease_body(product, quantity, order_id),
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


async def test_a_sale_reaches_analytics_and_notifications(http, pipeline, new_product):
    product = await new_product(stock=10)
    order_id = order()
    await sell(http, product, order_id, quantity=3)
    await eventually(lambda: pipeline.complete([order_id]), what="sale recorded and mailed")

    document = await pipeline.sales_events.find_one({"order_id": order_id})
    assert {
        k: document[k] for k in ("product_id", "product_name", "quantity", "remaining_stock")
    } == {
        "product_id": product,
        "product_name": f"Test product {product}",
        "quantity": 3,
        "remaining_stock": 7,
    }
    [mail] = pipeline.mail.messages(order_id)
    assert mail["Subject"] == f"Order {order_id} confirmed: 3 x Test product {product}"
    assert mail["To"] == "logistics@polyglotmicro.local"


async def test_notify_log_line_names_the_order(mesh, http, pipeline, new_product):
    product = await new_product(stock=5)
    order_id = order()
    await sell(http, product, order_id)
    await eventually(lambda: pipeline.complete([order_id]))
    log = mesh.processes["notify_svc"].log_path
    await eventually(lambda: f"[EMAIL] order {order_id}:" in log.read_text())


async def test_every_subscriber_receives_every_event(http, pipeline, new_product):
    product = await new_product(stock=100)
    orders = [order() for _ in range(20)]
    await asyncio.gather(*(sell(http, product, o) for o in orders))
    await eventually(lambda: pipeline.complete(orders), what="20 sales in both subscribers")
    assert await pipeline.documents(orders) == {o: 1 for o in orders}
    assert await pipeline.notifications(orders) == {o: 1 for o in orders}
    assert pipeline.emails(orders) == {o: 1 for o in orders}


async def test_a_replayed_order_gives_one_document_and_one_email(http, pipeline, new_product):
    product = await new_product(stock=10)
    order_id = order()
    first = await sell(http, product, order_id, quantity=2)
    assert await sell(http, product, order_id, quantity=2) == first
    await eventually(lambda: pipeline.complete([order_id]))
    # A later sale proves the pipeline moved past anything the replay could have sent.
    later = order()
    await sell(http, product, later)
    await eventually(lambda: pipeline.complete([later]))
    assert await pipeline.documents([order_id]) == {order_id: 1}
    assert pipeline.emails([order_id]) == {order_id: 1}


async def test_analytics_and_notifications_over_rest(http, pipeline, new_product):
    product = await new_product(stock=50)
    orders = [order() for _ in range(3)]
    for quantity, order_id in enumerate(orders, start=1):
        await sell(http, product, order_id, quantity=quantity)
    await eventually(lambda: pipeline.complete(orders))

    sales = (await http.get(f"/analytics/products/{product}/sales")).json()["sales"]
    assert sales["units_sold"] == "6" and sales["orders"] == "3"  # int64: JSON strings
    assert sales["product_name"] == f"Test product {product}"

    summary = (await http.get("/analytics/summary", params={"top_products": 100})).json()
    assert {"start_time", "end_time", "units_sold", "orders"} <= set(summary)
    assert any(p["product_id"] == product for p in summary["top_products"])

    first = (
        await http.get("/analytics/sales", params={"product_id": product, "page_size": 2})
    ).json()
    assert [e["order_id"] for e in first["sale_events"]] == orders[::-1][:2]
    rest = (
        await http.get(
            "/analytics/sales",
            params={"product_id": product, "page_token": first["next_page_token"]},
        )
    ).json()
    assert [e["order_id"] for e in rest["sale_events"]] == [orders[0]]
    assert rest["next_page_token"] == ""

    [notification] = (await http.get("/notifications", params={"order_id": orders[0]})).json()[
        "notifications"
    ]
    assert notification["status"] == "NOTIFICATION_STATUS_SENT"
    assert notification["channel"] == "smtp"
    assert notification["subject"] == f"Order {orders[0]} confirmed: 1 x Test product {product}"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/analytics/products/0/sales", "product_id must be a positive integer"),
        (
            "/analytics/summary?start_time=2026-01-02T00:00:00Z&end_time=2026-01-01T00:00:00Z",
            "must be before end_time",
        ),
        ("/analytics/summary?start_time=yesterday", "start_time"),
        ("/analytics/summary?top_products=101", "top_products must be between 0 and 100"),
        ("/analytics/sales?page_token=bogus", "page_token is not one this service issued"),
        ("/notifications?page_size=501", "page_size must be between 0 and 500"),
        ("/notifications?page_token=bogus", "page_token is not one this service issued"),
    ],
)
async def test_bad_analytics_and_notification_queries_are_400(http, mesh, path, message):
    reply = await http.get(path)
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["code"] == 3 and message in body["message"]


async def test_a_poison_message_goes_to_each_dlq_and_consumers_keep_going(
    http, pipeline, new_product, mesh_env
):
    poison = [b"this is not json", json.dumps({"event_id": "not-a-uuid", "quantity": -1}).encode()]
    connection = await aio_pika.connect(mesh_env["AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE.name)
        for body in poison:
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json"), routing_key=PRODUCT_SOLD
            )
    # The next good sale still gets through while the poison is retried and dropped.
    product = await new_product(stock=5)
    good = order()
    await sell(http, product, good)
    await eventually(lambda: pipeline.complete([good]))

    for subscription in SUBSCRIPTIONS.values():
        dead: list = []

        async def dead_lettered(queue: str = subscription.dead_letter_queue, dead=dead) -> bool:
            dead.extend(await take_messages(mesh_env["AMQP_URL"], queue))
            return sorted(m.body for m in dead) == sorted(poison)

        await eventually(dead_lettered, what=f"poison in {subscription.dead_letter_queue}")
        for message in dead:  # retried up to the limit, then dead-lettered
            assert message.headers["x-death"][0]["reason"] == "delivery_limit"


async def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    mesh, http, pipeline, new_product
):
    product = await new_product(stock=1000)
    orders = [order() for _ in range(150)]

    async def sell_all() -> None:
        for start in range(0, len(orders), 10):
            await asyncio.gather(*(sell(http, product, o) for o in orders[start : start + 10]))

    selling = asyncio.create_task(sell_all())
    await eventually(
        lambda: _at_least(pipeline.notifications(orders), 20), what="the stream under way"
    )
    for worker in ("analytics_svc", "notify_svc"):
        mesh.processes[worker].signal(signal.SIGKILL)
    await selling
    for worker in ("analytics_svc", "notify_svc"):
        assert mesh.processes[worker].exit_code(10) == -signal.SIGKILL
        await asyncio.to_thread(mesh.restart, worker)
    await eventually(lambda: pipeline.complete(orders), within=90, what="all 150 sales")

    await pipeline.assert_delivered_once_in_effect(orders)


async def _at_least(counter, n: int) -> bool:
    return sum((await counter).values()) >= n


@pytest.fixture
def sales_through_an_outage(mesh, http, pipeline, new_product, inventory_db):
    """While the broker is away (``break_broker`` until ``mend_broker``) sales go on,
    their events wait in the outbox and the relay says so; once it is back every
    sale arrives exactly once."""

    async def scenario(break_broker: Callable[[], object], mend_broker: Callable[[], object]):
        product = await new_product(stock=100)
        orders = [order() for _ in range(10)]
        relay = mesh.grpc_target("inventory_relay")
        await asyncio.to_thread(break_broker)
        try:
            for order_id in orders:  # sales go on: the outbox keeps their events
                await sell(http, product, order_id)
            await eventually(
                lambda: grpc_health(relay, "inventory_svc.outbox_relay") == "NOT_SERVING",
                what="the relay reporting the outage",
            )
            # The API stays in Envoy's rotation.
            assert grpc_health(mesh.grpc_target("inventory_svc")) == "SERVING"
            backlog = await inventory_db.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            assert backlog >= len(orders)
        finally:
            await asyncio.to_thread(mend_broker)
        await eventually(lambda: pipeline.complete(orders), within=120, what="catch-up")
        assert await pipeline.documents(orders) == {o: 1 for o in orders}
        assert await pipeline.notifications(orders) == {o: 1 for o in orders}
        assert pipeline.emails(orders) == {o: 1 for o in orders}
        await eventually(
            lambda: grpc_health(relay, "inventory_svc.outbox_relay") == "SERVING",
            what="the relay healthy again",
        )

    return scenario


async def test_cut_broker_connections_delay_sales_events_but_lose_none(
    sales_through_an_outage, broker
):
    """The outage as the test mesh sees it: its connections to RabbitMQ dropped
    and new ones refused (the proxy in front of the broker), nobody else's."""
    await sales_through_an_outage(broker.cut, broker.restore)


async def test_a_broker_drop_while_emails_are_marked_sent_resends_none(
    mesh, http, pipeline, new_product, broker, notify_db, mail
):
    """The issue's case: the broker connection drops between the mail server's
    acceptance and the mark 'sent' (made to wait here by a row lock the test
    holds, no mocks). The dropped channel cancels notify's handlers; the marks
    still complete, and the redelivered events find the e-mails sent."""
    product = await new_product(stock=10)
    orders = [order() for _ in range(4)]
    notify = mesh.grpc_target("notify_svc")
    mail.answer.clear()  # the mail server holds its answer: the e-mails stay unsent
    try:
        for order_id in orders:
            await sell(http, product, order_id)
        await eventually(
            lambda: _claimed(notify_db, orders), what="the e-mails claimed, at the mail server"
        )
        async with notify_db.acquire() as locker, locker.transaction():
            await locker.execute(
                "SELECT 1 FROM notifications WHERE order_id = ANY($1) FOR UPDATE", orders
            )
            mail.answer.set()  # accepted: now the marks 'sent' wait on the rows
            await eventually(
                lambda: pipeline.emails(orders) == {o: 1 for o in orders},
                what="the e-mails accepted by the mail server",
            )
            # Marks made together share a statement (notify_svc/store.py): one
            # waits on the locked rows, the later ones queue behind it inside
            # notify_svc, where the database does not see them.
            await eventually(lambda: _marks_waiting(notify_db), what="the marks waiting")
            await asyncio.to_thread(broker.cut)
            await eventually(
                lambda: grpc_health(notify, "notify_svc.consumer") == "NOT_SERVING",
                what="notify_svc noticing the dropped connection",
            )
        # The row locks are gone: the marks complete (or, before, had been cancelled).
        await asyncio.to_thread(broker.restore)
        await eventually(lambda: pipeline.complete(orders), within=90, what="all e-mails sent")
    finally:
        mail.answer.set()
        await asyncio.to_thread(broker.restore)
    assert await pipeline.notifications(orders) == {o: 1 for o in orders}
    assert pipeline.emails(orders) == {o: 1 for o in orders}


async def _claimed(db, orders: list[str]) -> bool:
    claimed = await db.fetchval(
        "SELECT count(*) FROM notifications WHERE order_id = ANY($1) AND status = 'sending'",
        orders,
    )
    return claimed == len(orders)


async def _marks_waiting(db) -> bool:
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE '%UPDATE notifications SET status%'"
    )
    return waiting > 0


@pytest.mark.broker_outage
async def test_a_broker_outage_delays_sales_events_but_loses_none(sales_through_an_outage):
    """A real outage: RabbitMQ itself stopped (``rabbitmqctl stop_app``, needs root).
    Opt-in (``make test-outage``): it stops the broker for everyone on the machine."""
    await sales_through_an_outage(
        lambda: rabbitmqctl("stop_app"),
        lambda: (rabbitmqctl("start_app"), rabbitmqctl("await_startup")),
    )
