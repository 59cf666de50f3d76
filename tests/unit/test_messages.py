"""Messages crossing between upb and betterproto by field values (meshkit.messages)
are the very messages betterproto's own (de)serialisation gives, byte for byte."""

import inspect

import betterproto
import pytest

import polyglot.analytics.v1 as analytics_pb
import polyglot.inventory.v1 as inventory_pb
import polyglot.notify.v1 as notify_pb
from inventory_svc.domain import Product
from inventory_svc.grpc_api import InventoryApi
from meshkit.messages import RequestDecoder, flat_field_names, response_encoder
from meshkit.reflection import mesh_pool
from tests.support.fakes import FakeInventory

# Values unlike the defaults, the sign and width cases included (a negative int32
# is a 10-byte varint on the wire).
SAMPLES: dict[str, list[object]] = {
    "int32": [-7, 2**31 - 1, 0],
    "int64": [-(2**40), 2**63 - 1, 0],
    "uint32": [2**32 - 1, 1, 0],
    "uint64": [2**64 - 1, 1, 0],
    "sint32": [-1, 2**31 - 1, 0],
    "sint64": [-1, -(2**63), 0],
    "bool": [True, False, False],
    "string": ["ünïcode ✓ ORD-1", "x" * 300, ""],
    "bytes": [b"\x00\xff", b"y" * 200, b""],
    "double": [1.5, -0.25, 0.0],
    "float": [0.5, -2.0, 0.0],
}


def contract_messages() -> list[type[betterproto.Message]]:
    return [
        kind
        for module in (inventory_pb, analytics_pb, notify_pb)
        for _, kind in inspect.getmembers(module, inspect.isclass)
        if issubclass(kind, betterproto.Message) and kind.__module__ == module.__name__
    ]


def descriptor_of(kind: type[betterproto.Message]):
    return mesh_pool().FindMessageTypeByName(f"{kind.__module__}.{kind.__name__}")


FLAT = [kind for kind in contract_messages() if flat_field_names(descriptor_of(kind), kind)]


def test_every_inventory_message_is_flat():
    # The sale's hot path takes the short way in both directions.
    inventory = {k.__name__ for k in contract_messages() if k.__module__ == inventory_pb.__name__}
    assert inventory - {k.__name__ for k in FLAT} == {"ListProductsResponse"}


@pytest.mark.parametrize("kind", FLAT, ids=lambda kind: kind.__name__)
@pytest.mark.parametrize("case", range(3))
def test_a_flat_message_crosses_by_values_as_betterproto_would(kind, case):
    meta = kind._betterproto.meta_by_field_name
    message = kind(**{name: SAMPLES[field.proto_type][case] for name, field in meta.items()})
    descriptor = descriptor_of(kind)
    assert response_encoder(kind, descriptor)(message) == bytes(message)
    decoded = RequestDecoder(kind, descriptor)(bytes(message))
    assert decoded == message
    assert type(decoded) is kind
    assert decoded.__dict__ == message.__dict__  # the state betterproto's own init leaves


@pytest.mark.parametrize("kind", FLAT, ids=lambda kind: kind.__name__)
def test_a_response_with_fields_never_set_is_encoded_with_their_defaults(kind):
    assert response_encoder(kind, descriptor_of(kind))(kind()) == bytes(kind()) == b""


def test_other_messages_keep_betterproto_serialisation():
    kind = inventory_pb.ListProductsResponse
    assert response_encoder(kind, descriptor_of(kind)) is bytes
    response = kind(products=[inventory_pb.Product(product_id=1, name="a", stock=2)])
    assert RequestDecoder(kind, descriptor_of(kind))(bytes(response)) == response


async def test_inventory_responses_are_built_as_betterproto_would_build_them():
    # grpc_api builds its flat responses without betterproto's __init__ (built):
    # every field given, the same state; a field the contract gains fails here.
    api = InventoryApi(FakeInventory(Product(1, "Laptop", 10)))
    pb = inventory_pb
    answers = [
        (
            await api.get_stock(pb.GetStockRequest(product_id=1)),
            pb.GetStockResponse(product_id=1, name="Laptop", stock=10),
        ),
        (
            await api.decrease_stock(
                pb.DecreaseStockRequest(product_id=1, quantity=2, order_id="ORD-1")
            ),
            pb.DecreaseStockResponse(product_id=1, current_stock=8, order_id="ORD-1"),
        ),
        (
            await api.restock_product(pb.RestockProductRequest(product_id=1, quantity=5)),
            pb.RestockProductResponse(product_id=1, name="Laptop", stock=13),
        ),
    ]
    for response, expected in answers:
        assert response.__dict__ == expected.__dict__
        assert response_encoder(type(response), descriptor_of(type(response)))(response) == bytes(
            expected
        )
