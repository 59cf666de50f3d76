"""gRPC calls over a raw HTTP/2 connection (the ``h2`` package): streams no gRPC
client sends, such as a message cut short, a stream ended without one, or one held
open. One connection carries any number of calls at once."""

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    """How a call ended: its gRPC status (None if the stream was reset without one)."""

    code: int | None
    message: str
    seconds: float  # from sending the headers to the end of the answer


class RawGrpcConnection:
    """An HTTP/2 (h2c, prior knowledge) connection to a gRPC server or Envoy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self._headers: dict[int, dict[str, str]] = {}
        self._answers: dict[int, asyncio.Future[dict[str, str]]] = {}
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, target: str) -> "RawGrpcConnection":
        host, port = target.rsplit(":", 1)
        connection = cls(*await asyncio.open_connection(host, int(port)))
        connection._h2.initiate_connection()
        connection._flush()
        connection._reading = asyncio.create_task(connection._read())
        return connection

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        self._writer.close()

    async def __aenter__(self) -> "RawGrpcConnection":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def call(
        self,
        method: str,
        body: bytes,
        *,
        metadata: dict[str, str] | None = None,
        end_stream: bool = True,
    ) -> Answer:
        """Send ``body`` (gRPC framing included, as it is) as the request of
        ``method`` ("/pkg.Service/Method"); ``end_stream=False`` holds the stream
        open after it. Returns once the answer ended."""
        stream = self._h2.get_next_available_stream_id()
        answer = self._answers[stream] = asyncio.get_running_loop().create_future()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or {}).items(),
        ]
        started = time.monotonic()
        self._h2.send_headers(stream, headers, end_stream=end_stream and not body)
        if body:
            self._h2.send_data(stream, body, end_stream=end_stream)
        self._flush()
        ended = await answer
        code = ended.get("grpc-status")
        return Answer(
            code=None if code is None else int(code),
            message=unquote(ended.get("grpc-message", "")),
            seconds=time.monotonic() - started,
        )

    def _flush(self) -> None:
        if data := self._h2.data_to_send():
            self._writer.write(data)

    async def _read(self) -> None:
        while data := await self._reader.read(65536):
            for event in self._h2.receive_data(data):
                self._on(event)
            self._flush()
        for answer in self._answers.values():  # the server closed the connection
            if not answer.done():
                answer.set_exception(ConnectionError("connection closed without an answer"))

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            self._headers.setdefault(event.stream_id, {}).update(
                (name.decode(), value.decode()) for name, value in event.headers
            )
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            answer = self._answers.pop(event.stream_id, None)
            if answer is not None and not answer.done():
                answer.set_result(self._headers.pop(event.stream_id, {}))
