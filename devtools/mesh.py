"""The processes of one mesh (backends + Envoy) and how to tell they are ready.

The native launcher runs one plan with the default ports under .run/; the tests
run another with free ports under a temporary folder. Both start the very same
commands.
"""

import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from devtools.processes import ManagedProcess, grpc_serving, python_module
from devtools.topology import GRPC_PORTS, ROOT, backends


@dataclass(frozen=True)
class MeshPlan:
    run_dir: Path
    envoy_config: Path
    http_port: int = 8080
    admin_port: int = 9901
    grpc_ports: dict[str, int] = field(default_factory=lambda: dict(GRPC_PORTS))
    # Settings passed to every backend (DATABASE_URL, AMQP_URL, MONGO_URL, …).
    env: dict[str, str] = field(default_factory=dict)

    def process(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> ManagedProcess:
        return ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.run_dir / "logs" / f"{name}.log",
            pid_path=self.run_dir / "pids" / f"{name}.pid",
            env=env or {},
        )

    def backend(self, name: str) -> ManagedProcess:
        env = {**self.env, "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(self.grpc_ports[name])}
        return self.process(name, python_module(name), env)

    def envoy(self) -> ManagedProcess:
        envoy_binary = str(Path(sys.executable).parent / "envoy")
        return self.process(
            "envoy",
            [
                envoy_binary,
                "-c",
                str(self.envoy_config),
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ],
        )

    def backend_ready(self, name: str) -> bool:
        return grpc_serving(f"127.0.0.1:{self.grpc_ports[name]}")

    def envoy_ready(self) -> bool:
        """Envoy is live and has seen every backend pass its health check."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.admin_port}/clusters", timeout=1
            ) as reply:
                clusters = reply.read().decode()
        except OSError:
            return False
        return all(
            f"{name}::127.0.0.1:{self.grpc_ports[name]}::health_flags::healthy" in clusters
            for name in backends()
        )


def native_plan(env: dict[str, str]) -> MeshPlan:
    """What `make up` runs: default ports, state under .run/, envoy/envoy.yaml."""
    return MeshPlan(run_dir=ROOT / ".run", envoy_config=ROOT / "envoy" / "envoy.yaml", env=env)
