"""What a request and a response cost to cross between the wire and betterproto
(meshkit.messages), by field values and the way through bytes it replaced:
``python -m bench.message_cost``. In process, no server: µs per message, the two
ways taking turns (medians of 7 rounds), and with ``--callgrind`` instructions
under valgrind (repeatable whatever else the machine does).
"""

import statistics
import time
from collections.abc import Callable

import betterproto
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor

import polyglot.inventory.v1 as pb
from meshkit.messages import RequestDecoder, response_encoder, wire_type_mismatch
from meshkit.reflection import mesh_pool

CASES: list[tuple[betterproto.Message, betterproto.Message]] = [
    (pb.GetStockRequest(product_id=42), pb.GetStockResponse(product_id=42, name="Widget", stock=7)),
    (
        pb.DecreaseStockRequest(product_id=42, quantity=2, order_id="ORD-2024-000123"),
        pb.DecreaseStockResponse(product_id=42, current_stock=5, order_id="ORD-2024-000123"),
    ),
]


def descriptor(message: betterproto.Message) -> Descriptor:
    kind = type(message)
    return mesh_pool().FindMessageTypeByName(f"{kind.__module__}.{kind.__name__}")


def through_bytes(request: betterproto.Message) -> Callable[[bytes], betterproto.Message]:
    """Until 2026-12-06: upb checks, re-encodes, betterproto parses again."""
    strict_type = message_factory.GetMessageClass(descriptor(request))
    kind = type(request)

    def decode(data: bytes) -> betterproto.Message:
        strict = strict_type()
        strict.ParseFromString(data)
        wire_type_mismatch(strict)
        strict.DiscardUnknownFields()
        return kind().parse(strict.SerializeToString())

    return decode


def per_call(work: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - started) / calls * 1e6


def compared(request: betterproto.Message, response: betterproto.Message) -> tuple[float, float]:
    """µs per request decoded and response encoded: through bytes, by values."""
    data = bytes(request)
    old_decode = through_bytes(request)
    new_decode = RequestDecoder(type(request), descriptor(request))
    new_encode = response_encoder(type(response), descriptor(response))
    assert old_decode(data) == new_decode(data) and new_encode(response) == bytes(response)
    rounds = [
        (
            per_call(lambda: (bytes(response), old_decode(data)), 20_000),
            per_call(lambda: (new_encode(response), new_decode(data)), 20_000),
        )
        for _ in range(7)
    ]
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def main() -> None:
    for request, response in CASES:
        before, after = compared(request, response)
        print(
            f"{type(request).__name__:22} decode + {type(response).__name__:22} encode:"
            f" through bytes {before:6.1f} µs, by values {after:6.1f} µs ({after / before:.2f} x)"
        )


if __name__ == "__main__":
    main()
