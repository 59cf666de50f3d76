"""Mail adapter: every e-mail is logged as an [EMAIL] line; sent over SMTP when configured."""

import logging
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
from opentelemetry import trace

from meshkit.errors import Unavailable
from notify_svc.domain import OrderConfirmation

log = logging.getLogger(__name__)
# The API's tracer: a no-op unless meshkit.telemetry installed the SDK.
tracer = trace.get_tracer(__name__)

SMTP_DOWN = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    OSError,
)


def smtp_options(url: str) -> dict[str, Any]:
    """aiosmtplib arguments from smtp://user:password@host:port or smtps://…"""
    parts = urlsplit(url)
    tls = parts.scheme == "smtps"
    return {
        "hostname": parts.hostname,
        "port": parts.port or (465 if tls else 25),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "use_tls": tls,
        "start_tls": False if tls else None,  # None: STARTTLS when the server offers it
    }


class Mailer:
    def __init__(self, smtp_url: str | None, *, timeout_seconds: float) -> None:
        self._smtp = smtp_options(smtp_url) if smtp_url else None
        self._timeout = timeout_seconds
        self.channel = "smtp" if smtp_url else "log"

    async def send(self, email: OrderConfirmation) -> None:
        if self._smtp:
            await self._send_smtp(email, self._smtp)
        log.info(
            "[EMAIL] order %s: %r to %s via %s (Message-ID %s)",
            email.order_id,
            email.subject,
            email.recipient,
            self.channel,
            email.message_id,
        )

    async def _send_smtp(self, email: OrderConfirmation, smtp: dict[str, Any]) -> None:
        message = EmailMessage()
        message["From"] = email.sender
        message["To"] = email.recipient
        message["Subject"] = email.subject
        message["Date"] = format_datetime(email.sent_for)
        message["Message-ID"] = email.message_id
        message.set_content(email.body)
        # A CLIENT span for the send, inside the consumer's span: the Message-ID
        # and the server, never the addresses or the text.
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "email.message_id": email.message_id,
                "server.address": smtp["hostname"] or "",
                "server.port": smtp["port"],
            },
        ):
            await self._send_over_smtp(message, smtp)

    async def _send_over_smtp(self, message: EmailMessage, smtp: dict[str, Any]) -> None:
        try:
            await aiosmtplib.send(message, timeout=self._timeout, **smtp)
        except SMTP_DOWN as exc:
            raise Unavailable(f"the mail server is unreachable ({exc})") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:  # a temporary refusal: try again later
                raise Unavailable(f"the mail server refused for now ({exc.code})") from exc
            raise
