"""Page tokens: what is issued decodes back; anything else is INVALID_ARGUMENT."""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from analytics_svc import domain as analytics
from meshkit import paging
from meshkit.errors import InvalidArgument
from notify_svc import domain as notify

EVENT_ID = str(uuid.uuid4())
AT = datetime(2026, 11, 1, 12, 30, 15, 123000, tzinfo=UTC)
FOREIGN = "page_token is not one this service issued"


def token_of(value: object) -> str:
    """A token built by hand, the way a forger would."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def test_time_cursor_round_trip():
    token = paging.encode_time_cursor(AT, EVENT_ID)
    assert paging.decode_time_cursor(token) == (AT, EVENT_ID)
    assert paging.decode_time_cursor("") is None


def test_time_cursor_with_another_offset_decodes_to_the_same_instant_in_utc():
    at = AT.astimezone(timezone(timedelta(hours=-5)))
    decoded, _ = paging.decode_time_cursor(paging.encode_time_cursor(at, EVENT_ID))
    assert decoded == AT
    assert decoded.tzinfo is UTC


FORGED_TIME_TOKENS = {
    "key not a UUID": token_of([AT.isoformat(), "not-a-uuid"]),
    "key empty": token_of([AT.isoformat(), ""]),
    "key a lone surrogate": token_of([AT.isoformat(), "\ud800"]),
    "time not ISO": token_of(["yesterday", EVENT_ID]),
    "time without offset": token_of(["2026-11-01T12:30:15", EVENT_ID]),
    "time overflowing UTC (year 1)": token_of(["0001-01-01T00:00:00+01:00", EVENT_ID]),
    "time overflowing UTC (year 9999)": token_of(["9999-12-31T23:59:59-01:00", EVENT_ID]),
    "wrong types": token_of([1, 2]),
    "bool for a string": token_of([True, EVENT_ID]),
    "three values": token_of([AT.isoformat(), EVENT_ID, "x"]),
    "an object": token_of({"at": AT.isoformat(), "id": EVENT_ID}),
    "deeply nested": base64.urlsafe_b64encode(b"[" * 100_000).decode(),
    "not base64": "garbage!",
    "not JSON": base64.urlsafe_b64encode(b"\xff\xfe").decode(),
}


@pytest.mark.parametrize("token", FORGED_TIME_TOKENS.values(), ids=FORGED_TIME_TOKENS.keys())
def test_forged_time_cursors_are_rejected(token):
    with pytest.raises(InvalidArgument, match=FOREIGN):
        paging.decode_time_cursor(token)


@pytest.mark.parametrize("token", FORGED_TIME_TOKENS.values(), ids=FORGED_TIME_TOKENS.keys())
def test_notify_rejects_forged_page_tokens(token):
    with pytest.raises(InvalidArgument, match=FOREIGN):
        notify.notifications_page(10, token, order_id="")


@pytest.mark.parametrize("token", FORGED_TIME_TOKENS.values(), ids=FORGED_TIME_TOKENS.keys())
def test_analytics_rejects_forged_page_tokens(token):
    with pytest.raises(InvalidArgument, match=FOREIGN):
        analytics.events_page(10, token, product_id=0)


def test_services_accept_the_tokens_they_issue():
    token = paging.encode_time_cursor(AT, EVENT_ID)
    assert notify.notifications_page(10, token, "").after == (AT, EVENT_ID)
    assert analytics.events_page(10, token, 0).after == (AT, EVENT_ID)


def test_an_over_long_token_is_foreign_before_any_decoding():
    token = paging.encode_cursor("x" * paging.MAX_PAGE_TOKEN_LENGTH)
    assert len(token) > paging.MAX_PAGE_TOKEN_LENGTH
    with pytest.raises(InvalidArgument, match=FOREIGN):
        paging.decode_cursor(token, str)


@pytest.mark.parametrize("order_id", ["\x00", "a b", "x" * 65, "-x"])
def test_notify_filters_only_by_real_order_ids(order_id):
    # A NUL would reach PostgreSQL, which refuses it in text (INTERNAL).
    with pytest.raises(InvalidArgument, match="order_id must be empty or an order id"):
        notify.notifications_page(10, "", order_id=order_id)
    assert notify.notifications_page(10, "", order_id="ORD-1").order_id == "ORD-1"
