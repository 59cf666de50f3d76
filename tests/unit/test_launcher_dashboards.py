"""`make up` enables RabbitMQ's management UI when it can, and never fails for it."""

import stat

import pytest

from devtools.launcher import RABBITMQ_UI_URL, rabbitmq_management

LOCAL_BROKER = "amqp://guest:guest@127.0.0.1:5672/"


def fake_rabbitmq_plugins(folder, script: str) -> None:
    tool = folder / "rabbitmq-plugins"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_enables_the_plugin_when_it_is_off(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls"
    fake_rabbitmq_plugins(tmp_path, f'echo "$@" >> {calls}; [ "$2" = enable ] && exit 0; exit 69')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rabbitmq_management(LOCAL_BROKER) == f"{RABBITMQ_UI_URL} (guest/guest)"
    assert calls.read_text().splitlines() == [
        "-q is_enabled rabbitmq_management",
        "-q enable rabbitmq_management",
    ]
    assert "enabled the RabbitMQ plugin" in capsys.readouterr().out


def test_leaves_an_enabled_plugin_alone(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake_rabbitmq_plugins(tmp_path, f'echo "$@" >> {calls}; exit 0')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rabbitmq_management(LOCAL_BROKER) == f"{RABBITMQ_UI_URL} (guest/guest)"
    assert calls.read_text().splitlines() == ["-q is_enabled rabbitmq_management"]


@pytest.mark.parametrize(
    "script",
    [
        None,  # no rabbitmq-plugins on PATH
        "[ \"$2\" = enable ] && { echo 'Error: insufficient permissions' >&2; exit 77; }; exit 69",
    ],
)
def test_a_missing_or_failing_command_is_a_note_not_an_error(tmp_path, monkeypatch, capsys, script):
    if script:
        fake_rabbitmq_plugins(tmp_path, script)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rabbitmq_management(LOCAL_BROKER) == "not enabled (see the note above)"
    note = capsys.readouterr().out
    assert note.startswith("note: RabbitMQ management UI not enabled")
    assert note.count("\n") == 1
    if script:
        assert "insufficient permissions" in note


def test_a_remote_broker_is_not_touched(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # would fail if anything ran
    summary = rabbitmq_management("amqp://user:pw@rabbit.internal:5672/")
    assert summary == "http://rabbit.internal:15672 if that broker has the management plugin"
