"""Is PostgreSQL and RabbitMQ there, and may we do what we need? Say what to fix.

Shared by ``make up`` (the launcher) and ``make test`` (``python -m devtools.preflight``,
before pytest): a wrong password or a missing right ends in one paragraph naming
the variable and the command that fixes it, never in a driver's traceback.
"""

import asyncio
import logging
import shutil
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiormq.exceptions
import asyncpg
import httpx

from devtools import sandbox

ROLE_FIX = (
    "  Stock PostgreSQL asks for a password on 127.0.0.1: create a role once,\n"
    "    sudo -u postgres psql -c \"CREATE ROLE polyglot LOGIN CREATEDB PASSWORD 'polyglot'\"\n"
    "  (if it exists, check the user and password in {var}, or set the password:\n"
    "    sudo -u postgres psql -c \"ALTER ROLE polyglot PASSWORD 'polyglot'\")\n"
    "  and use it: {var}=postgresql://polyglot:polyglot@127.0.0.1:5432/{db}"
)
RABBIT_USER_FIX = (
    "  Use a user of your own (guest may only log in from localhost):\n"
    "    sudo rabbitmqctl add_user polyglot polyglot\n"
    "    sudo rabbitmqctl set_permissions polyglot '.*' '.*' '.*'\n"
    "  and: {var}=amqp://polyglot:polyglot@127.0.0.1:5672/"
)


# aio-pika logs each failed connect itself; the message below says it once, better.
for _noisy in ("aio_pika", "aiormq"):
    logging.getLogger(_noisy).setLevel(logging.CRITICAL)


class InfrastructureMissing(RuntimeError):
    pass


# Said after every such message (make up, make test): where the rest are explained.
TROUBLESHOOTING = 'Every message and its fix: docs/testing.md, "Troubleshooting".'


# Prometheus and promtool come from Debian's package (no PyPI wheel): `make up`
# runs the server when it is there, the metrics test and `make check` need both.
PROMETHEUS_INSTALL = "sudo apt-get install -y prometheus"


def prometheus_tool(name: str = "prometheus") -> str | None:
    """Where ``prometheus`` or ``promtool`` is installed, or None."""
    return shutil.which(name)


async def connect_postgres(url: str, env_var: str) -> asyncpg.Connection:
    """A connection to the server's ``postgres`` database, or what to fix."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 5432}"
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    fix = ROLE_FIX.format(var=env_var, db=parts.path.lstrip("/") or "postgres")
    try:
        return await asyncpg.connect(maintenance, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # A refused login, or "no password supplied" (a client-side error).
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) or "password" in str(
            exc
        ):
            raise InfrastructureMissing(
                f"PostgreSQL at {where} refused the login ({exc}).\n{fix}"
            ) from exc
        raise InfrastructureMissing(
            f"PostgreSQL is not reachable at {where} ({exc}).\n"
            "  Start it: sudo pg_ctlcluster $(ls /etc/postgresql) main start\n"
            "  Install it (Debian/Ubuntu): sudo apt-get install -y postgresql\n"
            f"  Or use another server: {env_var}=postgresql://USER:PASSWORD@HOST:5432/"
            f"{parts.path.lstrip('/')}"
        ) from exc


async def ensure_database(database_url: str, env_var: str) -> None:
    """Create the service's database when the server has none by that name (make up)."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = await connect_postgres(database_url, env_var)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    finally:
        await conn.close()


async def check_may_create_databases(server_url: str, env_var: str) -> None:
    """The tests create and drop throwaway databases."""
    conn = await connect_postgres(server_url, env_var)
    try:
        role = await conn.fetchrow(
            "SELECT rolname, rolcreatedb OR rolsuper AS may FROM pg_roles"
            " WHERE rolname = current_user"
        )
    finally:
        await conn.close()
    assert role is not None  # current_user is a role
    if not role["may"]:
        raise InfrastructureMissing(
            f"PostgreSQL role {role['rolname']} may not create databases, which the tests do.\n"
            f"  sudo -u postgres psql -c 'ALTER ROLE \"{role['rolname']}\" CREATEDB'"
        )


async def check_rabbitmq(amqp_url: str, env_var: str) -> None:
    parts = urlsplit(amqp_url)
    where = f"{parts.hostname}:{parts.port or 5672}"
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
        await connection.close()
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise InfrastructureMissing(
            f"RabbitMQ at {where} refused the login of {parts.username} ({exc}).\n"
            + RABBIT_USER_FIX.format(var=env_var)
        ) from exc
    except Exception as exc:  # aio-pika raises several types for "cannot connect"
        if "Connection.Close" in str(exc):  # logged in, but the vhost is not allowed
            raise InfrastructureMissing(
                f"RabbitMQ at {where} refused {parts.username} access to virtual host"
                f" {parts.path or '/'}.\n" + RABBIT_USER_FIX.format(var=env_var)
            ) from exc
        raise InfrastructureMissing(
            f"RabbitMQ is not reachable at {where} ({exc}).\n"
            "  Start it: sudo rabbitmq-server -detached\n"
            "  Install it (Debian/Ubuntu): sudo apt-get install -y rabbitmq-server\n"
            f"  Or use another broker: {env_var}=amqp://USER:PASSWORD@HOST:5672/VHOST"
        ) from exc


def check_may_create_vhosts(amqp_url: str) -> None:
    """The tests create a virtual host: over the management API, or rabbitmqctl."""
    try:
        sandbox.delete_vhost(sandbox.create_vhost(amqp_url, "polyglot_preflight"))
    except (httpx.HTTPError, OSError, subprocess.SubprocessError) as exc:
        stderr = (getattr(exc, "stderr", None) or "").strip().splitlines()  # rabbitmqctl's
        detail = stderr[-1:] or str(exc).splitlines()[:1]
        raise InfrastructureMissing(
            f"The tests cannot create a RabbitMQ virtual host ({' '.join(detail)}).\n"
            "  Either let your RabbitMQ user do it over the management API:\n"
            "    sudo rabbitmq-plugins enable rabbitmq_management\n"
            "    sudo rabbitmqctl set_user_tags USER administrator\n"
            "  (USER from TEST_AMQP_URL; RABBITMQ_MANAGEMENT_URL if not on port 15672),\n"
            "  or run the tests as a user who may run rabbitmqctl (root)."
        ) from exc


async def check_for_tests() -> None:
    await check_may_create_databases(sandbox.PG_SERVER_URL, "TEST_POSTGRES_URL")
    await check_rabbitmq(sandbox.RABBIT_SERVER_URL, "TEST_AMQP_URL")
    check_may_create_vhosts(sandbox.RABBIT_SERVER_URL)


def main() -> int:
    try:
        asyncio.run(check_for_tests())
    except InfrastructureMissing as problem:
        print(f"make test cannot run yet.\n{problem}\n{TROUBLESHOOTING}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
