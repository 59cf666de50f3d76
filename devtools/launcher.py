"""Run the whole mesh natively: ``python -m devtools.launcher up|down|status``.

``up`` checks the infrastructure (PostgreSQL, …), creates the databases, applies
migrations, starts every backend and Envoy in the background with logs under
.run/logs/, waits for their health checks and prints where everything is.
``down`` stops what ``up`` started. Both are safe to repeat.
"""

import asyncio
import os
import socket
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from devtools.mesh import MeshPlan, native_plan
from devtools.processes import StartupFailed, python_module
from devtools.topology import backends
from inventory_svc.settings import InventorySettings
from meshkit.settings import load_settings


class InfrastructureMissing(RuntimeError):
    pass


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def ensure_database(database_url: str) -> None:
    """Create the service's database when the server has none by that name."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(maintenance, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise InfrastructureMissing(
            f"PostgreSQL is not reachable at {parts.hostname}:{parts.port or 5432} ({exc}).\n"
            "  Start it: sudo pg_ctlcluster $(ls /etc/postgresql) main start\n"
            "  Install it (Debian/Ubuntu): sudo apt-get install -y postgresql\n"
            "  Or use another server: DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/"
            f"{name} make up"
        ) from exc
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    finally:
        await conn.close()


def up(plan: MeshPlan) -> None:
    inventory = load_settings(InventorySettings)
    asyncio.run(ensure_database(str(inventory.database_url)))
    subprocess.run(python_module("inventory_svc", "migrate"), check=True, env=os.environ)

    for name in backends():
        _start(
            plan, plan.backend(name), plan.grpc_ports[name], lambda n=name: plan.backend_ready(n)
        )
    _start(plan, plan.envoy(), plan.http_port, plan.envoy_ready)
    print(
        "\nPolyglotMicro is up.\n"
        f"  REST and gRPC (Envoy):  http://localhost:{plan.http_port}\n"
        f"    curl localhost:{plan.http_port}/inventory/1\n"
        f"    grpcurl -plaintext localhost:{plan.http_port} list\n"
        f"  Envoy admin:            http://127.0.0.1:{plan.admin_port}\n"
        f"  Logs:                   {plan.run_dir / 'logs'}/\n"
        "  Stop with:              make down"
    )


def _start(plan: MeshPlan, process, port: int, ready) -> None:  # noqa: ANN001
    if process.running():
        print(f"{process.name} already running (pid {process.pid})")
        return
    if _port_in_use(port):
        raise InfrastructureMissing(
            f"port {port} is already in use, so {process.name} cannot start there. "
            "Stop whatever listens on it (`make down` if it is an older mesh)."
        )
    process.start()
    print(f"started {process.name} (pid {process.pid}), waiting for its health check…")
    process.wait_until(ready, "a passing health check")


def down(plan: MeshPlan) -> None:
    for process in [plan.envoy(), *(plan.backend(n) for n in reversed(backends()))]:
        if process.running():
            print(f"stopping {process.name} (pid {process.pid})")
        process.stop()
    print("PolyglotMicro is down.")


def status(plan: MeshPlan) -> None:
    for process in [*(plan.backend(n) for n in backends()), plan.envoy()]:
        state = f"running (pid {process.pid})" if process.running() else "stopped"
        print(f"{process.name:15} {state:22} log: {process.log_path}")


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python -m devtools.launcher {'|'.join(commands)}", file=sys.stderr)
        return 2
    plan = native_plan(env={})
    try:
        commands[argv[0]](plan)
    except (InfrastructureMissing, StartupFailed) as problem:
        print(f"\n{problem}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as failed:
        print(f"\n{' '.join(failed.cmd)} failed (exit {failed.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
