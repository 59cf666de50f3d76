"""Server reflection for the whole mesh, doc comments included, in both protocol versions.

Every service serves the descriptors of every contract, so a client behind
Envoy sees all services whichever backend answers its reflection request.
grpcio-reflection rebuilds each file from the descriptor pool, which drops
``source_code_info`` (the doc comments that grpcurl ``describe`` and Postman
show); we answer with the buf-built files as they are.

grpcio-reflection (1.85) implements only ``grpc.reflection.v1alpha``; newer
clients (grpcurl ≥ 1.8.8, Postman, grpcui) ask ``grpc.reflection.v1`` first.
v1 is the same protocol under another package name (identical messages and
field numbers), so the same servicer answers both, and the v1 file descriptor
is derived from the v1alpha one rather than vendored.
"""

from collections.abc import Callable
from functools import cache
from importlib import resources

import grpc
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha.reflection_pb2 import (
    FileDescriptorResponse,
    ServerReflectionRequest,
    ServerReflectionResponse,
)

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"


def mesh_descriptor_set() -> bytes:
    """The buf-built descriptor set of every contract in proto/ (see `make generate`)."""
    return (resources.files("polyglot") / "mesh.binpb").read_bytes()


def reflection_v1_file() -> FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, derived from the v1alpha file."""
    file = FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    file.name = file.name.replace("/v1alpha/", "/v1/")
    file.package = V1
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(f".{V1ALPHA}.", f".{V1}.")
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{V1ALPHA}.", f".{V1}.")
            method.output_type = method.output_type.replace(f".{V1ALPHA}.", f".{V1}.")
    return file


def mesh_files() -> list[FileDescriptorProto]:
    """Every mesh contract plus grpc.health.v1 and both reflection versions."""
    files = list(FileDescriptorSet.FromString(mesh_descriptor_set()).file)
    for module in (health_pb2, reflection_pb2):
        files.append(FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    files.append(reflection_v1_file())
    return files


@cache
def mesh_pool() -> DescriptorPool:
    """A descriptor pool of ``mesh_files()`` (shared: building it parses every file)."""
    pool = DescriptorPool()
    for file in mesh_files():
        pool.Add(file)
    return pool


class MeshReflection(reflection.aio.ReflectionServicer):
    _pool: DescriptorPool  # set by the base class from its pool argument

    def __init__(self, files: list[FileDescriptorProto]) -> None:
        names = [f"{f.package}.{s.name}" for f in files for s in f.service]
        super().__init__(names, pool=mesh_pool())
        self._serialized = {file.name: file.SerializeToString() for file in files}

    def _file_by_filename(
        self, request: ServerReflectionRequest, filename: str
    ) -> ServerReflectionResponse:
        return self._answer(request, lambda: self._pool.FindFileByName(filename))

    def _file_containing_symbol(
        self, request: ServerReflectionRequest, symbol: str
    ) -> ServerReflectionResponse:
        return self._answer(request, lambda: self._pool.FindFileContainingSymbol(symbol))

    def _answer(
        self, request: ServerReflectionRequest, find: Callable[[], FileDescriptor]
    ) -> ServerReflectionResponse:
        try:
            root: FileDescriptor = find()
        except KeyError:
            return ServerReflectionResponse(
                error_response=reflection_pb2.ErrorResponse(
                    error_code=grpc.StatusCode.NOT_FOUND.value[0], error_message="not found"
                ),
                original_request=request,
            )
        files: dict[str, FileDescriptor] = {}
        pending = [root]
        while pending:  # the file and everything it imports, transitively
            file = pending.pop()
            if file.name not in files:
                files[file.name] = file
                pending.extend(file.dependencies)
        return ServerReflectionResponse(
            file_descriptor_response=FileDescriptorResponse(
                file_descriptor_proto=[self._bytes_of(f) for f in files.values()]
            ),
            original_request=request,
        )

    def _bytes_of(self, file: FileDescriptor) -> bytes:
        if file.name in self._serialized:
            return self._serialized[file.name]
        proto = FileDescriptorProto()
        file.CopyToProto(proto)
        return proto.SerializeToString()


def reflection_handlers() -> list[grpc.GenericRpcHandler]:
    """grpcio handlers for ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1``."""
    servicer = MeshReflection(mesh_files())
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return [
        grpc.method_handlers_generic_handler(
            f"{package}.ServerReflection", {"ServerReflectionInfo": method}
        )
        for package in (V1ALPHA, V1)
    ]
