"""The contracts, read from the buf-built descriptor set: the one reader of it that
the topology, the access table, Envoy's config, the docs and the benchmarks share.

Services (with the backend that serves each), RPCs (with the REST route of their
``google.api.http`` option), messages and enums of the ``polyglot.*`` packages,
each with the doc comment written above it in the .proto source (``source_code_info``).
"""

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
    MethodDescriptorProto,
    ServiceDescriptorProto,
)

# Written by `make generate` (buf build); package data of ``polyglot`` in an image.
DESCRIPTOR_SET = (
    Path(__file__).resolve().parent.parent / "gen" / "python" / "polyglot" / "mesh.binpb"
)

# Field numbers in descriptor.proto that make up source_code_info location paths.
FILE_PACKAGE, FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 2, 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2

Path_ = tuple[int, ...]


@dataclass(frozen=True)
class HttpRoute:
    """One ``google.api.http`` rule: e.g. POST /inventory/{product_id}/restock, body "*"."""

    method: str
    path: str
    body: str  # "" (no body), "*" (every field not bound in the path) or a field name

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([^}]+)\}", self.path)


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    comment: str
    type: FieldDescriptorProto.Type.ValueType
    type_name: str  # full name of the message or enum type, without the leading dot
    repeated: bool
    optional: bool  # proto3 `optional`

    @property
    def scalar_name(self) -> str:
        return FieldDescriptorProto.Type.Name(self.type).removeprefix("TYPE_").lower()


@dataclass(frozen=True)
class _Element:
    """Something with a full proto name and a doc comment."""

    full_name: str
    comment: str

    @property
    def name(self) -> str:
        return self.full_name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Message(_Element):
    fields: list[Field]
    map_entry: bool


@dataclass(frozen=True)
class EnumValue:
    name: str
    number: int
    comment: str


@dataclass(frozen=True)
class Enum(_Element):
    values: list[EnumValue]


@dataclass(frozen=True)
class Rpc:
    name: str
    comment: str
    request: str  # full message names
    response: str
    route: HttpRoute | None


@dataclass(frozen=True)
class Service(_Element):
    rpcs: list[Rpc]

    @property
    def backend(self) -> str:
        """The convention: package ``polyglot.<name>.vN`` is served by ``<name>_svc``."""
        return f"{self.full_name.split('.')[1]}_svc"


@dataclass(frozen=True)
class ProtoFile:
    name: str
    package: str
    comment: str
    services: list[Service]
    messages: list[Message]  # nested ones included, outer first
    enums: list[Enum]


@dataclass(frozen=True)
class Contracts:
    files: list[ProtoFile]  # the polyglot.* files, in descriptor-set order

    @cached_property
    def messages(self) -> dict[str, Message]:
        return {m.full_name: m for f in self.files for m in f.messages}

    @cached_property
    def enums(self) -> dict[str, Enum]:
        return {e.full_name: e for f in self.files for e in f.enums}

    @property
    def services(self) -> list[Service]:
        return [s for f in self.files for s in f.services]

    def map_entry(self, field: Field) -> Message | None:
        """The key/value entry type when ``field`` is a map, else None."""
        entry = self.messages.get(field.type_name)
        return entry if field.repeated and entry and entry.map_entry else None


def summary(comment: str) -> str:
    """The first sentence of a doc comment."""
    first = comment.split("\n\n", 1)[0].replace("\n", " ")
    return re.split(r"(?<=\.)\s", first, maxsplit=1)[0]


def _clean(comment: str) -> str:
    """A leading comment without the space after each ``//``."""
    return "\n".join(line.removeprefix(" ") for line in comment.splitlines()).strip()


class _Reader:
    """Reads one file's descriptor, looking comments up by location path."""

    def __init__(self, file: FileDescriptorProto, http_rule: "_HttpRules") -> None:
        self.file = file
        self.http_rule = http_rule
        self.comments = {
            tuple(loc.path): _clean(loc.leading_comments)
            for loc in file.source_code_info.location
            if loc.leading_comments
        }

    def read(self) -> ProtoFile:
        f = self.file
        messages: list[Message] = []
        enums = [self._enum(e, f.package, (FILE_ENUM, i)) for i, e in enumerate(f.enum_type)]
        for i, message in enumerate(f.message_type):
            self._message(message, f.package, (FILE_MESSAGE, i), messages, enums)
        services = [self._service(s, (FILE_SERVICE, i)) for i, s in enumerate(f.service)]
        comment = self.comments.get((FILE_PACKAGE,), "")
        return ProtoFile(f.name, f.package, comment, services, messages, enums)

    def _message(
        self,
        message: DescriptorProto,
        scope: str,
        path: Path_,
        messages: list[Message],
        enums: list[Enum],
    ) -> None:
        full_name = f"{scope}.{message.name}"
        fields = [self._field(fd, (*path, MESSAGE_FIELD, i)) for i, fd in enumerate(message.field)]
        comment = self.comments.get(path, "")
        messages.append(Message(full_name, comment, fields, message.options.map_entry))
        for i, nested in enumerate(message.nested_type):
            self._message(nested, full_name, (*path, MESSAGE_NESTED, i), messages, enums)
        for i, enum in enumerate(message.enum_type):
            enums.append(self._enum(enum, full_name, (*path, MESSAGE_ENUM, i)))

    def _field(self, field: FieldDescriptorProto, path: Path_) -> Field:
        return Field(
            name=field.name,
            number=field.number,
            comment=self.comments.get(path, ""),
            type=field.type,
            type_name=field.type_name.removeprefix("."),
            repeated=field.label == FieldDescriptorProto.LABEL_REPEATED,
            optional=field.proto3_optional,
        )

    def _enum(self, enum: EnumDescriptorProto, scope: str, path: Path_) -> Enum:
        values = [
            EnumValue(v.name, v.number, self.comments.get((*path, ENUM_VALUE, i), ""))
            for i, v in enumerate(enum.value)
        ]
        return Enum(f"{scope}.{enum.name}", self.comments.get(path, ""), values)

    def _service(self, service: ServiceDescriptorProto, path: Path_) -> Service:
        rpcs = [self._rpc(m, (*path, SERVICE_METHOD, i)) for i, m in enumerate(service.method)]
        full_name = f"{self.file.package}.{service.name}"
        return Service(full_name, self.comments.get(path, ""), rpcs)

    def _rpc(self, method: MethodDescriptorProto, path: Path_) -> Rpc:
        return Rpc(
            name=method.name,
            comment=self.comments.get(path, ""),
            request=method.input_type.removeprefix("."),
            response=method.output_type.removeprefix("."),
            route=self.http_rule(method),
        )


class _HttpRules:
    """Decodes the ``google.api.http`` method option.

    The descriptor set carries the vendored google/api/http.proto itself, so the
    HttpRule message class is built from it at runtime: no googleapis package needed.
    """

    def __init__(self, descriptor_set: FileDescriptorSet) -> None:
        pool = descriptor_pool.DescriptorPool()
        for file in descriptor_set.file:
            pool.Add(file)
        self.options_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.MethodOptions")
        )
        self.extension = pool.FindExtensionByName("google.api.http")

    def __call__(self, method: MethodDescriptorProto) -> HttpRoute | None:
        # Classes made at run time from the descriptor set: no static type knows their fields.
        options: Any = self.options_class.FromString(method.options.SerializeToString())
        if not options.HasExtension(self.extension):
            return None
        rule = options.Extensions[self.extension]
        if rule.additional_bindings:
            raise ValueError(f"{method.name}: additional_bindings are not documented yet")
        verb = rule.WhichOneof("pattern")
        if verb == "custom":
            return HttpRoute(rule.custom.kind.upper(), rule.custom.path, rule.body)
        return HttpRoute(verb.upper(), getattr(rule, verb), rule.body)


def load_contracts(descriptor_set: Path = DESCRIPTOR_SET) -> Contracts:
    files = FileDescriptorSet.FromString(descriptor_set.read_bytes())
    http_rules = _HttpRules(files)
    return Contracts(
        [_Reader(f, http_rules).read() for f in files.file if f.package.startswith("polyglot.")]
    )
