"""Raw gRPC calls: bytes in, bytes out, so tests can send what no client would."""

import grpc


def _identity(data: bytes) -> bytes:
    return data


async def call_raw(
    channel: grpc.aio.Channel,
    method: str,
    payload: bytes,
    *,
    deadline: float = 30,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, str]:
    """Send ``payload`` as the request of ``method`` ("/pkg.Service/Method");
    ``deadline`` (seconds) travels with the call, as gRPC deadlines do."""
    call = channel.unary_unary(
        method, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        await call(payload, timeout=deadline, metadata=metadata or None)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""
