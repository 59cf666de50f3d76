"""The servers the suite runs against, and how it starts a mesh of its own."""

import os
from pathlib import Path

from devtools.sandbox import Mesh, start_mesh

PG_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_SERVER_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Tests wait on conditions, so fast probes make them fast, not flaky.
FAST = {"HEALTH_PROBE_SECONDS": "0.2", "SHUTDOWN_GRACE_SECONDS": "10", "OUTBOX_POLL_SECONDS": "0.5"}
# The suite sells hundreds of orders from one address in a burst: the per-client
# mutation limit is raised (tests/e2e/test_edge_limits.py checks it on its own Envoy).
TEST_EDGE = {"mutation_rate_per_second": 10_000, "mutation_burst": 10_000}


def start_test_mesh(run_dir: Path, env: dict[str, str], only: list[str] | None = None) -> Mesh:
    return start_mesh(run_dir, {**FAST, **env}, only, edge=TEST_EDGE)
