"""How a call's messages cross between the wire and the servicers' betterproto types.

Requests are decoded strictly before any domain code sees them (``RequestDecoder``):
betterproto parses leniently (a wrong wire type leaves a list where an int belongs,
a truncated string is cut short) or fails late with Python exception texts, so the
bytes are first checked against the contract with protobuf's own parser (upb).

Both directions then go through upb, which parses and serialises in C: a *flat*
message (every field a singular scalar: ints, floats, bools, strings, bytes) crosses
to or from betterproto by its field values, without betterproto's pure-Python
(de)serialisation. Every request and response of inventory_svc is flat; a
GetStock request and response cross in 7 µs instead of 76, a DecreaseStock's in 8
instead of 123 (``python -m bench.message_cost``, bench/findings.md). Other
messages (nested, repeated, enums, optional or oneof fields, whose presence and
types the two libraries model differently) take the longer way through bytes.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import betterproto
from betterproto import PLACEHOLDER
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

M = TypeVar("M", bound=betterproto.Message)


@dataclass(frozen=True)
class MalformedRequest:
    """What the deserializer hands over instead of a message it could not decode.

    grpcio answers an exception raised in a deserializer with UNKNOWN and logs a
    traceback, so the decoder returns this and the handler aborts the call.
    """

    message_name: str
    reason: str

    def __str__(self) -> str:
        return f"the request is not a valid {self.message_name}: {self.reason}"


# upb's DecodeError reads "Error parsing message with type 'X': <reason>".
_UPB_REASON = re.compile(r": ([^:']+)$")


def flat_field_names(
    descriptor: Descriptor, message_type: type[betterproto.Message]
) -> tuple[tuple[str, str], ...] | None:
    """(upb name, betterproto name) of every field when the message is flat, else None."""
    betterproto_names = message_type._betterproto.field_name_by_number  # type: ignore[arg-type]
    names = []
    for field in descriptor.fields:
        if (
            field.message_type is not None
            or field.enum_type is not None  # betterproto wants its Enum, upb an int
            or field.is_repeated
            or field.has_presence  # proto3 optional, oneof: None vs unset differ
            or field.number not in betterproto_names
        ):
            return None
        names.append((field.name, betterproto_names[field.number]))
    return tuple(names)


def built(kind: type[M], values: dict[str, object]) -> M:
    """``kind(**values)`` for a flat betterproto message with every field given,
    without its ``__init__``: betterproto 2.0.0b7's dataclass init, ``__post_init__``
    and per-field ``__setattr__`` cost 28 µs per message, this 5 µs. The state is the
    one ``__post_init__`` leaves (tests/unit/test_messages.py compares them)."""
    message = object.__new__(kind)
    message.__dict__.update(
        values, _serialized_on_wire=True, _unknown_fields=b"", _group_current={}
    )
    return message


class RequestDecoder:
    """Bytes → a well-formed betterproto request, or a ``MalformedRequest``.

    1. protobuf's parser (upb) checks the wire format against the contract:
       truncation, varints over 10 bytes, invalid UTF-8 in strings, nesting depth.
    2. A field of the contract sent with another wire type (upb keeps it as an
       unknown field; betterproto would store a list or raise KeyError) is refused.
    3. A flat message is built from upb's field values; any other is parsed by
       betterproto from upb's canonical re-encoding, without unknown fields
       (fields a newer contract may define are ignored, as proto3 says), so it only
       ever sees what it handles well. What it still refuses (a Timestamp beyond
       datetime's range) is malformed too.
    """

    def __init__(self, request_type: type[betterproto.Message], descriptor: Descriptor) -> None:
        self._type = request_type
        self._strict = message_factory.GetMessageClass(descriptor)
        self._flat = flat_field_names(descriptor, request_type)
        self.message_name = descriptor.name

    def __call__(self, data: bytes) -> betterproto.Message | MalformedRequest:
        strict = self._strict()
        try:
            strict.ParseFromString(data)
        except DecodeError as exc:
            found = _UPB_REASON.search(str(exc))
            reason = found.group(1).strip().rstrip(".") if found else "wire format was corrupt"
            return MalformedRequest(self.message_name, f"{reason[:1].lower()}{reason[1:]}")
        if mismatch := wire_type_mismatch(strict):
            return MalformedRequest(self.message_name, mismatch)
        if self._flat is not None:
            return built(self._type, {ours: getattr(strict, theirs) for theirs, ours in self._flat})
        strict.DiscardUnknownFields()
        try:
            return self._type().parse(strict.SerializeToString())
        except Exception:  # betterproto's own limits; any of them makes the request unusable
            return MalformedRequest(self.message_name, "a value is out of the supported range")


def response_encoder(
    response_type: type[betterproto.Message], descriptor: Descriptor
) -> Callable[[betterproto.Message], bytes]:
    """The serializer of a method's responses: upb's for a flat message, else betterproto's."""
    flat = flat_field_names(descriptor, response_type)
    if flat is None:
        return bytes
    strict = message_factory.GetMessageClass(descriptor)

    def encode(response: betterproto.Message) -> bytes:
        fields = response.__dict__
        values = {theirs: fields[ours] for theirs, ours in flat}
        if PLACEHOLDER in values.values():  # a field never set: its default, the slow way
            values = {theirs: getattr(response, ours) for theirs, ours in flat}
        return strict(**values).SerializeToString()

    return encode


def wire_type_mismatch(message: Message, prefix: str = "") -> str:
    """'' or which declared field of ``message`` (or a nested one) had the wrong wire type."""
    declared = message.DESCRIPTOR.fields_by_number
    for unknown in iter(UnknownFieldSet(message)):  # iterable by index (its stub has no __iter__)
        if field := declared.get(unknown.field_number):
            return f"field {prefix}{field.name} has the wrong wire type"
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        for item in value if field.is_repeated else [value]:
            if mismatch := wire_type_mismatch(item, f"{prefix}{field.name}."):
                return mismatch
    return ""
