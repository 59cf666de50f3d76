"""What a service does with input no proper client sends: malformed protobuf,
oversized messages, more calls than it takes at once, callers that give up.
Also both versions of server reflection."""

import asyncio
import contextlib
import random

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

import polyglot.analytics.v1 as analytics_pb
import polyglot.inventory.v1 as pb
from devtools.processes import grpc_serving
from tests.support.inventory import inventory_state, stock_of
from tests.support.raw_grpc import GET_STOCK, LAPTOP, RawGrpcConnection, call_raw, frame
from tests.support.sales import decrease_body, order
from tests.support.servers import lone_inventory
from tests.support.waiting import eventually

DECREASE = "/polyglot.inventory.v1.InventoryService/DecreaseStock"
SUMMARY = "/polyglot.analytics.v1.AnalyticsService/GetSalesSummary"
NOTIFICATIONS = "/polyglot.notify.v1.NotificationService/ListNotifications"

# (method, bytes, what the message must say): the cases and their kin.
MALFORMED = [
    # quantity (field 2, an int32) sent length-delimited: betterproto stored a list
    # and the domain failed with "'<=' not supported between 'list' and 'int'".
    (DECREASE, bytes([0x12, 2, 0x41, 0x42]), "field quantity has the wrong wire type"),
    # order_id with invalid UTF-8: was UnicodeDecodeError.
    (DECREASE, bytes([0x1A, 2, 0xFF, 0xFE]), "bad UTF-8"),
    # product_id as fixed64: was KeyError: 'int32'.
    (DECREASE, bytes([0x09]) + b"\x01" * 8, "field product_id has the wrong wire type"),
    (DECREASE, bytes([0x08, 0xFF]), "wire format was corrupt"),  # truncated varint
    (DECREASE, bytes([0x1A, 10, 0x41]), "wire format was corrupt"),  # truncated string
    (DECREASE, bytes([0x08]) + b"\xff" * 10 + b"\x01", "wire format was corrupt"),  # 11-byte varint
    # start_time.nanos length-delimited: was "unsupported operand type(s) for //".
    (SUMMARY, bytes([0x0A, 3, 0x12, 1, 0x41]), "field start_time.nanos has the wrong wire type"),
    (SUMMARY, bytes([0x0A, 0x02, 0x0A, 0x00]) * 3 + bytes([0x0A, 0x80]), "wire format was corrupt"),
    (NOTIFICATIONS, bytes([0x0A, 1, 0xC0]), "bad UTF-8"),
]


def _log_size(mesh, name: str) -> int:
    return mesh.processes[name].log_path.stat().st_size


def _log_since(mesh, name: str, offset: int) -> str:
    """What ``name`` logged after ``offset`` (the mesh is shared with other tests)."""
    with mesh.processes[name].log_path.open() as log:
        log.seek(offset)
        return log.read()


def _backend_of(method: str) -> str:
    return method.split(".")[1] + "_svc"


@pytest.mark.parametrize("via_envoy", [False, True], ids=["direct", "envoy"])
async def test_malformed_protobuf_is_invalid_argument_with_a_readable_message(
    mesh, inventory_db, via_envoy
):
    before = await inventory_state(inventory_db)
    logs = {name: p.log_path for name, p in mesh.processes.items() if name != "envoy"}
    sizes = {name: path.stat().st_size for name, path in logs.items()}
    for method, payload, says in MALFORMED:
        target = mesh.envoy_target if via_envoy else mesh.grpc_target(_backend_of(method))
        token = tuple(mesh.auth_header().items()) if via_envoy else ()
        async with grpc.aio.insecure_channel(target) as channel:
            code, message = await call_raw(channel, method, payload, metadata=token)
        request = method.rsplit("/", 1)[1] + "Request"
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, payload, code, message)
        assert message.startswith(f"the request is not a valid {request}: "), message
        assert says in message
        assert "Error" not in message and "Traceback" not in message
    assert await inventory_state(inventory_db) == before
    for name, path in logs.items():
        with path.open() as log:
            log.seek(sizes[name])
            new = log.read()
        assert "Traceback" not in new
        refused = [line for line in new.splitlines() if "refused a malformed request" in line]
        assert len(refused) == sum(_backend_of(m) == name for m, _, _ in MALFORMED)


# Streams that end (or never end) without one complete request message, as gRPC
# framing goes: a 1-byte flag and a 4-byte length, then the message.
TRUNCATED = b"\x00\x00\x00\x00\x64\x08"  # declares 100 bytes, sends 1 (the issue's)
INCOMPLETE = {
    "truncated message": (TRUNCATED, True),
    "header-only prefix": (b"\x00\x00\x00", True),
    "empty body": (b"", True),
    "held open": (TRUNCATED, False),
}
# "Answered, not hung": an ended stream is answered in milliseconds, a held-open one
# after GRPC_REQUEST_READ_SECONDS (2 s) or, through Envoy, its whole-request timeout
# (EDGE_REQUEST_TIMEOUT_SECONDS, 5 s); before, none was answered until the caller gave up.
ANSWERED_WITHIN = 15.0


@pytest.mark.parametrize("case", INCOMPLETE)
async def test_a_call_without_a_complete_request_message_is_answered_invalid_argument(mesh, case):
    body, end_stream = INCOMPLETE[case]
    logged = _log_size(mesh, "inventory_svc")
    async with await RawGrpcConnection.open(mesh.grpc_target("inventory_svc")) as connection:
        answer = await asyncio.wait_for(
            connection.call(GET_STOCK, body, end_stream=end_stream), ANSWERED_WITHIN
        )
    assert answer.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], answer
    if end_stream:
        assert answer.grpc_message == "the request stream ended without a complete GetStockRequest"
    else:
        assert answer.grpc_message == "no complete GetStockRequest arrived within 2s of the call"
    [line] = _refusals_since(mesh, logged)  # one line, no traceback
    assert f"{GET_STOCK}: refused a call ({answer.grpc_message})" in line


@pytest.mark.parametrize("case", INCOMPLETE)
async def test_through_envoy_such_a_call_is_answered_and_never_reaches_the_service(mesh, case):
    """The edge checks native gRPC input itself (envoy/README.md, "Native gRPC
    input") and forwards whole requests only: an ended stream is refused at once,
    one held open when its whole-request timeout runs out (408: DEADLINE_EXCEEDED)."""
    body, end_stream = INCOMPLETE[case]
    logged = _log_size(mesh, "inventory_svc")
    async with await RawGrpcConnection.open(mesh.envoy_target) as connection:
        answer = await asyncio.wait_for(
            connection.call(GET_STOCK, body, end_stream=end_stream), ANSWERED_WITHIN
        )
    expected = grpc.StatusCode.INVALID_ARGUMENT if end_stream else grpc.StatusCode.DEADLINE_EXCEEDED
    assert answer.grpc_status == expected.value[0], answer
    if not end_stream:  # the edge's own answer, not a backend's timeout
        assert answer.grpc_message == "the request was not received in time", answer
    assert _refusals_since(mesh, logged) == []


def _refusals_since(mesh, offset: int) -> list[str]:
    """inventory_svc's log lines about refused calls (and tracebacks) since ``offset``."""
    return [
        line
        for line in _log_since(mesh, "inventory_svc", offset).splitlines()
        if "refused a call" in line or "Traceback" in line
    ]


# What grpcio's core refuses before any Python runs, with its own code and text
# (envoy/README.md, "Errors": no option of grpcio 1.85 changes them; through Envoy the edge
# answers these itself): (body, metadata, code, message).
CORE_REFUSALS = {
    "corrupt gzip": (
        frame(b"abc", compressed=True),
        (("grpc-encoding", "gzip"),),
        grpc.StatusCode.INTERNAL,
        "Decompression failed due to zlib error",
    ),
    "compression flag without an encoding": (
        frame(LAPTOP, compressed=True),
        (),
        grpc.StatusCode.INTERNAL,
        "Compression bit set but no encoding configured",
    ),
    "unknown encoding": (
        frame(b"abc", compressed=True),
        (("grpc-encoding", "zstdx"),),
        grpc.StatusCode.INTERNAL,
        "Error parsing 'grpc-encoding' metadata",
    ),
    "bad base64 in -bin metadata": (
        frame(LAPTOP),
        (("x-note-bin", "!!!*"),),
        grpc.StatusCode.INTERNAL,
        "Error parsing 'x-note-bin' metadata: illegal base64 encoding",
    ),
    "declared length over the limit": (
        b"\x00\x00\x10\x00\x00" + LAPTOP,
        (),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SERVER: Received message larger than max (1048576 vs. 65536)",
    ),
}


@pytest.mark.parametrize("case", CORE_REFUSALS)
async def test_what_grpcio_refuses_itself_is_answered_with_its_code(mesh, case):
    body, metadata, code, says = CORE_REFUSALS[case]
    address = mesh.grpc_target("inventory_svc")
    async with await RawGrpcConnection.open(address) as connection:
        answer = await asyncio.wait_for(connection.call(GET_STOCK, body, metadata), ANSWERED_WITHIN)
        assert (answer.grpc_status, answer.grpc_message) == (code.value[0], says), answer
        # The service is none the worse: the same connection serves the next call.
        honest = await connection.call(GET_STOCK, frame(LAPTOP))
    assert honest.grpc_status == grpc.StatusCode.OK.value[0], honest


async def test_truncated_streams_leave_honest_reads_and_sales_unharmed(
    mesh, http, anonymous_http, inventory_db, new_product
):
    """The issue's attack, 320 truncated streams on GetStock, once made inventory
    refuse every call (each hung, so they piled up past its concurrency cap).
    Sent here straight at the service, all at once (through Envoy the edge now
    refuses them itself: tests/e2e/test_edge_grpc_input.py): each is answered at
    once, and honest reads and sales through Envoy beside them all succeed."""
    product = await new_product(stock=10_000)
    attacked, honest_started = asyncio.Event(), asyncio.Event()

    async def attack() -> list:
        await honest_started.wait()
        target = mesh.grpc_target("inventory_svc")
        connections = [await RawGrpcConnection.open(target) for _ in range(8)]
        try:
            answers = await asyncio.gather(
                *(connections[n % 8].call(GET_STOCK, TRUNCATED) for n in range(320))
            )
        finally:
            for connection in connections:
                await connection.close()
        attacked.set()
        return answers

    async def honest() -> list[int]:
        statuses = []
        while not attacked.is_set() or len(statuses) < 40:
            read, sale = await asyncio.gather(
                anonymous_http.get(f"/inventory/{product}"),
                http.post("/inventory/decrease", json=decrease_body(product)),
            )
            statuses += [read.status_code, sale.status_code]
            honest_started.set()
        return statuses

    honest_calls = asyncio.create_task(honest())
    answers = await asyncio.wait_for(attack(), ANSWERED_WITHIN)
    statuses = await honest_calls
    assert set(statuses) == {200}, sorted(statuses)
    assert {a.grpc_status for a in answers} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert await stock_of(inventory_db, product) == 10_000 - len(statuses) // 2


async def test_unknown_fields_are_ignored_as_proto3_says(mesh, new_product, inventory_db):
    product = await new_product(stock=5)
    request = bytes(pb.DecreaseStockRequest(product_id=product, quantity=2, order_id=order()))
    from_a_newer_contract = bytes([0xA0, 0x06, 0x07]) + request  # field 100, a varint
    async with grpc.aio.insecure_channel(mesh.grpc_target("inventory_svc")) as channel:
        code, _ = await call_raw(channel, DECREASE, from_a_newer_contract)
    assert code is grpc.StatusCode.OK
    assert await stock_of(inventory_db, product) == 3


async def test_an_oversized_request_is_refused_before_it_is_parsed(mesh):
    # The case: ~3.9 MB of repeated start_time fields to GetSalesSummary.
    huge = bytes([0x0A, 0x02, 0x08, 0x01]) * 1_000_000
    logged = _log_size(mesh, "analytics_svc")
    async with grpc.aio.insecure_channel(
        mesh.grpc_target("analytics_svc"), options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        code, message = await call_raw(channel, SUMMARY, huge)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, message)
        # The service is none the worse for it.
        reply = await channel.unary_unary(
            SUMMARY, response_deserializer=analytics_pb.GetSalesSummaryResponse.FromString
        )(bytes(analytics_pb.GetSalesSummaryRequest()), timeout=30)
    assert reply.orders >= 0
    assert "Traceback" not in _log_since(mesh, "analytics_svc", logged)


async def test_calls_beyond_the_concurrency_cap_are_refused_not_queued(
    tmp_path, inventory_db_url, inventory_db, new_product, mesh_env
):
    # Two products: sales of one product queue behind its write in flight
    # (inventory_svc/batching.py), so only sales of different products wait on
    # their row locks side by side, each holding its call open.
    products = [await new_product(stock=10), await new_product(stock=10)]
    process, address = lone_inventory(
        tmp_path, inventory_db_url, {**mesh_env, "GRPC_MAX_CONCURRENT_RPCS": "2"}
    )
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), "SERVING")
        async with grpc.aio.insecure_channel(address) as channel:
            decrease = channel.unary_unary(
                DECREASE, response_deserializer=pb.DecreaseStockResponse.FromString
            )

            def sale(order_id: str, product: int) -> bytes:
                return bytes(
                    pb.DecreaseStockRequest(product_id=product, quantity=1, order_id=order_id)
                )

            async with inventory_db.acquire() as blocker, blocker.transaction():
                await blocker.execute(
                    "SELECT 1 FROM products WHERE product_id = ANY($1::int[]) FOR UPDATE",
                    products,
                )
                held = [
                    asyncio.ensure_future(decrease(sale(order(), p), timeout=60)) for p in products
                ]
                await eventually(
                    lambda: _waiting_on_lock(inventory_db, 2), what="two sales on the row lock"
                )
                code, message = await call_raw(channel, DECREASE, sale(order(), products[0]))
                assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, message)
            # Lock released: the two calls in hand complete.
            assert [r.current_stock for r in await asyncio.gather(*held)] == [9, 9]
    finally:
        process.stop()
    assert [await stock_of(inventory_db, p) for p in products] == [9, 9]
    assert "Traceback" not in process.log_path.read_text()


async def test_streams_held_open_take_no_place_of_honest_calls(
    tmp_path, inventory_db_url, new_product, mesh_env
):
    """A call counts against GRPC_MAX_CONCURRENT_RPCS only once its request message
    is complete: twenty streams held open without one leave both places of a
    service capped at 2 to honest calls, and are answered once their time is up."""
    product = await new_product(stock=10)
    process, address = lone_inventory(
        tmp_path, inventory_db_url, {**mesh_env, "GRPC_MAX_CONCURRENT_RPCS": "2"}
    )
    try:
        await asyncio.to_thread(process.wait_until, lambda: grpc_serving(address), "SERVING")
        async with (
            await RawGrpcConnection.open(address) as attacker,
            grpc.aio.insecure_channel(address) as channel,
        ):
            held = [
                asyncio.ensure_future(attacker.call(GET_STOCK, TRUNCATED, end_stream=False))
                for _ in range(20)
            ]
            get_stock = channel.unary_unary(
                GET_STOCK, response_deserializer=pb.GetStockResponse.FromString
            )
            request = bytes(pb.GetStockRequest(product_id=product))
            while not any(call.done() for call in held):  # while all twenty are held
                replies = await asyncio.gather(*(get_stock(request, timeout=5) for _ in range(2)))
                assert [r.stock for r in replies] == [10, 10]
            answers = await asyncio.wait_for(asyncio.gather(*held), ANSWERED_WITHIN)
    finally:
        process.stop()
    assert {a.grpc_status for a in answers} == {grpc.StatusCode.INVALID_ARGUMENT.value[0]}
    assert "Traceback" not in process.log_path.read_text()


async def _waiting_on_lock(db, count: int) -> bool:
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE products%'"
    )
    return waiting >= count


async def test_a_call_whose_deadline_passed_stops_its_work(mesh, inventory_db, new_product):
    product = await new_product(stock=10)
    order_id = order()
    request = bytes(pb.DecreaseStockRequest(product_id=product, quantity=1, order_id=order_id))
    async with (
        grpc.aio.insecure_channel(mesh.grpc_target("inventory_svc")) as channel,
        inventory_db.acquire() as blocker,
        blocker.transaction(),
    ):
        await blocker.execute("SELECT 1 FROM products WHERE product_id = $1 FOR UPDATE", product)
        call = asyncio.ensure_future(call_raw(channel, DECREASE, request, deadline=5))
        await eventually(
            lambda: _waiting_on_lock(inventory_db, 1), what="the sale waiting on the row lock"
        )
        code, _ = await call
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        # grpc.aio cancels the handler; asyncpg cancels its statement in PostgreSQL.
        await eventually(
            lambda: _waiting_on_lock_none(inventory_db), what="the sale's statement cancelled"
        )
    # The lock is gone and the abandoned sale never happened.
    assert await stock_of(inventory_db, product) == 10
    assert (
        await inventory_db.fetchval("SELECT count(*) FROM sales WHERE order_id = $1", order_id) == 0
    )


async def _waiting_on_lock_none(db) -> bool:
    return not await _waiting_on_lock(db, 1)


async def test_cancelled_sales_are_told_truthfully_by_their_replay(mesh, inventory_db, new_product):
    """Cancel DecreaseStock calls at random points; each replay tells what happened.

    Whether or not a cancelled call committed, its replay must answer the sale
    (recorded once), the stock must be the start minus every sale, each sale must
    have one outbox event, and the remaining stocks must be a clean countdown.
    """
    stock, quantity, count = 1000, 3, 40
    product = await new_product(stock=stock)
    orders = [order() for _ in range(count)]
    logged = _log_size(mesh, "inventory_svc")
    rng = random.Random(20261128)

    def request(order_id: str) -> bytes:
        return bytes(
            pb.DecreaseStockRequest(product_id=product, quantity=quantity, order_id=order_id)
        )

    async with grpc.aio.insecure_channel(mesh.grpc_target("inventory_svc")) as channel:
        decrease = channel.unary_unary(
            DECREASE, response_deserializer=pb.DecreaseStockResponse.FromString
        )

        async def cancelled_soon(order_id: str) -> None:
            call = decrease(request(order_id), timeout=30)
            await asyncio.sleep(rng.uniform(0, 0.03))  # a random point in the call's life
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

        await asyncio.gather(*(cancelled_soon(o) for o in orders))
        replies = [await decrease(request(o), timeout=30) for o in orders]
    assert all(
        r.order_id == o and r.product_id == product for r, o in zip(replies, orders, strict=True)
    )
    assert sorted(r.current_stock for r in replies) == [
        stock - quantity * n for n in range(count, 0, -1)
    ]
    assert await stock_of(inventory_db, product) == stock - quantity * count
    sales = await inventory_db.fetch(
        "SELECT order_id, remaining_stock FROM sales WHERE product_id = $1", product
    )
    assert sorted(s["order_id"] for s in sales) == sorted(orders)
    events = await inventory_db.fetch(
        "SELECT payload->>'order_id' AS order_id FROM outbox WHERE payload->>'product_id' = $1",
        str(product),
    )
    assert sorted(e["order_id"] for e in events) == sorted(orders)
    assert "Traceback" not in _log_since(mesh, "inventory_svc", logged)


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
@pytest.mark.parametrize("via_envoy", [False, True], ids=["direct", "envoy"])
async def test_reflection_answers_both_protocol_versions(mesh, version, via_envoy):
    target = mesh.envoy_target if via_envoy else mesh.grpc_target("notify_svc")
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    async with grpc.aio.insecure_channel(target) as channel:
        # v1 and v1alpha share their messages' wire format: the v1alpha classes serve both.
        stream = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = stream(timeout=30)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="polyglot.inventory.v1.InventoryService"
            )
        )
        files = await call.read()
        await call.done_writing()
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "polyglot.inventory.v1.InventoryService",
        "polyglot.analytics.v1.AnalyticsService",
        "polyglot.notify.v1.NotificationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert files.file_descriptor_response.file_descriptor_proto
