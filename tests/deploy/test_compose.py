"""The compose deployment, checked statically (no Docker engine here or in CI):
the real compose.yaml passes every check, the deployment rules hold, and each
check catches the mistake it is there for."""

import copy
import subprocess
from pathlib import Path

import pytest

from blueprint.topology import ROOT
from devtools.preflight import PROMETHEUS_INSTALL, prometheus_tool
from devtools.sandbox import free_port
from tests.support import compose_check as cc
from tests.support.waiting import eventually

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
        name: [(p.get("host_ip"), p["published"], p["target"]) for p in service["ports"]]
        for name, service in cc.services(compose).items()
        if service.get("ports")
    }
    assert published == {
        "envoy": [(None, "8080", 8080)],
        "rabbitmq": [("127.0.0.1", "15672", 15672)],
        "mongo-express": [("127.0.0.1", "8081", 8081)],
        "mailpit": [("127.0.0.1", "8025", 8025)],
        "jaeger": [("127.0.0.1", "16686", 16686)],
        "prometheus": [("127.0.0.1", "9090", 9090)],
    }


def test_services_wait_for_healthy_dependencies(compose):
    services = cc.services(compose)
    waits = {
        name: {dep for dep, how in (s.get("depends_on") or {}).items()}
        for name, s in services.items()
    }
    conditions = {
        (dep == cc.GUARD, how["condition"])
        for s in services.values()
        for dep, how in (s.get("depends_on") or {}).items()
    }
    assert conditions == {
        (False, "service_healthy"),
        (False, "service_completed_successfully"),  # the migration jobs
        (True, "service_completed_successfully"),
    }
    # The API only writes the outbox; its relay is the one that talks to RabbitMQ.
    assert waits["inventory-svc"] == {"inventory-migrate", "postgres"}
    assert waits["inventory-relay"] == {"inventory-migrate", "postgres", "rabbitmq"}
    assert services["inventory-relay"]["command"] == ["python", "-m", "inventory_svc.relay"]
    assert waits["analytics-svc"] == {"mongo", "rabbitmq"}
    assert waits["notify-svc"] == {"notify-migrate", "postgres", "rabbitmq", "mailpit"}
    for job in ("inventory-migrate", "notify-migrate"):  # one-shot: succeeds, then exits
        assert services[job]["restart"] == "no"
        assert services[job]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[job]["command"][-1].endswith(".migrate")
    assert waits["envoy"] == set(OUR_SERVICES)


def test_our_services_share_one_image_and_probe_grpc_health(compose):
    for name, package in OUR_SERVICES.items():
        service = cc.services(compose)[name]
        assert service["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile"}
        assert service["command"] == ["python", "-m", package]
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "meshkit.healthcheck"]
        assert service["environment"]["GRPC_HOST"] == "0.0.0.0"
        assert "ports" not in service


def test_variables_must_match_env_example():
    def variable(default: str = "", required: bool = False) -> dict:
        return {"DefaultValue": default, "Required": required}

    variables = {"KNOWN": variable("same"), "DRIFTED": variable("old"), "MISSING": variable()}
    variables |= {"DB_PASSWORD": variable("secret"), "DB_USER": variable(required=True)}
    env = {"KNOWN": "same", "DRIFTED": "new", "STALE": "x", "DB_PASSWORD": "p", "DB_USER": "u"}
    assert cc.check_variables(variables, env) == [
        ".env.example: STALE is not used by compose.yaml",
        "compose.yaml: ${DB_PASSWORD} is a credential: ${DB_PASSWORD:?…}, no default",
        "compose.yaml: ${DRIFTED} defaults to 'old', .env.example: 'new'",
        "compose.yaml: ${MISSING} is not in .env.example",
    ]


def test_compose_itself_refuses_broken_files(tmp_path: Path):
    # Schema, unknown dependencies, undeclared volumes: Docker Compose's own checks.
    (tmp_path / ".env.example").write_text("TAG=1\n")
    (tmp_path / "compose.yaml").write_text(
        "services:\n  app:\n    image: app:${TAG}\n    depends_on: [billing]\n"
    )
    compose, problems = cc.load(tmp_path)
    assert compose == {}
    assert problems and "billing" in problems[0]
    (tmp_path / "compose.yaml").write_text("services:\n  app:\n    imagee: x\n")
    assert "imagee" in "".join(cc.load(tmp_path)[1])


def test_missing_env_file_stops_compose(tmp_path: Path):
    (tmp_path / "compose.yaml").write_text((ROOT / "compose.yaml").read_text())
    (tmp_path / ".env.example").write_text("")
    _, problems = cc.load(tmp_path)
    assert any("copy .env.example to .env" in p for p in problems)


def test_container_rules_are_enforced(compose):
    services = cc.services(compose)
    services["mongo"]["volumes"].append({"type": "bind", "source": "/no/such/dir", "target": "/x"})
    del services["mailpit"]["healthcheck"]
    services["mongo-express"]["image"] = "mongo-express:latest"
    services["jaeger"]["ports"][0]["host_ip"] = "0.0.0.0"
    assert sorted(cc.check_services(compose, cc.read_env_file(ROOT / ".env.example"))) == [
        "service jaeger: port 16686 is published beyond 127.0.0.1",
        "service mailpit: no healthcheck",
        "service mongo-express: image 'mongo-express:latest' is not pinned to a version",
        "service mongo: bind mount source /no/such/dir does not exist",
    ]


def guard_run(compose: dict, **changes: str) -> subprocess.CompletedProcess:
    """The credentials guard's real script (compose's $$ unescaped), run by sh."""
    guard = cc.services(compose)[cc.GUARD]
    script = guard["entrypoint"][2].replace("$$", "$")
    env = {"PATH": "/usr/bin:/bin", **guard["environment"], **changes}
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)


def test_the_example_passwords_stop_compose_outside_development(compose):
    refused = guard_run(compose)
    assert refused.returncode == 1
    for name in ("POSTGRES", "RABBITMQ", "MONGO_ROOT", "MONGO_EXPRESS"):
        assert f"{name}_PASSWORD is the example value of .env.example" in refused.stderr
    assert guard_run(compose, POLYGLOT_DEV="1").returncode == 0
    passwords = [
        n for n in cc.services(compose)[cc.GUARD]["environment"] if n.endswith("_PASSWORD")
    ]
    assert guard_run(compose, **dict.fromkeys(passwords, "own-S3cret")).returncode == 0


def test_every_container_starts_after_the_credentials_guard(compose):
    env = cc.read_env_file(ROOT / ".env.example")
    assert cc.check_credentials_guard(compose, env) == []
    del cc.services(compose)["mongo"]["depends_on"]
    del cc.services(compose)[cc.GUARD]["environment"]["RABBITMQ_PASSWORD"]
    assert sorted(cc.check_credentials_guard(compose, env)) == [
        "service credentials-check: does not check RABBITMQ_PASSWORD",
        "service mongo-express: may start before credentials-check succeeded",
        "service mongo: may start before credentials-check succeeded",
    ]


def test_envoy_must_mount_the_generated_config_and_reach_our_services(compose):
    services = cc.services(compose)
    services["notify-svc"]["environment"]["GRPC_PORT"] = "6000"
    assert cc.check_envoy(compose, ROOT) == [
        "Envoy cluster notify_svc: notify-svc:50053, but its GRPC_PORT is 6000",
        "Envoy cluster mesh_any: notify-svc:50053, but its GRPC_PORT is 6000",
    ]
    volumes = services["envoy"]["volumes"]
    volumes[:] = [v for v in volumes if v["target"] != "/etc/envoy/docs"]
    services["notify-svc"]["environment"]["GRPC_PORT"] = "50053"
    problems = cc.check_envoy(compose, ROOT)
    assert problems and all("/etc/envoy/docs/" in p for p in problems)
    volumes[0]["source"] = str(ROOT / "envoy" / "envoy.yaml")
    (problem,) = cc.check_envoy(compose, ROOT)
    assert "does not mount" in problem and "envoy.compose.yaml as Envoy's config" in problem


def test_envoy_exports_its_spans_to_a_service_that_takes_otlp(compose):
    services = cc.services(compose)
    services["jaeger"]["expose"] = ["4318"]
    assert cc.check_envoy(compose, ROOT) == ["Envoy cluster otlp: jaeger does not expose port 4317"]
    del services["jaeger"]
    assert cc.check_envoy(compose, ROOT) == ["Envoy cluster otlp: jaeger is no service"]


def test_prometheus_must_mount_the_generated_config_and_scrape_our_services(compose):
    services = cc.services(compose)
    assert cc.check_prometheus(compose, ROOT) == []
    services["notify-svc"]["environment"]["METRICS_PORT"] = "9999"
    services["analytics-svc"]["environment"]["METRICS_HOST"] = "127.0.0.1"
    assert cc.check_prometheus(compose, ROOT) == [
        "Prometheus job analytics_svc: analytics-svc:9102, but it serves metrics on 127.0.0.1:9102",
        "Prometheus job notify_svc: notify-svc:9103, but it serves metrics on 0.0.0.0:9999",
    ]
    volumes = services["prometheus"]["volumes"]
    volumes[:] = [v for v in volumes if v["target"] != "/etc/prometheus/alerts.yml"]
    assert "Prometheus reads rules alerts.yml" in cc.check_prometheus(compose, ROOT)[0]
    volumes[0]["source"] = str(ROOT / "prometheus" / "alerts.yml")
    (problem,) = cc.check_prometheus(compose, ROOT)
    assert "prometheus.compose.yml as Prometheus's config" in problem


def test_our_services_export_traces_to_jaeger_and_metrics_on_the_network(compose):
    for name in [*OUR_SERVICES, "inventory-relay"]:
        env = cc.services(compose)[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert env["METRICS_HOST"] == "0.0.0.0"
        assert cc.services(compose)[name]["expose"] == [env["METRICS_PORT"]]


def test_envoy_validation_rejects_a_broken_config():
    (problem,) = cc.validate_envoy("static_resources: {clusters: [{name: x, type: NO_SUCH}]}\n")
    assert problem.startswith("envoy --mode validate: ")
    assert "unknown enum value: 'NO_SUCH'" in problem


def project(tmp_path: Path, dockerfile: str, pyproject_data: str = "") -> dict:
    """A minimal project: one package with a data file, and a compose service building it."""
    (tmp_path / "pkg" / "migrations").mkdir(parents=True, exist_ok=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "migrations" / "0001.sql").write_text("SELECT 1;\n")
    (tmp_path / ".dockerignore").write_text("*\n!pkg/\n!pyproject.toml\n**/__pycache__\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n'
        f"[tool.setuptools.package-data]\n{pyproject_data}"
    )
    return {"services": {"app": {"build": {"context": str(tmp_path), "dockerfile": "Dockerfile"}}}}


def test_copy_sources_must_exist_and_be_in_the_context(tmp_path: Path):
    compose = project(tmp_path, "FROM scratch\nCOPY pyproject.toml pkg/ \\\n  README.md /src/\n")
    (tmp_path / "README.md").write_text("")
    assert cc.check_builds(compose) == ["Dockerfile: COPY source README.md is .dockerignored"]
    (tmp_path / "Dockerfile").write_text("FROM scratch AS a\nCOPY gone.txt /\nCOPY --from=a /x /\n")
    assert cc.check_builds(compose) == ["Dockerfile: COPY source gone.txt does not exist"]
    (tmp_path / "Dockerfile").unlink()
    assert cc.check_builds(compose) == [
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


async def test_envoy_healthcheck_command_against_a_real_envoy(compose, tmp_path: Path):
    # The container's command (after compose's $$ unescaping), with the admin port
    # moved to a free one; Envoy answers /ready only when it is LIVE.
    test = cc.services(compose)["envoy"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "/dev/tcp/127.0.0.1/9901" in test[3]
    port = free_port()
    script = test[3].replace("$$", "$").replace("/9901", f"/{port}")
    config = tmp_path / "envoy.yaml"
    config.write_text(
        f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
    )

    def healthy() -> bool:
        return subprocess.run(["bash", "-c", script], capture_output=True).returncode == 0

    assert not healthy()
    envoy = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [str(cc.BIN / "envoy"), "-c", str(config), "--disable-hot-restart", "--log-level", "error"]
    )
    try:
        await eventually(lambda: envoy.poll() is not None or healthy(), what="Envoy ready")
        assert envoy.poll() is None and healthy()
    finally:
        envoy.terminate()
        envoy.wait(10)


async def test_prometheus_healthcheck_command_against_a_real_prometheus(compose, tmp_path: Path):
    # The container's wget (busybox there, GNU wget here: same flags), with the port
    # moved to a free one; Prometheus answers /-/ready once it serves queries.
    test = cc.services(compose)["prometheus"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "wget"] and test[-1] == "http://127.0.0.1:9090/-/ready"
    binary = prometheus_tool()
    if binary is None:
        pytest.fail(f"prometheus is missing: {PROMETHEUS_INSTALL}")
    port = free_port()
    command = [*test[1:-1], test[-1].replace(":9090", f":{port}")]
    (tmp_path / "prometheus.yml").write_text("scrape_configs: []\n")

    def healthy() -> bool:
        return subprocess.run(command, capture_output=True).returncode == 0

    assert not healthy()
    prometheus = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ]
    )
    try:
        await eventually(lambda: prometheus.poll() is not None or healthy(), what="ready")
        assert prometheus.poll() is None and healthy()
    finally:
        prometheus.terminate()
        prometheus.wait(10)
