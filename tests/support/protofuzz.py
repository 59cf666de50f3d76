"""A seeded generator of protobuf requests, plausible and broken, for fuzzing.

``valid`` builds a well-formed message of a descriptor with edge-case values;
``mutate`` breaks bytes the ways the issue listed and a few more: truncations,
declared fields sent with another wire type, invalid UTF-8 in string fields,
over-long varints, deeply nested junk, lengths past the end, random bytes.
"""

import random
from collections.abc import Callable

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

INTS = [0, 1, -1, 2, 7, 100, 10_000, 10_001, 2**31 - 1, -(2**31), 1_000_000]
STRINGS = ["", "ORD-1", "a b", "x" * 65, "ö", "\x00", "ORD-2024-001", "-x", "0" * 64]
NOT_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"abc\xfe", b"\xe2\x82"]


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are ten-byte two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


def wire_type_of(field: FieldDescriptor) -> int:
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return LEN
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return LEN
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FIXED64):
        return I64
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_FIXED32):
        return I32
    return VARINT


class ProtoFuzzer:
    def __init__(self, seed: int, known_ints: list[int] = ()) -> None:
        self.rng = random.Random(seed)
        self.ints = [*INTS, *known_ints]

    # --- plausible messages -------------------------------------------------

    def valid(self, descriptor: Descriptor, depth: int = 0) -> bytes:
        message = message_factory.GetMessageClass(descriptor)()
        self._fill(message, depth)
        return message.SerializeToString()

    def _fill(self, message: object, depth: int) -> None:
        for field in message.DESCRIPTOR.fields:
            if field.is_repeated or self.rng.random() < 0.2:
                continue  # left at its default (requests have no repeated fields)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth < 3:
                    self._fill(getattr(message, field.name), depth + 1)
            elif field.type == FieldDescriptor.TYPE_STRING:
                setattr(message, field.name, self.rng.choice(STRINGS))
            elif field.type == FieldDescriptor.TYPE_ENUM:
                setattr(message, field.name, self.rng.choice([0, 1, 2, 99, -1]))
            elif field.cpp_type in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64):
                value = self.rng.choice(self.ints)
                if field.name == "seconds":  # a Timestamp: near now, or far off
                    value = self.rng.choice([1_796_000_000, 0, -62135596800, 253402300799])
                elif field.name == "nanos":
                    value = self.rng.choice([0, 999_999_999, 1_000_000_000, -1])
                setattr(message, field.name, value)

    # --- broken ones --------------------------------------------------------

    def mutate(self, descriptor: Descriptor) -> bytes:
        base = self.valid(descriptor)
        strategy: Callable[[Descriptor, bytes], bytes] = self.rng.choice(
            [
                self._truncated,
                self._wrong_wire_type,
                self._bad_utf8,
                self._huge_varint,
                self._nested_junk,
                self._length_past_the_end,
                self._random_bytes,
                self._flipped_bits,
                self._unknown_fields,
            ]
        )
        return strategy(descriptor, base)

    def _field(
        self, descriptor: Descriptor, wanted: Callable[[FieldDescriptor], bool]
    ) -> FieldDescriptor:
        fields = [f for f in descriptor.fields if wanted(f)] or list(descriptor.fields)
        return self.rng.choice(fields)

    def _truncated(self, descriptor: Descriptor, base: bytes) -> bytes:
        data = base + self._wrong_wire_type(descriptor, b"")
        return data[: self.rng.randrange(len(data))] if len(data) > 1 else b"\x08"

    def _wrong_wire_type(self, descriptor: Descriptor, base: bytes) -> bytes:
        field = self._field(descriptor, lambda f: True)
        wire = self.rng.choice(
            [w for w in (VARINT, I64, LEN, SGROUP, I32) if w != wire_type_of(field)]
        )
        payload = {
            VARINT: varint(self.rng.choice(self.ints)),
            I64: self.rng.randbytes(8),
            LEN: varint(3) + self.rng.randbytes(3),
            SGROUP: tag(1, VARINT) + b"\x01" + tag(field.number, EGROUP),
            I32: self.rng.randbytes(4),
        }[wire]
        junk = tag(field.number, wire) + payload
        return self._splice(base, junk)

    def _bad_utf8(self, descriptor: Descriptor, base: bytes) -> bytes:
        strings = [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
        if not strings:
            return self._wrong_wire_type(descriptor, base)
        field = self.rng.choice(strings)
        return self._splice(base, length_delimited(field.number, self.rng.choice(NOT_UTF8)))

    def _huge_varint(self, descriptor: Descriptor, base: bytes) -> bytes:
        field = self._field(descriptor, lambda f: wire_type_of(f) == VARINT)
        over_long = b"\xff" * self.rng.choice([9, 10, 11, 20]) + b"\x01"
        return self._splice(base, tag(field.number, VARINT) + over_long)

    def _nested_junk(self, descriptor: Descriptor, base: bytes) -> bytes:
        field = self._field(descriptor, lambda f: f.type == FieldDescriptor.TYPE_MESSAGE)
        inner = self.rng.randbytes(self.rng.randrange(8))
        for _ in range(self.rng.choice([5, 50, 120, 300])):
            inner = length_delimited(self.rng.choice([field.number, 1]), inner)
        return self._splice(base, length_delimited(field.number, inner))

    def _length_past_the_end(self, descriptor: Descriptor, base: bytes) -> bytes:
        field = self._field(descriptor, lambda f: wire_type_of(f) == LEN)
        return (
            base + tag(field.number, LEN) + varint(self.rng.choice([5, 1000, 2**31, 2**63])) + b"ab"
        )

    def _random_bytes(self, descriptor: Descriptor, base: bytes) -> bytes:
        return self.rng.randbytes(self.rng.randrange(1, 64))

    def _flipped_bits(self, descriptor: Descriptor, base: bytes) -> bytes:
        data = bytearray(base or b"\x08\x01")
        for _ in range(self.rng.randrange(1, 4)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def _unknown_fields(self, descriptor: Descriptor, base: bytes) -> bytes:
        number = self.rng.choice([15, 100, 1000, 536_870_911])
        wire = self.rng.choice([VARINT, I64, LEN, I32, SGROUP])
        payload = {
            VARINT: varint(5),
            I64: bytes(8),
            LEN: varint(2) + b"\xff\xfe",  # bytes we do not know need not be UTF-8
            I32: bytes(4),
            SGROUP: tag(number, EGROUP),
        }[wire]
        return self._splice(base, tag(number, wire) + payload)

    def _splice(self, base: bytes, junk: bytes) -> bytes:
        """``junk`` before or after the fields of ``base`` (fields may come in any order)."""
        return junk + base if self.rng.random() < 0.5 else base + junk
