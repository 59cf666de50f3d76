"""`make test` and `make up` check PostgreSQL and RabbitMQ first and say what to fix:
a wrong login or a missing server is one paragraph, never a driver's traceback."""

import os
import subprocess

import pytest

from devtools.processes import python_module
from tests.support.net import free_port


def preflight(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        python_module("devtools.preflight"),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_real_servers_pass():
    assert preflight().returncode == 0


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"TEST_POSTGRES_URL": "postgresql://no_such_role:x@127.0.0.1:5432/postgres"},
            ["PostgreSQL at 127.0.0.1:5432 refused the login", "CREATE ROLE", "TEST_POSTGRES_URL="],
        ),
        (
            {"TEST_POSTGRES_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"},
            ["PostgreSQL is not reachable", "pg_ctlcluster", "apt-get install -y postgresql"],
        ),
        (
            {"TEST_AMQP_URL": "amqp://guest:wrong-password@127.0.0.1:5672/"},
            ["RabbitMQ at 127.0.0.1:5672 refused the login of guest", "TEST_AMQP_URL="],
        ),
        (
            {"TEST_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/"},
            ["RabbitMQ is not reachable", "rabbitmq-server"],
        ),
    ],
    ids=["postgres-login", "postgres-down", "rabbitmq-login", "rabbitmq-down"],
)
def test_what_is_wrong_and_how_to_fix_it(env, says):
    result = preflight(**env)
    assert result.returncode == 1
    assert result.stderr.startswith("make test cannot run yet.")
    for text in says:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
