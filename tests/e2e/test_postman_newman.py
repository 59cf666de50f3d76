"""The Postman collection, replayed by newman (npm, pinned in package.json) as it
is committed in docs/site/, against a mesh of its own that starts from the seed,
as a user's `make up` on a fresh database: every request answers 200 with the
response message's JSON shape (the assertions the collection itself carries), and
the bearer token goes exactly to the requests that need one.
"""

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from blueprint.topology import DOCS_SITE, ROOT
from devtools.postman import FILE_NAME
from devtools.sandbox import Mesh
from tests.support.servers import own_mesh

NEWMAN = ROOT / "node_modules" / ".bin" / "newman"
COLLECTION = DOCS_SITE / FILE_NAME


@pytest_asyncio.fixture(scope="module")
async def fresh_mesh(tmp_path_factory, mongo_url, mail) -> AsyncIterator[Mesh]:
    """Its own databases: the collection sells order ORD-2024-001, which the session
    mesh's tests sell too, and restocks a seed product they read."""
    run_dir = tmp_path_factory.mktemp("postman_mesh")
    async with own_mesh(run_dir, "polyglot_postman", mongo_url, mail.url) as mesh:
        yield mesh


async def test_newman_replays_every_request_and_its_assertions_pass(fresh_mesh, tmp_path):
    if not NEWMAN.exists():
        pytest.fail(f"{NEWMAN.relative_to(ROOT)} is missing: run `make tools`")
    report = tmp_path / "newman.json"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            str(NEWMAN),
            "run",
            str(COLLECTION),
            # Environment variables override the collection's (localhost:8080, no token).
            "--env-var",
            f"baseUrl={fresh_mesh.http_url}",
            "--env-var",
            f"token={fresh_mesh.token()}",
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(report),
            "--timeout-request",
            "30000",
            "--color",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]

    collection = json.loads(COLLECTION.read_text())
    public = {
        item["name"]
        for folder in collection["item"]
        for item in folder["item"]
        if item["request"].get("auth") == {"type": "noauth"}
    }
    names = [item["name"] for folder in collection["item"] for item in folder["item"]]
    summary = json.loads(report.read_text())["run"]
    executions = summary["executions"]
    assert [e["item"]["name"] for e in executions] == names  # each request once
    for execution in executions:
        name = execution["item"]["name"]
        assert execution["response"]["code"] == 200, name
        assertions = execution["assertions"]
        assert len(assertions) == 2, name  # HTTP 200, the JSON body's fields
        assert [a for a in assertions if "error" in a] == [], name
        headers = {h["key"].lower() for h in execution["request"]["header"]}
        assert ("authorization" in headers) == (name not in public), name
    assert public == {"GetStock", "ListProducts"}
    stats = summary["stats"]
    assert stats["assertions"] == {"total": 2 * len(names), "pending": 0, "failed": 0}
    assert summary["failures"] == []
