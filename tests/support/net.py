import asyncio
import socket
import threading
from contextlib import suppress
from urllib.parse import urlsplit

from devtools.sandbox import free_port


class TcpProxy:
    """A TCP forwarder we can cut, to take a real server "off the network".

    ``cut()`` closes every open connection and refuses new ones (like a server
    that went away); ``restore()`` accepts again. Runs its own event loop in a
    thread so blocking test code never starves it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.restore()

    @classmethod
    def in_front_of(cls, url: str, default_port: int) -> "TcpProxy":
        """A proxy to the server of ``url`` (postgresql://…, amqp://…)."""
        target = urlsplit(url)
        return cls(target.hostname or "127.0.0.1", target.port or default_port)

    def route(self, url: str) -> str:
        """``url`` with this proxy as its server."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        at = "@" if credentials else ""
        return parts._replace(netloc=f"{credentials}{at}127.0.0.1:{self.port}").geturl()

    def _call(self, coro) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._close())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


class Tarpit:
    """A TCP server that accepts connections and never answers: a backend that hangs.

    Envoy connects to it, sends its request and waits, so the only way out is a
    timeout. Reads and discards what it gets, so the sender never blocks.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self._open.append(conn)
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        with suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            with suppress(OSError):
                conn.close()
