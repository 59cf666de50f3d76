from typing import Annotated

from pydantic import AnyUrl, Field, PostgresDsn, UrlConstraints

from meshkit.settings import ServiceSettings

SmtpUrl = Annotated[AnyUrl, UrlConstraints(allowed_schemes=["smtp", "smtps"], default_port=25)]
EMAIL_ADDRESS = r"^[^@\s<>]+@[^@\s<>]+$"


class NotifySettings(ServiceSettings):
    grpc_port: int = Field(default=50053, ge=1, le=65535)
    # notify_svc's own database (database per service): the log of sent e-mails.
    notify_database_url: PostgresDsn = PostgresDsn("postgresql://postgres@127.0.0.1:5432/notify_db")
    db_pool_size: int = Field(default=5, ge=1, le=200)
    db_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # smtp://[user:password@]host[:port] (STARTTLS when offered) or smtps:// (TLS).
    # Unset: e-mails are only written to the log, as [EMAIL] lines.
    smtp_url: SmtpUrl | None = None
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # How long a handler owns a notification it is sending; a send that takes
    # longer is abandoned. After a crash another copy of the event may send it
    # once the lease has expired, so it bounds how late that resend comes.
    notify_lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    mail_from: str = Field(default="orders@polyglotmicro.local", pattern=EMAIL_ADDRESS)
    # The logistics mailbox that gets every order confirmation.
    logistics_email: str = Field(default="logistics@polyglotmicro.local", pattern=EMAIL_ADDRESS)
    consumer_prefetch: int = Field(default=20, ge=1, le=10_000)
