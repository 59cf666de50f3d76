"""The events as the contracts define them; this module changes with the contracts.

Every event is a message from proto/polyglot/events/; the generated class is the
only definition of its fields. This module is the one Python home of each event:

- its routing key and generated class (``EVENT_TYPES``), used by the publisher;
- its JSON body, made from the generated class (``product_sold_body``);
- its wire type (``ProductSold``): a pydantic model derived from the generated
  class, which FastStream validates incoming bodies into and documents in
  AsyncAPI (field descriptions from the proto comments). It is a new class made
  here, so the generated one is never changed and the AsyncAPI document does
  not depend on which module was imported first;
- what a consumer may rely on in it (``checked_product_sold``).

Which exchanges and queues the events travel on is meshkit/broker_topology.py;
how the services connect, publish and subscribe is meshkit/broker.py.
"""

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import typing
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import betterproto
import pydantic

import polyglot.events.v1 as events_pb

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PRODUCT_SOLD = "inventory.product_sold"

# Routing key → the generated message travelling under it.
EVENT_TYPES: dict[str, type[betterproto.Message]] = {PRODUCT_SOLD: events_pb.ProductSold}


# --- the wire types -----------------------------------------------------------


def _field_docs(message: type[betterproto.Message]) -> dict[str, str]:
    """The comment betterproto writes under each field (from the .proto file)."""
    [body] = ast.parse(textwrap.dedent(inspect.getsource(message))).body
    assert isinstance(body, ast.ClassDef)  # the source of a class is its class statement
    docs = {}
    for node, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def wire_type(message: type[betterproto.Message]) -> type[pydantic.BaseModel]:
    """The message as subscribers receive it: the generated class's fields and
    comments, proto3 defaults for what a body leaves out (message fields: None,
    which ``checked_…`` functions refuse where a field is required)."""
    hints = typing.get_type_hints(message)
    docs = _field_docs(message)
    fields: dict[str, Any] = {}
    # Generated messages are dataclasses; betterproto.Message, their base, is not.
    for field in dataclasses.fields(message):  # type: ignore[arg-type]
        kind = field.metadata["betterproto"].proto_type
        default = None if kind == betterproto.TYPE_MESSAGE else getattr(message(), field.name)
        fields[field.name] = (
            hints[field.name],
            pydantic.Field(default=default, description=docs.get(field.name)),
        )
    return pydantic.create_model(
        message.__name__,
        __doc__=inspect.cleandoc(message.__doc__ or ""),
        __module__=__name__,
        **fields,
    )


if TYPE_CHECKING:

    class ProductSold(pydantic.BaseModel):
        """The wire type as mypy sees it: its fields (the generated class's, added
        by create_model at import) are not visible statically, so they read as Any."""

        def __getattr__(self, name: str) -> Any: ...

else:
    ProductSold = wire_type(events_pb.ProductSold)


# --- bodies -------------------------------------------------------------------


def event_body(message: betterproto.Message) -> str:
    """The JSON body of an event: proto3 JSON with the proto field names, every field."""
    return json.dumps(
        # betterproto annotates casing as Casing, whose "members" are its functions.
        message.to_dict(casing=betterproto.Casing.SNAKE, include_default_values=True),  # type: ignore[arg-type]
        separators=(",", ":"),
    )


# proto3 JSON of a scalar field is the Python value itself for these types, so a
# body of such fields can be written without building the message (below).
_PLAIN_JSON = {"string": str, "int32": int}


@functools.cache
def _product_sold_defaults() -> tuple[dict[str, Any], dict[str, type]]:
    """ProductSold's body with every field at its default (made once by betterproto,
    so it follows the contract), and the fields whose JSON is their plain value."""
    # betterproto's classproperty is typed so that mypy rejects every class it is read on.
    fields = events_pb.ProductSold._betterproto.meta_by_field_name  # type: ignore[arg-type]
    plain = {
        name: _PLAIN_JSON[meta.proto_type]
        for name, meta in fields.items()
        if meta.proto_type in _PLAIN_JSON
    }
    return json.loads(event_body(events_pb.ProductSold())), plain


def product_sold_body(**known: Any) -> str:
    """A ProductSold body with the fields ``known`` so far (the others at their defaults).

    inventory_svc makes it from the sale request before its one-statement sale;
    the statement sets the values only the database knows (store.py). Built on
    every sale, so the usual case skips betterproto: when every known value is a
    string or int32 field of the right type, the defaults are copied and those
    values set, which is the same JSON event_body makes (tests/unit/
    test_events_contract.py) for a tenth of the CPU (bench/findings.md).
    """
    defaults, plain = _product_sold_defaults()
    if all(type(value) is plain.get(name) for name, value in known.items()):
        return json.dumps({**defaults, **known}, separators=(",", ":"))
    return event_body(events_pb.ProductSold(**known))


D = TypeVar("D", bound="DataclassInstance")


def to_domain(event: pydantic.BaseModel, domain_type: type[D]) -> D:
    """The fields a service's domain dataclass wants, taken from the wire message
    by name: each service maps at its edge (events.py) and its domain never sees
    the wire type."""
    return domain_type(**{f.name: getattr(event, f.name) for f in dataclasses.fields(domain_type)})


class UnusableEvent(ValueError):
    """An event no retry can make usable: its message belongs in the DLQ."""


def checked_product_sold(event: ProductSold) -> ProductSold:
    """What every consumer may rely on in a ProductSold; raises with the reasons.

    proto3 turns missing fields into defaults, so a body of ``{}`` parses; this
    is where such an event is told apart from a real sale.
    """
    problems = []
    try:
        uuid.UUID(event.event_id)
    except ValueError:
        problems.append(f"event_id {event.event_id!r} is not a UUID")
    if not event.order_id:
        problems.append("order_id is empty")
    if event.product_id <= 0:
        problems.append(f"product_id {event.product_id} is not positive")
    if event.quantity <= 0:
        problems.append(f"quantity {event.quantity} is not positive")
    if event.remaining_stock < 0:
        problems.append(f"remaining_stock {event.remaining_stock} is negative")
    if event.occurred_at is None:
        problems.append("occurred_at is missing")
    if problems:
        raise UnusableEvent("unusable ProductSold: " + "; ".join(problems))
    return event
