"""Settings errors name the variable and the problem, never a credential."""

import pytest

from inventory_svc.settings import InventorySettings
from meshkit.settings import load_settings, without_credentials
from notify_svc.settings import NotifySettings


def _error_text(monkeypatch, settings_type, **env) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_settings(settings_type)
    return str(exited.value)


def test_a_wrong_url_is_shown_without_its_password(monkeypatch):
    text = _error_text(
        monkeypatch,
        InventorySettings,
        INVENTORY_DATABASE_URL="mysql://admin:s3cret-pw@db.example:3306/inventory?password=q9",
        GRPC_PORT="eighty",
    )
    assert "INVENTORY_DATABASE_URL" in text and "GRPC_PORT" in text
    assert "s3cret-pw" not in text and "q9" not in text
    assert "'mysql://admin:***@db.example:3306/inventory'" in text
    assert "'eighty'" in text  # a value that cannot hold a secret is shown as it is


def test_a_secret_like_value_that_is_not_a_url_is_not_shown(monkeypatch):
    text = _error_text(
        monkeypatch, NotifySettings, SMTP_URL="mailer:hunter2@smtp.example", AMQP_URL="guest:pw9@x"
    )
    assert "SMTP_URL" in text and "AMQP_URL" in text
    assert "hunter2" not in text and "pw9" not in text
    assert "not shown, as it may hold a credential" in text


def test_a_non_secret_setting_holding_a_url_is_masked_too(monkeypatch):
    text = _error_text(monkeypatch, NotifySettings, MAIL_FROM="smtp://me:top@secret@host")
    assert "MAIL_FROM" in text and "top@secret" not in text and "me:***@host" in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/vh", "amqp://guest:***@127.0.0.1:5672/vh"),
        ("postgresql://postgres@h/db", "postgresql://postgres@h/db"),
        ("smtps://u:p@a@mail:465", "smtps://u:***@mail:465"),  # '@' in the password
        ("mongodb://h:27017/?authSource=x&password=y#z", "mongodb://h:27017/"),
    ],
)
def test_without_credentials(url, shown):
    assert without_credentials(url) == shown
