"""The compose deployment, checked statically (no Docker engine here or in CI):
the real compose.yaml passes every check, the deployment rules hold, and each
check catches the mistake it is there for."""

import copy
import subprocess
import time
from pathlib import Path

import pytest

from devtools import compose_check as cc
from devtools.sandbox import free_port
from devtools.topology import ROOT

OUR_SERVICES = {"inventory-svc": "inventory_svc", "analytics-svc": "analytics_svc"}
OUR_SERVICES["notify-svc"] = "notify_svc"


@pytest.fixture
def compose() -> dict:
    loaded, problems = cc.load(ROOT)
    assert problems == []
    return copy.deepcopy(loaded)


def test_the_repository_passes_every_check():
    # Schema, references, builds, package data, Envoy (real binary), hadolint.
    assert cc.run_checks(ROOT) == []


def test_only_envoy_and_the_dashboards_publish_ports(compose):
    published = {
        name: cc.published_ports(service)
        for name, service in cc.services(compose).items()
        if service.get("ports")
    }
    assert published == {
        "envoy": [(8080, 8080)],
        "rabbitmq": [(15672, 15672)],
        "mongo-express": [(8081, 8081)],
        "mailpit": [(8025, 8025)],
    }


def test_services_wait_for_healthy_dependencies(compose):
    services = cc.services(compose)
    waits = {
        name: {dep for dep, how in (s.get("depends_on") or {}).items()}
        for name, s in services.items()
    }
    conditions = {
        how["condition"] for s in services.values() for how in (s.get("depends_on") or {}).values()
    }
    assert conditions == {"service_healthy", "service_completed_successfully"}
    assert waits["inventory-svc"] == {"inventory-migrate", "postgres", "rabbitmq"}
    assert waits["analytics-svc"] == {"mongo", "rabbitmq"}
    assert waits["notify-svc"] == {"notify-migrate", "postgres", "rabbitmq", "mailpit"}
    for job in ("inventory-migrate", "notify-migrate"):  # one-shot: succeeds, then exits
        assert services[job]["restart"] == "no"
        assert services[job]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert services[job]["command"][-1].endswith(".migrate")
    assert waits["envoy"] == set(OUR_SERVICES)


def test_our_services_share_one_image_and_probe_grpc_health(compose):
    for name, package in OUR_SERVICES.items():
        service = cc.services(compose)[name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert service["command"] == ["python", "-m", package]
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "meshkit.healthcheck"]
        assert cc.environment(service)["GRPC_HOST"] == "0.0.0.0"
        assert "ports" not in service


def test_interpolation_follows_compose_rules():
    uses: dict[str, set[str | None]] = {}
    text = "${A:-x} $${B} ${C-y} ${D:+z} $D ${E:?set E}"
    result = cc.interpolate(text, {"A": "", "C": "", "D": "d"}, uses)
    assert result == "x ${B}  z d "
    assert uses == {"A": {"x"}, "C": {"y"}, "D": {None}, "E": {None}}


def test_variables_must_match_env_example():
    uses = {"KNOWN": {"same"}, "DRIFTED": {"old"}, "MISSING": {None}}
    env = {"KNOWN": "same", "DRIFTED": "new", "STALE": "x"}
    assert cc.check_variables(uses, env) == [
        ".env.example: STALE is not used by compose.yaml",
        "compose.yaml: ${DRIFTED} defaults to 'old', .env.example says 'new'",
        "compose.yaml: ${MISSING} is not in .env.example",
    ]


def test_schema_violations_are_reported(compose):
    compose["services"]["envoy"]["imagee"] = "typo"
    compose["services"]["postgres"]["restart"] = 5
    problems = cc.check_schema(compose)
    assert any("services/envoy" in p and "imagee" in p for p in problems)
    assert any(p.startswith("compose.yaml: services/postgres/restart:") for p in problems)


def test_broken_references_are_reported(compose):
    services = cc.services(compose)
    services["envoy"]["depends_on"]["billing-svc"] = {"condition": "service_healthy"}
    services["mongo"]["volumes"].append("./no/such/dir:/x")
    services["rabbitmq"]["volumes"] = ["undeclared:/var/lib/rabbitmq"]
    del services["mailpit"]["healthcheck"]
    services["mongo-express"]["image"] = "mongo-express:latest"
    assert sorted(cc.check_references(compose, ROOT)) == [
        "service envoy: depends on unknown service 'billing-svc'",
        "service mailpit: no healthcheck",
        "service mongo-express: image 'mongo-express:latest' is not pinned to a version",
        "service mongo: bind mount source ./no/such/dir does not exist",
        "service rabbitmq: volume 'undeclared' is not declared",
    ]


def test_envoy_must_mount_the_generated_config_and_reach_our_services(compose):
    services = cc.services(compose)
    services["notify-svc"]["environment"]["GRPC_PORT"] = "6000"
    assert cc.check_envoy(compose, ROOT) == [
        "Envoy cluster notify_svc: notify-svc:50053, but its GRPC_PORT is 6000",
        "Envoy cluster mesh_any: notify-svc:50053, but its GRPC_PORT is 6000",
    ]
    services["envoy"]["volumes"] = [
        v
        for v in services["envoy"]["volumes"]
        if not (isinstance(v, str) and v.endswith(":/etc/envoy/docs:ro"))
    ]
    services["notify-svc"]["environment"]["GRPC_PORT"] = "50053"
    problems = cc.check_envoy(compose, ROOT)
    assert problems and all("/etc/envoy/docs/" in p for p in problems)
    services["envoy"]["volumes"][0] = "./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro"
    (problem,) = cc.check_envoy(compose, ROOT)
    assert "envoy.yaml as Envoy's config, not" in problem


def test_envoy_validation_rejects_a_broken_config():
    (problem,) = cc.validate_envoy("static_resources: {clusters: [{name: x, type: NO_SUCH}]}\n")
    assert problem.startswith("envoy --mode validate: ")
    assert "unknown enum value: 'NO_SUCH'" in problem


def test_dockerignore_semantics(tmp_path: Path):
    (tmp_path / ".dockerignore").write_text("# allowlist\n*\n!app/\n**/__pycache__\n*.py[co]\n")
    assert cc.dockerignored(tmp_path, "secrets.env")
    assert not cc.dockerignored(tmp_path, "app/main.py")
    assert cc.dockerignored(tmp_path, "app/__pycache__/main.cpython-311.pyc")
    assert not cc.dockerignored(tmp_path / "elsewhere", "anything")  # no .dockerignore


def project(tmp_path: Path, dockerfile: str, pyproject_data: str = "") -> dict:
    """A minimal project: one package with a data file, and a compose service building it."""
    (tmp_path / "pkg" / "migrations").mkdir(parents=True, exist_ok=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "migrations" / "0001.sql").write_text("SELECT 1;\n")
    (tmp_path / ".dockerignore").write_text("*\n!pkg/\n!pyproject.toml\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n'
        f"[tool.setuptools.package-data]\n{pyproject_data}"
    )
    return {"services": {"app": {"build": "."}}}


def test_copy_sources_must_exist_and_be_in_the_context(tmp_path: Path):
    compose = project(tmp_path, "FROM scratch\nCOPY pyproject.toml pkg/ \\\n  README.md /src/\n")
    (tmp_path / "README.md").write_text("")
    assert cc.check_builds(compose, tmp_path) == [
        "Dockerfile: COPY source README.md is .dockerignored"
    ]
    (tmp_path / "Dockerfile").write_text("FROM scratch AS a\nCOPY gone.txt /\nCOPY --from=a /x /\n")
    assert cc.check_builds(compose, tmp_path) == ["Dockerfile: COPY source gone.txt does not exist"]
    (tmp_path / "Dockerfile").unlink()
    assert cc.check_builds(compose, tmp_path) == [
        f"service app: Dockerfile {tmp_path / 'Dockerfile'} does not exist"
    ]


def test_package_data_must_cover_what_the_image_installs(tmp_path: Path):
    compose = project(tmp_path, "FROM scratch\n")
    assert cc.check_package_data(compose, tmp_path) == [
        "pyproject.toml: pkg/migrations/0001.sql is not package data"
    ]
    project(tmp_path, "FROM scratch\n", 'pkg = ["migrations/*.sql"]\n')
    assert cc.check_package_data(compose, tmp_path) == []


def test_hadolint_warnings_fail(tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN pip install requests\n")
    problems = "\n".join(cc.lint_dockerfile(dockerfile, ROOT))
    assert "DL3007" in problems  # :latest
    assert "DL3013" in problems  # unpinned pip install


def test_envoy_healthcheck_command_against_a_real_envoy(compose, tmp_path: Path):
    # The container's command (after compose's $$ unescaping), with the admin port
    # moved to a free one; Envoy answers /ready only when it is LIVE.
    test = cc.services(compose)["envoy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "/dev/tcp/127.0.0.1/9901" in test[3]
    port = free_port()
    script = test[3].replace("/9901", f"/{port}")
    config = tmp_path / "envoy.yaml"
    config.write_text(
        f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
    )
    assert subprocess.run(["bash", "-c", script], capture_output=True).returncode != 0
    envoy = subprocess.Popen(
        [str(cc.BIN / "envoy"), "-c", str(config), "--disable-hot-restart", "--log-level", "error"]
    )
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["bash", "-c", script], capture_output=True).returncode != 0:
            assert envoy.poll() is None and time.monotonic() < deadline, "Envoy never got ready"
            time.sleep(0.1)
    finally:
        envoy.terminate()
        envoy.wait(10)
