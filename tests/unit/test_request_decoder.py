"""The strict request decoder of meshkit.messages, on raw bytes (no server)."""

import pytest

import polyglot.analytics.v1 as analytics_pb
import polyglot.inventory.v1 as pb
from meshkit.messages import MalformedRequest, RequestDecoder
from meshkit.reflection import mesh_pool
from tests.support.protofuzz import varint


def decoder(message: type) -> RequestDecoder:
    package = message.__module__
    return RequestDecoder(
        message, mesh_pool().FindMessageTypeByName(f"{package}.{message.__name__}")
    )


DECREASE = decoder(pb.DecreaseStockRequest)
SUMMARY = decoder(analytics_pb.GetSalesSummaryRequest)


def test_a_well_formed_request_is_the_betterproto_message():
    request = pb.DecreaseStockRequest(product_id=1, quantity=2, order_id="ORD-1")
    assert DECREASE(bytes(request)) == request


def test_unknown_fields_are_dropped():
    request = pb.DecreaseStockRequest(product_id=1, quantity=2, order_id="ORD-1")
    for unknown in (
        b"\xa0\x06\x07",
        b"\xfb\x01\xfc\x01",
        b"\xa2\x06\x02\xff\xfe",
    ):  # varint, group, bytes
        assert DECREASE(unknown + bytes(request)) == request


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([0x12, 2, 0x41, 0x42]), "field quantity has the wrong wire type"),
        (bytes([0x09]) + b"\x01" * 8, "field product_id has the wrong wire type"),
        (bytes([0x0B, 0x0C]), "field product_id has the wrong wire type"),  # a group
        (bytes([0x1A, 2, 0xFF, 0xFE]), "string field had bad UTF-8"),
        (bytes([0x08, 0xFF]), "wire format was corrupt"),
        (bytes([0x1A, 10, 0x41]), "wire format was corrupt"),
        (bytes([0x08]) + b"\xff" * 10 + b"\x01", "wire format was corrupt"),
        (bytes([0x00, 0x01]), "wire format was corrupt"),  # field number 0
    ],
)
def test_malformed_bytes_say_why(data, reason):
    result = DECREASE(data)
    assert isinstance(result, MalformedRequest)
    assert str(result) == f"the request is not a valid DecreaseStockRequest: {reason}"


def test_nested_messages_are_checked_too():
    result = SUMMARY(bytes([0x0A, 3, 0x12, 1, 0x41]))  # start_time.nanos as bytes
    assert str(result).endswith("field start_time.nanos has the wrong wire type")
    deep = b""
    for _ in range(200):  # junk nested beyond protobuf's recursion limit
        deep = b"\x0a" + varint(len(deep)) + deep
    assert isinstance(SUMMARY(deep), MalformedRequest)


def test_a_timestamp_beyond_datetime_is_malformed():
    far = bytes([0x08]) + varint(2**40)  # seconds: year ~36812
    result = SUMMARY(bytes([0x0A, len(far)]) + far)
    assert str(result).endswith("a value is out of the supported range")
