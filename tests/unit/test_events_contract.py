"""The ProductSold contract as it travels: JSON shape, validation, rendering."""

import dataclasses
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

import polyglot.events.v1 as events_pb
from analytics_svc.domain import Sale as AnalyticsSale
from meshkit import paging
from meshkit.errors import InvalidArgument
from meshkit.events import (
    ProductSold,
    UnusableEvent,
    checked_product_sold,
    event_body,
    product_sold_body,
    to_domain,
)
from notify_svc.domain import Sale as NotifySale
from notify_svc.domain import order_confirmation
from tests.support.sales import product_sold

SOLD_AT = datetime(2026, 11, 28, 9, 30, 15, 123456, tzinfo=UTC)


def sale(**changes) -> ProductSold:
    """The seed's sale (as in the payload below), with ``changes``."""
    fields = dict(
        event_id=str(uuid.UUID(int=1)),
        order_id="ORD-2024-001",
        quantity=2,
        remaining_stock=98,
        occurred_at=SOLD_AT,
        sold_by="alice",
    )
    return product_sold(**{**fields, **changes})


def test_outbox_payload_parses_into_the_contract():
    """What RECORD_SALE writes (to_jsonb(timestamptz) has an offset, not Z)."""
    payload = {
        "event_id": "00000000-0000-0000-0000-000000000001",
        "order_id": "ORD-2024-001",
        "product_id": 1,
        "product_name": "Laptop Gamer",
        "quantity": 2,
        "remaining_stock": 98,
        "sold_by": "alice",
        "occurred_at": "2026-11-28T09:30:15.123456+00:00",
    }
    assert ProductSold.model_validate(payload) == sale()


def test_the_body_is_made_from_the_generated_message_with_every_field():
    body = json.loads(product_sold_body(event_id="e", order_id="o", product_id=3, quantity=2))
    assert list(body) == [f.name for f in dataclasses.fields(events_pb.ProductSold)]
    assert (body["order_id"], body["product_id"], body["quantity"]) == ("o", 3, 2)


@pytest.mark.parametrize(
    "known",
    [
        {},
        {"event_id": "e1", "order_id": "ORD-1", "product_id": 7, "quantity": 3, "sold_by": "dev"},
        {"order_id": 'quote " and \\ backslash, ünïcode', "product_id": 2**31 - 1},
        {"product_id": True},  # a bool is not an int32 value here: betterproto decides
        {"occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "remaining_stock": 4},
    ],
)
def test_the_quick_body_is_exactly_the_generated_messages_json(known):
    assert product_sold_body(**known) == event_body(events_pb.ProductSold(**known))


def test_the_wire_type_has_the_contract_fields_and_their_comments():
    fields = ProductSold.model_fields
    assert list(fields) == [f.name for f in dataclasses.fields(events_pb.ProductSold)]
    assert fields["event_id"].description == (
        "Unique id of this event (UUID); consumers deduplicate by it."
    )
    assert ProductSold.__name__ == "ProductSold"
    assert not hasattr(events_pb.ProductSold, "__pydantic_config__")  # never patched


def test_the_asyncapi_document_does_not_depend_on_import_order():
    """Generated from a fresh interpreter, once with the services imported first."""

    def generate(first: str) -> str:
        code = (
            f"import {first}\n"
            "from devtools.asyncapi import docs\n"
            "print(docs.schema.to_specification().to_yaml())"
        )
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout

    assert generate("notify_svc.events") == generate("json")


def test_services_map_the_wire_message_to_their_own_sale():
    for domain_type in (AnalyticsSale, NotifySale):
        mapped = to_domain(sale(), domain_type)
        assert isinstance(mapped, domain_type)
        assert (mapped.order_id, mapped.quantity, mapped.occurred_at) == (
            "ORD-2024-001",
            2,
            SOLD_AT,
        )


def test_a_real_sale_is_usable():
    assert checked_product_sold(sale()) == sale()


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (sale(event_id="not-a-uuid"), "event_id 'not-a-uuid' is not a UUID"),
        (sale(order_id=""), "order_id is empty"),
        (sale(product_id=0), "product_id 0 is not positive"),
        (sale(quantity=0), "quantity 0 is not positive"),
        (sale(remaining_stock=-1), "remaining_stock -1 is negative"),
        (  # a body without occurred_at: the wire type's default
            ProductSold(event_id=str(uuid.uuid4()), order_id="o", product_id=1, quantity=1),
            "occurred_at is missing",
        ),
        (ProductSold(), "order_id is empty"),
    ],
)
def test_unusable_events_are_refused_with_the_reason(event, reason):
    with pytest.raises(UnusableEvent, match=reason):
        checked_product_sold(event)


def test_order_confirmation_names_the_order_and_is_stable_per_event():
    email = order_confirmation(
        to_domain(sale(), NotifySale), sender="orders@x.test", recipient="logistics@x.test"
    )
    assert email.subject == "Order ORD-2024-001 confirmed: 2 x Laptop Gamer"
    assert email.recipient == "logistics@x.test"
    assert email.message_id == "<00000000-0000-0000-0000-000000000001@polyglotmicro.local>"
    assert "Stock left: 98" in email.body and "2026-11-28 09:30:15 UTC" in email.body
    again = order_confirmation(
        to_domain(sale(), NotifySale), sender="orders@x.test", recipient="logistics@x.test"
    )
    assert again == email


def test_time_cursor_round_trip_and_foreign_tokens():
    event_id = str(uuid.UUID(int=1))  # time cursors carry event ids, always UUIDs
    token = paging.encode_time_cursor(SOLD_AT, event_id)
    assert paging.decode_time_cursor(token) == (SOLD_AT, event_id)
    assert paging.decode_time_cursor("") is None
    for foreign in ["xyz", paging.encode_cursor(1, 2), paging.encode_cursor("yesterday", "a")]:
        with pytest.raises(InvalidArgument, match="page_token is not one this service issued"):
            paging.decode_time_cursor(foreign)
