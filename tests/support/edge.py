"""What the edge tests share: the one JSON error shape, Envoy's counters, and the
session mesh's signing key for Envoys of a test's own."""

import re

import httpx

from blueprint.edge.settings import EdgeAuth
from devtools.plan import MeshPlan
from devtools.sandbox import Mesh
from devtools.tokens import JWKS

# What an answer must never show: Envoy's and the backends' internals.
INTERNALS = re.compile(
    r"upstream connect|reset reason|disconnect/reset|overflow|envoy|metadata size|\dB\b|"
    r"Traceback|transcoder's internal buffer",
    re.IGNORECASE,
)


def assert_error(reply: httpx.Response, status: int, code: int, message_part: str = "") -> dict:
    """The JSON error shape, the status and code, and nothing internal."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code and body["details"] == []
    assert message_part in body["message"]
    assert not INTERNALS.search(body["message"]), body["message"]
    assert not [h for h in reply.headers if h.lower().startswith("x-envoy-")]
    return body


def stats(plan: MeshPlan) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{plan.admin_port}/stats", timeout=10).text
    return {
        name: int(value)
        for name, value in (line.split(": ", 1) for line in text.splitlines() if ": " in line)
        if value.isdigit()
    }


def upstream_calls(plan: MeshPlan, backend: str) -> int:
    """Calls Envoy sent to ``backend`` (health checks not included)."""
    return stats(plan)[f"cluster.{backend}.upstream_rq_total"]


def mesh_auth(mesh: Mesh) -> EdgeAuth:
    """Trust the session mesh's signing key, so its tokens work on our Envoys too."""
    return EdgeAuth(jwks_file=str(mesh.plan.run_dir / "auth" / JWKS))
