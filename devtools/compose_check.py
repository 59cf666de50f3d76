"""Static checks of the Docker Compose deployment: ``python -m devtools.compose_check``.

There is no Docker engine on our machines or in CI, so nothing here builds or
starts a container. What can be proven without one is checked:

1. compose.yaml, interpolated with .env.example, against the Compose
   Specification schema; every ``${VAR}`` is in .env.example and every default
   equals it (so ``docker compose up`` behaves the same before and after
   ``cp .env.example .env``).
2. References: depends_on / links / extends name real services, build contexts,
   Dockerfiles, COPY sources (through .dockerignore) and bind-mounted paths exist,
   named volumes are declared, every container has a healthcheck, every pulled
   image is pinned, every data file of the installed packages is package data.
3. Envoy: compose mounts the generated envoy/envoy.compose.yaml, its backends are
   compose services at their GRPC_PORT, its listener is published, and the real
   Envoy binary validates it with the /etc/envoy/... paths mapped through the
   service's bind mounts to the local files.
4. hadolint on every Dockerfile (.hadolint.yaml: errors and warnings fail).

Exits 1 with one line per problem.
"""

import json
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from devtools.envoy_config import CHECKED_IN, COMPOSE_SITE
from devtools.tokens import DEV_KEYS_DIR, ensure_keys
from devtools.topology import ROOT

Node = Any  # a loaded YAML value
Service = dict[str, Any]

SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
ENVOY_CONFIG_TARGET = "/etc/envoy/envoy.yaml"
ENVOY_COMPOSE_CONFIG = next(path for path, site in CHECKED_IN.items() if site is COMPOSE_SITE)
BIN = Path(sys.executable).parent  # envoy and hadolint come with the dev extra

# $$ | ${NAME[:-default|-default|:?err|?err|:+alt|+alt]} | $NAME
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


# --- loading and interpolation ------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def interpolate(node: Node, env: dict[str, str], uses: dict[str, set[str | None]]) -> Node:
    """Compose's variable substitution; records each variable with its defaults."""
    if isinstance(node, dict):
        return {key: interpolate(value, env, uses) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, uses) for value in node]
    if isinstance(node, str):
        return VARIABLE.sub(lambda match: _substitute(match, env, uses), node)
    return node


def _substitute(match: re.Match[str], env: dict[str, str], uses: dict[str, set[str | None]]) -> str:
    if match["escaped"]:
        return "$"
    name, op, arg = match["name"] or match["bare"], match["op"] or "", match["arg"]
    value = env.get(name)
    uses.setdefault(name, set()).add(arg if op.endswith("-") else None)
    is_set = bool(value) if op.startswith(":") else value is not None
    if op.endswith("-"):
        return (value or "") if is_set else arg
    if op.endswith("+"):
        return arg if is_set else ""
    return value or ""


def check_variables(uses: dict[str, set[str | None]], env: dict[str, str]) -> list[str]:
    problems = [f"compose.yaml: ${{{name}}} is not in .env.example" for name in uses.keys() - env]
    problems += [f".env.example: {name} is not used by compose.yaml" for name in env.keys() - uses]
    problems += [
        f"compose.yaml: ${{{name}}} defaults to {default!r}, .env.example says {env[name]!r}"
        for name, defaults in uses.items()
        for default in defaults
        if name in env and default is not None and default != env[name]
    ]
    return sorted(problems)


def check_schema(compose: Node) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [
        f"compose.yaml: {'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(
            validator.iter_errors(compose), key=lambda e: [str(p) for p in e.absolute_path]
        )
    ]


# --- services: references, mounts, healthchecks, images -------------------------


def services(compose: Node) -> dict[str, Service]:
    return compose.get("services") or {}


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: Service) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) of each volume entry; type is "bind" or "volume"."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.partition(":")[0] or source
            source = source if rest else ""
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target = volume.get("source", ""), volume["target"]
            kind = volume.get("type", "volume")
        yield kind, source, target


def published_ports(service: Service) -> list[tuple[int, int]]:
    """(host port or 0 for a random one, container port) of each published port."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((int(port.get("published", 0)), int(port["target"])))
        elif "-" not in str(port):  # ranges are not used here
            parts = str(port).split("/")[0].split(":")
            ports.append((int(parts[-2]) if len(parts) > 1 else 0, int(parts[-1])))
    return ports


def _dependencies(service: Service) -> list[str]:
    depends_on = service.get("depends_on") or []
    names = list(depends_on)  # a list of names, or a mapping keyed by name
    names += [link.partition(":")[0] for link in service.get("links") or []]
    extends = service.get("extends")
    if isinstance(extends, dict) and "file" not in extends:
        names.append(extends["service"])
    return names


def check_references(compose: Node, root: Path) -> list[str]:
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in services(compose).items():
        problems += [
            f"service {name}: depends on unknown service {dep!r}"
            for dep in _dependencies(service)
            if dep not in services(compose)
        ]
        for kind, source, _ in mounts(service):
            if kind == "bind" and not (root / source).expanduser().exists():
                problems.append(f"service {name}: bind mount source {source} does not exist")
            if kind == "volume" and source and source not in declared:
                problems.append(f"service {name}: volume {source!r} is not declared")
        healthcheck = service.get("healthcheck") or {}
        one_shot = service.get("restart") == "no"  # a job (migrations): runs, then exits
        if not one_shot and (
            healthcheck.get("test") in (None, [], ["NONE"]) or healthcheck.get("disable")
        ):
            problems.append(f"service {name}: no healthcheck")
        problems += _image_pinned(name, service)
    return problems


def _image_pinned(name: str, service: Service) -> list[str]:
    image = service.get("image", "")
    if "build" in service or "@sha256:" in image:
        return []
    tag = image.rpartition("/")[2].partition(":")[2]
    if not tag or tag == "latest" or not any(char.isdigit() for char in tag):
        return [f"service {name}: image {image!r} is not pinned to a version"]
    return []


# --- builds: contexts, Dockerfiles, COPY sources, package data ------------------


def builds(compose: Node, root: Path) -> dict[str, tuple[Path, Path]]:
    """service → (build context, Dockerfile)."""
    result = {}
    for name, service in services(compose).items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = root / build.get("context", ".")
            result[name] = (context, context / build.get("dockerfile", "Dockerfile"))
    return result


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus **) as a regex."""
    regex = pattern.replace("**/", "\0").replace("**", "\1")
    regex = re.escape(regex).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    regex = re.sub(r"\\\[(!?)(.*?)\\\]", lambda m: f"[{'^' if m[1] else ''}{m[2]}]", regex)
    return re.compile(regex.replace("\0", "(?:.*/)?").replace("\1", ".*") + r"\Z")


def dockerignored(context: Path, relative: str) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a folder above it) out of the context."""
    ignore_file = context / ".dockerignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.exists() else []
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for line in (line.strip() for line in lines):
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            regex = _glob_regex(line.lstrip("!").strip("/"))
            if any(regex.match(prefix) for prefix in prefixes):
                ignored = not negated
    return ignored


def copy_sources(dockerfile: Path) -> list[str]:
    """Context paths that COPY/ADD read (not --from another stage, no variables)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [word for word in words[1:] if not word.startswith("--")]
            if not any(word.startswith("--from") for word in words) and len(args) > 1:
                sources += [arg for arg in args[:-1] if "$" not in arg]
    return sources


def check_builds(compose: Node, root: Path) -> list[str]:
    problems = []
    for name, (context, dockerfile) in builds(compose, root).items():
        if not context.is_dir():
            problems.append(f"service {name}: build context {context} does not exist")
        elif not dockerfile.is_file():
            problems.append(f"service {name}: Dockerfile {dockerfile} does not exist")
        else:
            for source in copy_sources(dockerfile):
                relative = source.strip("/")
                if relative in ("", "."):
                    continue  # the whole context
                if not list(context.glob(relative)):
                    problems.append(f"{dockerfile.name}: COPY source {source} does not exist")
                elif dockerignored(context, relative):
                    problems.append(f"{dockerfile.name}: COPY source {source} is .dockerignored")
    return problems


def check_package_data(compose: Node, root: Path) -> list[str]:
    """Non-Python files of the packages an image installs must be package data:
    a wheel (the image) lacks them while an editable install (every test) works."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools.get("package-data", {})
    contexts = {context for context, _ in builds(compose, root).values()}
    return [
        problem
        for context in sorted(contexts)
        for name, folder in _image_packages(root, context, setuptools["packages"]["find"])
        for problem in _missing_package_data(name, folder, data.get(name, []))
    ]


def _image_packages(root: Path, context: Path, found: dict) -> Iterator[tuple[str, Path]]:
    """Top-level packages setuptools finds that the build context holds."""
    for where in found.get("where", ["."]):
        for init in sorted((root / where).glob("*/__init__.py")):
            name, folder = init.parent.name, init.parent
            wanted = any(fnmatch(name, pattern) for pattern in found.get("include", ["*"]))
            if not wanted or context not in folder.parents:
                continue
            if not dockerignored(context, folder.relative_to(context).as_posix()):
                yield name, folder


def _missing_package_data(name: str, folder: Path, globs: list[str]) -> list[str]:
    missing = []
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).as_posix()
        if file.is_dir() or file.suffix in (".py", ".pyc") or "__pycache__" in relative:
            continue
        if not any(fnmatch(relative, glob) for glob in globs):
            missing.append(f"pyproject.toml: {name}/{relative} is not package data")
    return missing


# --- Envoy ------------------------------------------------------------------------


def envoy_service(compose: Node) -> tuple[str, Service] | None:
    for name, service in services(compose).items():
        if any(target == ENVOY_CONFIG_TARGET for _, _, target in mounts(service)):
            return name, service
    return None


def _map_strings(node: Node, change: Callable[[str], str]) -> Node:
    if isinstance(node, dict):
        return {key: _map_strings(value, change) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(value, change) for value in node]
    return change(node) if isinstance(node, str) else node


def local_path(container_path: str, service: Service, root: Path) -> Path | None:
    """Where a container path of ``service`` comes from on this machine (bind mounts)."""
    binds = [(target, source) for kind, source, target in mounts(service) if kind == "bind"]
    for target, source in sorted(binds, key=lambda bind: -len(bind[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return (root / source / container_path[len(target) :].lstrip("/")).resolve()
    return None


def _backends(config: Node) -> Iterator[tuple[str, str, int]]:
    """(cluster, host, port) of every endpoint on the network (Envoy-internal
    listeners, which have no socket, are not)."""
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"].get("socket_address")
                if address:
                    yield cluster["name"], address["address"], address["port_value"]


def check_envoy_backends(compose: Node, envoy_name: str, config: Node) -> list[str]:
    by_name = services(compose)
    ports = {name: environment(s).get("GRPC_PORT") for name, s in by_name.items()}
    problems = []
    for cluster, host, port in _backends(config):
        if host not in by_name:
            problems.append(f"Envoy cluster {cluster}: {host} is not a compose service")
        elif ports[host] != str(port):
            problems.append(
                f"Envoy cluster {cluster}: {host}:{port}, but its GRPC_PORT is {ports[host]}"
            )
    backends = {host for _, host, _ in _backends(config)}
    problems += [
        f"service {name} (GRPC_PORT {port}) is no Envoy backend"
        for name, port in ports.items()
        if port and name not in backends
    ]
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    if listener["port_value"] not in {target for _, target in published_ports(by_name[envoy_name])}:
        problems.append(
            f"service {envoy_name}: Envoy's port {listener['port_value']} is unpublished"
        )
    return problems


def check_envoy(compose: Node, root: Path) -> list[str]:
    found = envoy_service(compose)
    if found is None:
        return [f"compose.yaml: no service mounts the Envoy config at {ENVOY_CONFIG_TARGET}"]
    name, service = found
    mounted = local_path(ENVOY_CONFIG_TARGET, service, root)
    expected = root / ENVOY_COMPOSE_CONFIG.relative_to(ROOT)
    if mounted != expected.resolve():
        return [f"service {name}: mounts {mounted or 'nothing'} as Envoy's config, not {expected}"]
    config = yaml.safe_load(expected.read_text())
    problems = check_envoy_backends(compose, name, config)

    def localise(value: str) -> str:
        if not value.startswith("/etc/envoy/"):
            return value
        local = local_path(value, service, root)
        if local is None or not local.exists():
            problems.append(f"service {name}: Envoy reads {value}; its volumes do not provide it")
            return value
        return str(local)

    local_config = _map_strings(config, localise)
    return problems or validate_envoy(yaml.safe_dump(local_config, sort_keys=False))


def validate_envoy(config_text: str) -> list[str]:
    """The real Envoy's --mode validate (routes, filters, descriptor set, files)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "envoy.yaml"
        config.write_text(config_text)
        command = [str(BIN / "envoy"), "--mode", "validate", "-c", str(config)]
        returncode, output = _run([*command, "--disable-hot-restart", "--log-level", "warn"])
    if returncode != 0:
        return [f"envoy --mode validate: {line}" for line in output.splitlines()[-5:]]
    return []


# --- Dockerfile lint ----------------------------------------------------------------


def _run(command: list[str]) -> tuple[int, str]:
    """Exit code and output (stdout, then stderr) of a tool from the dev extra."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        return 127, f"{command[0]} not found: pip install -e '.[dev]'"
    return done.returncode, (done.stdout + done.stderr).strip()


def lint_dockerfile(dockerfile: Path, root: Path) -> list[str]:
    config = root / ".hadolint.yaml"
    options = ["--config", str(config)] if config.exists() else []
    returncode, output = _run([str(BIN / "hadolint"), "--no-color", *options, str(dockerfile)])
    if returncode != 0:
        return [f"hadolint: {line}" for line in output.splitlines()] or ["hadolint failed"]
    return []


def check_dockerfiles(compose: Node, root: Path) -> list[str]:
    dockerfiles = {dockerfile for _, dockerfile in builds(compose, root).values()}
    return [
        problem
        for dockerfile in sorted(dockerfiles)
        if dockerfile.is_file()
        for problem in lint_dockerfile(dockerfile, root)
    ]


# --- all of it ----------------------------------------------------------------------


def load(root: Path) -> tuple[Node, list[str]]:
    """compose.yaml as compose sees it after ``cp .env.example .env``, and the
    problems with its variables."""
    env = read_env_file(root / ".env.example")
    uses: dict[str, set[str | None]] = {}
    compose = interpolate(yaml.safe_load((root / "compose.yaml").read_text()), env, uses)
    return compose, check_variables(uses, env)


def run_checks(root: Path = ROOT) -> list[str]:
    # compose mounts the development JWKS from .run/auth/, which `make up`, `make keys`
    # and `make token` create (never committed); make it the same way, so a clean
    # clone checks the same mounts a developer's machine has.
    ensure_keys(root / DEV_KEYS_DIR.relative_to(ROOT))
    compose, problems = load(root)
    schema_problems = check_schema(compose)
    if schema_problems:  # the rest relies on the file's shape
        return problems + schema_problems
    problems += check_references(compose, root) + check_builds(compose, root)
    problems += check_package_data(compose, root) + check_envoy(compose, root)
    return problems + check_dockerfiles(compose, root)


def main() -> int:
    problems = run_checks()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"compose-check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("compose-check: compose.yaml, Dockerfile and the Envoy compose config are OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
