"""docker-compose.yml, checked without a Docker engine: Debian's ``docker-compose`` (1.29) must
accept it (``config``, with ``.env.example`` as the .env), then the resolved configuration is
cross-checked against the repository: every service's processes (web, worker, and the Procfile's
scheduler / stream) are there, scraped by Prometheus, routed by the gateway; every healthcheck
asks the right port; every dependency exists; every mounted file is in the repository; every
``${VAR}`` without a default is in ``.env.example``; the image is multi-stage and non-root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.gateway import RouteTable
from shared.settings import ServiceSettings
from tests.deploy.conftest import ROOT, require_tool

PORTS = {"intake": 8001, "dispatch": 8002, "scoring": 8003, "feed": 8004, "notify": 8005}
ONE_SHOTS = {"keys", "demo", "backup"} | {f"{s}-migrate" for s in PORTS}
INFRA = {
    "postgres", "rabbitmq", "redis", "gateway", "prometheus", "alertmanager", "grafana",
    "postgres-exporter",
}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict:
    """The configuration as docker-compose resolves it (every profile)."""
    result = subprocess.run(
        [require_tool("docker-compose"), "--env-file", str(ROOT / ".env.example"),
         "-f", str(ROOT / "docker-compose.yml"), "--profile", "demo", "--profile", "backup",
         "config"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def services_in_repo() -> list[str]:
    return sorted(p.name for p in (ROOT / "services").iterdir() if (p / p.name).is_dir())


def procfile_processes() -> set[str]:
    names = set()
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([a-z-]+): scripts/service (\w+) (\w+)", line)
        if match:
            names.add(f"{match.group(2)}-{match.group(3)}")
    return names


def test_the_service_names_are_the_contracts(compose):
    expected = set(INFRA) | ONE_SHOTS | {"dispatch-scheduler", "notify-stream"}
    for service in PORTS:
        expected |= {f"{service}-web", f"{service}-worker"}
    assert set(compose["services"]) == expected


def test_every_service_directory_has_its_processes_in_compose(compose):
    assert services_in_repo() == sorted(PORTS)
    for service in services_in_repo():
        for process in ("migrate", "web", "worker"):
            assert f"{service}-{process}" in compose["services"], (service, process)
    for process in procfile_processes():
        assert process in compose["services"], f"Procfile's {process} is not in compose"


def test_every_process_is_scraped_by_prometheus():
    prometheus = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    assert prometheus.exists(), "deploy/prometheus/prometheus.yml is missing"
    config = yaml.safe_load(prometheus.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    wanted = {f"{s}-web:{p}" for s, p in PORTS.items()} | {f"{s}-worker:9100" for s in PORTS}
    wanted |= {"notify-stream:8015", "dispatch-scheduler:9100"}
    wanted |= {"rabbitmq:15692", "postgres-exporter:9187"}
    assert wanted - targets == set()


def test_every_web_and_the_stream_are_routed_by_the_gateway(compose):
    table = RouteTable.load()
    upstreams = {u.compose for u in table.upstreams.values()}
    assert upstreams == {f"{s}-web:{p}" for s, p in PORTS.items()} | {"notify-stream:8015"}
    for address in upstreams:
        assert address.split(":")[0] in compose["services"]
    gateway = compose["services"]["gateway"]
    assert any(str(p.get("target", p)).startswith("8080") or "8080" in str(p)
               for p in gateway["ports"])  # fmt: skip
    for address in upstreams:
        assert gateway["depends_on"][address.split(":")[0]]["condition"] == "service_healthy"


def test_every_long_running_container_has_a_healthcheck_on_its_own_port(compose):
    for name, spec in compose["services"].items():
        if name in ONE_SHOTS:
            continue
        check = spec.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        text = " ".join(check["test"])
        env = spec.get("environment") or {}
        if name.endswith("-web"):
            assert f"127.0.0.1:{PORTS[name[:-4]]}/readyz" in text, name
        elif name.endswith(("-worker", "-scheduler")):
            assert env.get("METRICS_PORT") == "9100", name
            assert "127.0.0.1:9100/metrics" in text, name
        elif name == "notify-stream":
            assert "127.0.0.1:8015/healthz" in text


def test_workers_have_their_own_metrics_and_no_shared_pid_namespace(compose):
    for name, spec in compose["services"].items():
        assert "pid" not in spec, f"{name} still shares a PID namespace"
        for volume in spec.get("volumes", []):
            target = volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
            assert target != "/metrics", f"{name} mounts a shared /metrics volume"


def test_every_dependency_exists_and_waits_for_the_right_condition(compose):
    services = compose["services"]
    for name, spec in services.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = condition["condition"]
            if dependency in ONE_SHOTS:
                assert wanted == "service_completed_successfully", (name, dependency)
            else:
                assert wanted == "service_healthy", (name, dependency)
                assert services[dependency].get("healthcheck"), (name, dependency)
    for service in PORTS:
        deps = services[f"{service}-web"]["depends_on"]
        assert deps[f"{service}-migrate"]["condition"] == "service_completed_successfully"


def test_logs_rotate_and_resources_are_limited_everywhere(compose):
    for name, spec in compose["services"].items():
        logging = spec.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name
        if name in ONE_SHOTS:
            continue
        limits = (spec.get("deploy") or {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name} has no resource limits"


def test_every_mounted_host_file_is_in_the_repository():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name, spec in raw["services"].items():
        for volume in spec.get("volumes", []):
            # A setting with a default (``${GATEWAY_CONFIG:-nginx.conf}``): check the default.
            source = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume).split(":")[0]
            if not source.startswith("./"):
                continue  # a named volume
            if name == "backup" and source == "./backups":
                continue  # made by the backup itself
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_every_variable_without_a_default_is_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    required = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?\?[^}]*)?\}", text))
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
        if re.match(r"^[A-Z0-9_]+=", line)
    }
    assert required - documented == set()
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if "PASSWORD=" in line or "SECRET=" in line:
            assert "change-me" in line, f".env.example holds something like a secret: {line}"


def test_the_broker_definitions_match_the_services_exchange():
    definitions = (ROOT / "deploy" / "rabbitmq" / "definitions.json").read_text(encoding="utf-8")
    data = yaml.safe_load(definitions)
    (exchange,) = data["exchanges"]
    assert exchange["name"] == ServiceSettings.model_fields["events_exchange"].default
    assert (exchange["type"], exchange["durable"]) == ("topic", True)
    assert {u["name"] for u in data["users"]} == {"service365", "admin"}
    assert data["policies"]
    conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text(encoding="utf-8")
    path = re.search(r"^load_definitions = (\S+)$", conf, re.M).group(1)
    assert path in (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    plugins = (ROOT / "deploy" / "rabbitmq" / "enabled_plugins").read_text(encoding="utf-8")
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_management" in plugins


def test_the_image_is_multi_stage_slim_and_non_root():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) >= 2
    final = stages[-1]
    assert final.startswith("python:3.11-slim")
    assert "build-essential" not in final and "gcc" not in final
    assert re.search(r"^USER app$", final, re.M)
    assert "HEALTHCHECK" in final
    for copied in re.findall(r"^COPY (?!--from)(\S+)", final, re.M):
        assert (ROOT / copied).exists(), copied
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "var", "tests", "**/tests", "bench"} <= ignored


def test_the_healthcheck_script_answers_like_docker_expects(tmp_path):
    import sys

    script = ROOT / "deploy" / "docker" / "healthcheck.py"
    result = subprocess.run(
        [sys.executable, str(script), "http://127.0.0.1:9/readyz"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1 and "unhealthy" in result.stderr
    assert Path(script).exists()
