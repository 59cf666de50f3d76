"""The Kubernetes deployment (deploy/k8s/), checked offline (no cluster here or in CI):
both overlays render with kubectl's kustomize, validate against Kubernetes' and the
operators' schemas, their cross-references hold, the NetworkPolicies allow exactly
the intended paths, and each check catches the mistake it is there for."""

import base64
import importlib.util
import os
import re
from dataclasses import replace

import pytest

from blueprint.contracts import DESCRIPTOR_SET
from blueprint.edge.render import K8S_DIR, K8S_PROD_CONFIG, K8S_PROD_SITE, K8S_SITE, main, render
from blueprint.edge.settings import EdgeAuth
from blueprint.topology import GRPC_PORTS, ROOT
from meshkit.grpc_server import LIVENESS
from tests.support import k8s_check as k8s
from tests.support import k8s_network as network

SERVICES = {name.replace("_", "-"): port for name, port in GRPC_PORTS.items()}
MESH = {"envoy", *SERVICES}
# Deployments: the mesh's and the outbox relay's (a process without a Service).
DEPLOYMENTS = MESH | {"inventory-relay"}


@pytest.fixture(params=k8s.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


def objects_of(overlay: str) -> list[dict]:
    return k8s.render(overlay)  # a fresh copy each time: tests may edit it


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: list[dict], workload: str, kind: str = "Deployment") -> dict:
    return find(objects, kind, workload)["spec"]["template"]["spec"]["containers"][0]


# --- the real manifests pass ------------------------------------------------------


def test_every_object_validates_against_the_pinned_kubernetes_and_crd_schemas(overlay):
    objects = objects_of(overlay)
    assert k8s.schema_problems(objects) == []
    crds = k8s.crd_validators()
    custom = sorted(o["kind"] for o in objects if (o["apiVersion"], o["kind"]) in crds)
    operators = ["Cluster", "Cluster", "MongoDBCommunity", "RabbitmqCluster"]
    assert custom == (operators if overlay == "prod" else [])


def test_cross_references_resolve(overlay):
    assert k8s.reference_problems(objects_of(overlay)) == []


def test_envoys_kubernetes_config_passes_the_real_envoy(overlay):
    assert k8s.envoy_validate_problems(objects_of(overlay)) == []


# --- the deployment's shape ---------------------------------------------------------


def test_dev_runs_one_replica_and_its_own_datastores():
    objects = objects_of("dev")
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert set(deployments) == DEPLOYMENTS | {"mailpit"}
    assert all(d["spec"].get("replicas", 1) == 1 for d in deployments.values())
    statefulsets = {o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet"}
    assert statefulsets == {"inventory-db", "notify-db", "rabbitmq", "mongo"}
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def test_prod_runs_three_of_everything_through_operators():
    objects = objects_of("prod")
    autoscalers = {
        o["spec"]["scaleTargetRef"]["name"]: o["spec"]
        for o in objects
        if o["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(autoscalers) == DEPLOYMENTS
    assert {spec["minReplicas"] for spec in autoscalers.values()} == {3}
    # The autoscaler owns the replica count: a re-apply must not reset it.
    assert all("replicas" not in o["spec"] for o in objects if o["kind"] == "Deployment")
    assert find(objects, "Cluster", "inventory-db")["spec"]["instances"] == 3
    assert find(objects, "Cluster", "notify-db")["spec"]["instances"] == 3
    assert find(objects, "RabbitmqCluster", "rabbitmq")["spec"]["replicas"] == 3
    assert find(objects, "MongoDBCommunity", "mongo")["spec"]["members"] == 3
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    envoy = find(objects, "Service", "envoy")["spec"]
    assert envoy["type"] == "LoadBalancer"
    # Clients keep their own address: the quota for calls without a token counts by it.
    assert envoy["externalTrafficPolicy"] == "Local"


def test_prod_credentials_come_only_from_secrets_the_repository_does_not_hold():
    objects = objects_of("prod")
    assert not [o for o in objects if o["kind"] == "Secret"]
    for workload in objects:
        if workload["kind"] not in k8s.WORKLOADS:
            continue
        spec = workload["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            for env in c.get("env", []):
                # A URL with credentials is only ever assembled from Secret values.
                assert "@" not in env.get("value", "") or "$(AMQP_PASSWORD)" in env["value"]
    # What the deployer makes is named in the deployment instructions.
    readme = (ROOT / "deploy" / "k8s" / "README.md").read_text()
    for name in k8s.deployer_secrets(objects):
        assert f"create secret generic {name}" in readme
    for name, keys in k8s.DEPLOYER_CONFIGMAPS.items():
        assert all(f"create configmap {name} --from-file={key}=" in readme for key in keys)


def test_the_services_use_native_grpc_health_probes(overlay):
    objects = objects_of(overlay)
    for name, port in SERVICES.items():
        c = container(objects, name)
        assert c["readinessProbe"]["grpc"] == {"port": port}  # overall: dependencies too
        assert c["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert c["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert {"name": "GRPC_PORT", "value": str(port)} in c["env"]


def test_migrations_run_as_jobs_with_the_services_image(overlay):
    objects = objects_of(overlay)
    image = container(objects, "inventory-svc")["image"]
    for service in ("inventory", "notify"):
        job = container(objects, f"{service}-migrate", kind="Job")
        assert job["command"] == ["python", "-m", f"{service}_svc.migrate"]
        assert importlib.util.find_spec(f"{service}_svc.migrate") is not None
        assert job["image"] == image


def test_envoy_is_the_only_way_in_and_reads_the_generated_config(overlay):
    objects = objects_of(overlay)
    exposed = [
        o for o in objects if o["kind"] == "Service" and o["spec"].get("clusterIP") != "None"
    ]
    assert [s["metadata"]["name"] for s in exposed if s["metadata"]["name"] != "mailpit"] == [
        "envoy"
    ]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]  # envoy-config-<hash>
    # Development's quotas in dev, production's in prod (envoy/README.md, "Limits and quotas").
    rendered = K8S_PROD_CONFIG if overlay == "prod" else K8S_DIR / "envoy.yaml"
    assert config["data"]["envoy.yaml"] == rendered.read_text()
    assert (
        base64.b64decode(config["binaryData"]["mesh.binpb"])
        == (K8S_DIR / "mesh.binpb").read_bytes()
    )
    assert K8S_SITE.backends == {
        name: [(name.replace("_", "-"), port)] for name, port in GRPC_PORTS.items()
    }


def test_the_checked_in_kubernetes_envoy_files_are_the_generators_output():
    # What `make generate` writes (and the drift check compares) for deploy/k8s.
    assert (K8S_DIR / "envoy.yaml").read_text() == render(K8S_SITE)
    assert K8S_PROD_CONFIG.read_text() == render(K8S_PROD_SITE)
    assert (K8S_DIR / "mesh.binpb").read_bytes() == DESCRIPTOR_SET.read_bytes()


def test_an_overlay_for_an_oidc_provider_as_the_readme_shows_it(tmp_path, monkeypatch):
    # deploy/k8s/README.md: render Envoy's k8s config for the provider (with production's quotas),
    # merge it into envoy-config.
    issuer = "https://id.example.com/realms/shop"
    monkeypatch.setenv("AUTH_ISSUER", issuer)
    monkeypatch.setenv("AUTH_AUDIENCES", "polyglotmicro-api")
    monkeypatch.setenv("AUTH_JWKS_URI", f"{issuer}/protocol/openid-connect/certs")
    monkeypatch.setenv("EDGE_PROFILE", "production")
    main(["--from-env", "k8s", "--out", str(tmp_path / "envoy.yaml")])
    prod = os.path.relpath(k8s.K8S_DIR / "overlays" / "prod", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {prod}\n"
        "configMapGenerator:\n  - name: envoy-config\n    behavior: merge\n"
        "    files:\n      - envoy.yaml\n"
    )
    objects = k8s.render(tmp_path)
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert f"issuer: {issuer}" in config["data"]["envoy.yaml"]
    assert config["data"]["envoy.yaml"] == render(
        replace(K8S_PROD_SITE, auth=EdgeAuth.from_env(base=K8S_SITE.auth))
    )
    assert "mesh.binpb" in config["binaryData"]
    assert k8s.reference_problems(objects) == []
    assert k8s.envoy_validate_problems(objects) == []


# --- NetworkPolicies: exactly the intended paths -------------------------------------

OUTSIDE_OF_NAMESPACE = {network.OUTSIDE, network.KUBE_DNS} | {
    f"ns:{n}" for n in network.OTHER_NAMESPACES
}


def intended_paths(overlay: str, pods: set[str]) -> set[tuple[str, str, str]]:
    paths = {(src, "envoy", "TCP/8080") for src in OUTSIDE_OF_NAMESPACE}
    paths |= {("envoy", name, f"TCP/{port}") for name, port in SERVICES.items()}
    paths |= {
        ("inventory-svc", "inventory-db", "TCP/5432"),
        ("inventory-relay", "inventory-db", "TCP/5432"),
        ("inventory-relay", "rabbitmq", "TCP/5672"),
        ("analytics-svc", "mongo", "TCP/27017"),
        ("analytics-svc", "rabbitmq", "TCP/5672"),
        ("notify-svc", "notify-db", "TCP/5432"),
        ("notify-svc", "rabbitmq", "TCP/5672"),
        ("inventory-migrate", "inventory-db", "TCP/5432"),
        ("notify-migrate", "notify-db", "TCP/5432"),
    }
    paths |= {(pod, network.KUBE_DNS, port) for pod in pods for port in ("TCP/53", "UDP/53")}
    if overlay == "dev":
        return paths | {("notify-svc", "mailpit", "TCP/1025")}
    # prod: the operators' pods talk to their peers, their operator and the API server.
    peers = {
        "inventory-db": (5432, 8000, 9187),
        "notify-db": (5432, 8000, 9187),
        "rabbitmq": (4369, 5672, 15672, 15692, 25672),
        "mongo": (27017,),
    }
    paths |= {(s, s, f"TCP/{p}") for s, ports in peers.items() for p in ports}
    paths |= {(s, network.OUTSIDE, f"TCP/{p}") for s in peers for p in (443, 6443)}
    paths |= {("ns:cnpg-system", db, "TCP/8000") for db in ("inventory-db", "notify-db")}
    paths |= {("ns:rabbitmq-system", "rabbitmq", "TCP/15672")}
    paths |= {("envoy", network.OUTSIDE, "TCP/443")}  # an OIDC provider's JWKS URI
    return paths | {("notify-svc", network.OUTSIDE, f"TCP/{p}") for p in (25, 465, 587)}


def test_network_policies_allow_exactly_the_intended_paths(overlay):
    objects = objects_of(overlay)
    pods = set(k8s.Model.of(objects).pods)
    assert network.network_paths(objects) == intended_paths(overlay, pods)


def test_without_the_policies_everything_could_reach_everything():
    # The evaluator itself: no policy means no isolation.
    objects = [o for o in objects_of("dev") if o["kind"] != "NetworkPolicy"]
    assert ("outside", "inventory-db", "TCP/5432") in network.network_paths(objects)
    assert ("envoy", "mongo", "TCP/27017") in network.network_paths(objects)


def test_a_too_broad_policy_shows_up_as_an_unintended_path():
    objects = objects_of("dev")
    policy = find(objects, "NetworkPolicy", "inventory-db-clients")
    policy["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app": "envoy"}}})
    find(objects, "NetworkPolicy", "envoy")["spec"]["egress"].append({"ports": [{"port": 5432}]})
    assert ("envoy", "inventory-db", "TCP/5432") in network.network_paths(objects)


# --- each check catches its mistake ----------------------------------------------------


def test_an_unknown_field_in_a_builtin_object_is_rejected():
    objects = objects_of("dev")
    container(objects, "envoy")["readinessProbes"] = {}
    problems = k8s.schema_problems([find(objects, "Deployment", "envoy")])
    assert any("readinessProbes" in p for p in problems)


def test_an_unknown_or_mistyped_field_in_a_custom_resource_is_rejected():
    objects = objects_of("prod")
    find(objects, "RabbitmqCluster", "rabbitmq")["spec"]["replica"] = 3
    find(objects, "MongoDBCommunity", "mongo")["spec"]["members"] = "three"
    problems = k8s.schema_problems(
        [o for o in objects if o["kind"] in ("RabbitmqCluster", "MongoDBCommunity")]
    )
    assert any(p.startswith("RabbitmqCluster/rabbitmq") and "'replica'" in p for p in problems)
    assert any(p.startswith("MongoDBCommunity/mongo: spec.members") for p in problems)


def test_a_service_selecting_no_pods_is_reported():
    objects = objects_of("dev")
    find(objects, "Service", "notify-svc")["spec"]["selector"] = {"app": "notify"}
    assert "Service/notify-svc: selector {'app': 'notify'} matches no pods" in (
        k8s.reference_problems(objects)
    )


def test_a_probe_on_a_port_the_container_does_not_open_is_reported():
    objects = objects_of("dev")
    container(objects, "analytics-svc")["readinessProbe"]["grpc"]["port"] = 50051
    assert (
        "analytics-svc/analytics-svc readinessProbe: port 50051 is not a container port"
        in k8s.reference_problems(objects)
    )


def test_missing_secrets_keys_and_late_variables_are_reported():
    objects = objects_of("prod")
    env = container(objects, "inventory-svc")["env"]
    db = next(e for e in env if e["name"] == "INVENTORY_DATABASE_URL")
    db["valueFrom"]["secretKeyRef"]["name"] = "inventory-app"
    relay_env = container(objects, "inventory-relay")["env"]
    amqp = next(e for e in relay_env if e["name"] == "AMQP_URL")
    relay_env.remove(amqp)
    relay_env.insert(0, amqp)
    user = next(e for e in container(objects, "notify-svc")["env"] if e["name"] == "AMQP_USER")
    user["valueFrom"]["secretKeyRef"]["key"] = "user"
    problems = k8s.reference_problems(objects)
    where = "inventory-svc/inventory-svc env"
    assert f"{where} INVENTORY_DATABASE_URL: Secret inventory-app does not exist" in problems
    assert (
        "inventory-relay/inventory-relay env AMQP_URL: $(AMQP_USER) is not defined before it"
        in problems
    )
    assert (
        "notify-svc/notify-svc env AMQP_USER: Secret rabbitmq-default-user has no key 'user'"
        in problems
    )


def test_an_optional_secret_may_be_absent():
    objects = [
        o for o in objects_of("dev") if o["kind"] != "Secret" or "smtp" not in o["metadata"]["name"]
    ]
    assert k8s.reference_problems(objects) == []


def test_envoy_backends_must_be_headless_services_on_the_pods_port():
    objects = objects_of("dev")
    service = find(objects, "Service", "analytics-svc")
    del service["spec"]["clusterIP"]
    service["spec"]["ports"][0]["port"] = 80
    problems = k8s.reference_problems(objects)
    where = "Envoy cluster analytics_svc: analytics-svc:50052"
    assert f"{where}: Service analytics-svc is not headless" in problems
    assert f"{where}: Service analytics-svc has no port 50052" in problems


def test_envoy_files_must_be_in_its_container():
    objects = objects_of("dev")
    envoy = find(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    envoy["containers"][0]["volumeMounts"] = [
        m for m in envoy["containers"][0]["volumeMounts"] if m["name"] != "docs"
    ]
    envoy["initContainers"][0]["image"] = "polyglotmicro/services:other"
    envoy["initContainers"][0]["command"][2] = "/opt/docs/."
    problems = k8s.reference_problems(objects)
    assert k8s.image_docs_dir() == "/opt/polyglotmicro/docs"
    assert "envoy/docs: does not copy /opt/polyglotmicro/docs, the image's docs site" in problems
    assert "envoy/docs: the docs site must come from the services' image" in problems
    # A file Envoy's container lacks: the real Envoy refuses the config.
    (problem,) = k8s.envoy_validate_problems(objects)
    assert re.search(r"file /etc/envoy/docs/\S+ does not exist", problem)


def test_a_configmap_over_one_mebibyte_is_reported():
    objects = objects_of("dev")
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    config["data"]["padding"] = "x" * k8s.CONFIGMAP_LIMIT
    assert any("over the 1 MiB limit" in p for p in k8s.reference_problems(objects))


def test_a_container_without_hardening_or_limits_is_reported():
    objects = objects_of("prod")
    c = container(objects, "notify-svc")
    c["securityContext"] = {"readOnlyRootFilesystem": True}
    del c["resources"]["limits"]
    problems = k8s.reference_problems(objects)
    where = "notify-svc/notify-svc"
    assert f"{where}: securityContext.allowPrivilegeEscalation is not False" in problems
    assert f"{where}: capabilities are not all dropped" in problems
    assert f"{where}: no memory limits" in problems


def test_a_deployment_without_a_disruption_budget_is_reported():
    objects = [
        o
        for o in objects_of("prod")
        if not (o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "envoy")
    ]
    assert "Deployment/envoy: no PodDisruptionBudget" in k8s.reference_problems(objects)


def test_without_kubectl_the_check_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(k8s.CheckError, match=r"kubectl not found.*install-kubectl-linux"):
        k8s.kubectl()


def test_a_broken_overlay_is_reported_with_kustomizes_message(tmp_path):
    overlay = tmp_path / "broken"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(k8s.CheckError, match=r"missing\.yaml"):
        k8s.render(overlay)
