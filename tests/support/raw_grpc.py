"""Raw gRPC calls: bytes in, bytes out, so tests can send what no client would."""

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.events


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


def frame(message: bytes, compressed: bool = False) -> bytes:
    """One gRPC length-prefixed message (compressed: the flag only; the bytes as given)."""
    return bytes([int(compressed)]) + struct.pack(">I", len(message)) + message


@dataclass
class H2Answer:
    """What came back on one HTTP/2 stream: headers and trailers merged."""

    headers: dict[str, str]
    body: bytes
    reset: int | None  # the RST_STREAM error code, if the stream was reset
    seconds: float

    @property
    def grpc_status(self) -> int | None:
        status = self.headers.get("grpc-status")
        return None if status is None else int(status)

    @property
    def grpc_message(self) -> str:
        return unquote(self.headers.get("grpc-message", ""))


def h2_call(
    port: int,
    path: str,
    body: bytes,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    method: str = "POST",
    content_type: str = "application/grpc",
    timeout: float = 30,
) -> H2Answer:
    """One request on its own HTTP/2 connection (h2c, prior knowledge), sent as given:
    what grpcio would refuse to send (a compression flag without an encoding, bad
    -bin metadata, GET, another content-type) or send differently."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    request = [
        (":method", method),
        (":scheme", "http"),
        (":authority", "mesh"),
        (":path", path),
        ("content-type", content_type),
        ("te", "trailers"),
        *headers,
    ]
    answer = H2Answer({}, b"", None, 0.0)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        connection.initiate_connection()
        connection.send_headers(1, request, end_stream=not body)
        if body:
            connection.send_data(1, body, end_stream=True)
        sock.sendall(connection.data_to_send())
        while not _ended(connection, sock.recv(65536), answer):
            sock.sendall(connection.data_to_send())
    answer.seconds = time.monotonic() - started
    return answer


def _ended(connection: h2.connection.H2Connection, data: bytes, answer: H2Answer) -> bool:
    if not data:
        raise ConnectionError("the connection was closed before the stream ended")
    for event in connection.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            answer.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            answer.body += event.data
            connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            answer.reset = event.error_code
            return True
        elif isinstance(event, h2.events.StreamEnded):
            return True
        elif isinstance(event, h2.events.ConnectionTerminated):
            raise ConnectionError(f"GOAWAY {event.error_code}")
    return False


class RawGrpcConnection:
    """An HTTP/2 connection (h2c, prior knowledge) carrying any number of raw gRPC
    calls at once, each answered on its own: a flood of broken calls beside honest
    ones, or a stream held open (``end_stream=False``) while others go on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._answers: dict[int, tuple[H2Answer, asyncio.Future[H2Answer]]] = {}
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, target: str) -> "RawGrpcConnection":
        """A connection to ``target`` ("host:port")."""
        host, port = target.rsplit(":", 1)
        connection = cls(*await asyncio.open_connection(host, int(port)))
        connection._h2.initiate_connection()
        connection._flush()
        connection._reading = asyncio.create_task(connection._read())
        return connection

    async def __aenter__(self) -> "RawGrpcConnection":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._writer.close()

    async def call(
        self,
        path: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        end_stream: bool = True,
    ) -> H2Answer:
        """Send ``body`` as it is (gRPC framing included) to ``path``; with
        ``end_stream=False`` the stream stays open after it. Returns once the
        answer ended (or the stream was reset)."""
        stream = self._h2.get_next_available_stream_id()
        answer = H2Answer({}, b"", None, 0.0)
        ended = asyncio.get_running_loop().create_future()
        self._answers[stream] = (answer, ended)
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "mesh"),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers,
        ]
        started = time.monotonic()
        self._h2.send_headers(stream, request, end_stream=end_stream and not body)
        if body:
            self._h2.send_data(stream, body, end_stream=end_stream)
        self._flush()
        await ended
        answer.seconds = time.monotonic() - started
        return answer

    def _flush(self) -> None:
        if data := self._h2.data_to_send():
            self._writer.write(data)

    async def _read(self) -> None:
        while data := await self._reader.read(65536):
            for event in self._h2.receive_data(data):
                self._on(event)
            self._flush()
        for _, ended in self._answers.values():
            if not ended.done():
                ended.set_exception(ConnectionError("closed before the stream ended"))

    def _on(self, event: h2.events.Event) -> None:
        stream = getattr(event, "stream_id", None)
        if stream not in self._answers:
            return
        answer, ended = self._answers[stream]
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            answer.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            answer.body += event.data
            self._h2.acknowledge_received_data(event.flow_controlled_length, stream)
        elif isinstance(event, h2.events.StreamReset | h2.events.StreamEnded):
            if isinstance(event, h2.events.StreamReset):
                answer.reset = event.error_code
            del self._answers[stream]
            if not ended.done():
                ended.set_result(answer)


GET_STOCK = "/polyglot.inventory.v1.InventoryService/GetStock"
LAPTOP = bytes.fromhex("0801")  # GetStockRequest(product_id=1)
INVALID_ARGUMENT, UNIMPLEMENTED = 3, 12

# Native gRPC requests the edge refuses itself (blueprint/edge/grpc_input.lua), as sent to
# GetStock: name → (body, extra headers, gRPC code, what the message says).
EDGE_REFUSED: dict[str, tuple[bytes, tuple[tuple[str, str], ...], int, str]] = {
    "no message at all": (b"", (), INVALID_ARGUMENT, "ended without a complete message"),
    "half a length prefix": (b"\x00\x00\x00", (), INVALID_ARGUMENT, "without a complete message"),
    # The case: 100 bytes declared, 1 sent, then the stream ends.
    "a truncated message": (
        b"\x00\x00\x00\x00\x64\x08",
        (),
        INVALID_ARGUMENT,
        "ended without a complete message",
    ),
    "two messages for a unary call": (
        frame(LAPTOP) + frame(LAPTOP),
        (),
        INVALID_ARGUMENT,
        "exactly one request message",
    ),
    "a declared length over the limit": (
        b"\x00\x7f\xff\xff\xff" + LAPTOP,
        (),
        INVALID_ARGUMENT,
        "larger than 64 KiB",
    ),
    "a compression flag without grpc-encoding": (
        frame(LAPTOP, compressed=True),
        (),
        INVALID_ARGUMENT,
        "marked compressed but no grpc-encoding",
    ),
    "a compression flag with grpc-encoding identity": (
        frame(LAPTOP, compressed=True),
        (("grpc-encoding", "identity"),),
        INVALID_ARGUMENT,
        "marked compressed",
    ),
    "an invalid compression flag": (
        b"\x02" + frame(LAPTOP)[1:],
        (),
        INVALID_ARGUMENT,
        "invalid compression flag",
    ),
    "an unknown grpc-encoding": (
        frame(LAPTOP, compressed=True),
        (("grpc-encoding", "snappy"),),
        UNIMPLEMENTED,
        "grpc-encoding snappy is not supported",
    ),
    "bad -bin metadata": (
        frame(LAPTOP),
        (("x-foo-bin", "!!! not base64"),),
        INVALID_ARGUMENT,
        "the metadata x-foo-bin is not valid base64",
    ),
}
