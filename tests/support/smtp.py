import asyncio
import threading
from email import message_from_bytes
from email.message import Message

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

from tests.support.net import free_port


class MailCatcher:
    """A real SMTP server (aiosmtpd) that keeps every message it accepts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self.refusing = False  # answer 451 (try later) while True
        # Cleared: the server holds its answer to DATA until it is set again (a slow
        # mail server); ``holding`` is set once it holds one.
        self.answer = threading.Event()
        self.answer.set()
        self.holding = threading.Event()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        if not self.answer.is_set():
            self.holding.set()
            await asyncio.to_thread(self.answer.wait)
        if self.refusing:
            return "451 4.3.0 Try again later"
        with self._lock:
            self._messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def messages(self, order_id: str | None = None) -> list[Message]:
        with self._lock:
            found = list(self._messages)
        return [m for m in found if order_id is None or f"Order {order_id} " in m["Subject"]]
