"""Server reflection for the whole mesh, doc comments included.

Every service serves the descriptors of every contract, so a client behind
Envoy sees all services whichever backend answers its reflection request.
grpcio-reflection rebuilds each file from the descriptor pool, which drops
``source_code_info`` (the doc comments that grpcurl ``describe`` and Postman
show); we answer with the buf-built files as they are.
"""

from importlib import resources

import grpc
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha.reflection_pb2 import FileDescriptorResponse, ServerReflectionResponse


def mesh_descriptor_set() -> bytes:
    """The buf-built descriptor set of every contract in proto/ (see `make generate`)."""
    return (resources.files("polyglot") / "mesh.binpb").read_bytes()


class MeshReflection(reflection.aio.ReflectionServicer):
    def __init__(self, files: list[FileDescriptorProto]) -> None:
        pool = DescriptorPool()
        for file in files:
            pool.Add(file)
        names = [f"{f.package}.{s.name}" for f in files for s in f.service]
        super().__init__(names, pool=pool)
        self._serialized = {file.name: file.SerializeToString() for file in files}

    def _file_by_filename(self, request: object, filename: str) -> ServerReflectionResponse:
        return self._answer(request, lambda: self._pool.FindFileByName(filename))

    def _file_containing_symbol(self, request: object, symbol: str) -> ServerReflectionResponse:
        return self._answer(request, lambda: self._pool.FindFileContainingSymbol(symbol))

    def _answer(self, request: object, find) -> ServerReflectionResponse:  # noqa: ANN001
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


def mesh_reflection() -> MeshReflection:
    """Reflection over every mesh contract plus grpc.health.v1 and reflection itself."""
    files = list(FileDescriptorSet.FromString(mesh_descriptor_set()).file)
    for module in (health_pb2, reflection_pb2):
        files.append(FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    return MeshReflection(files)
