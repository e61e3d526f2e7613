"""deploy/prometheus and deploy/alertmanager: the configuration Prometheus and Alertmanager load in
compose, checked by their own tools (Debian's ``prometheus`` and ``prometheus-alertmanager``
packages; ``.ci/run`` installs them), and cross-checked against the processes the services run.

A missing tool fails the test with the command that installs it: these checks are never skipped.
The metric names the alerts use are checked against a live scrape in ``test_grafana.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTMANAGER = ROOT / "deploy" / "alertmanager"
# A Procfile process of a service → the compose service Prometheus scrapes and its port.
PORTS = {"intake": 8001, "dispatch": 8002, "scoring": 8003, "feed": 8004, "notify": 8005}
STREAM_PORT = 8015
METRICS_PORT = 9100  # the worker's and the scheduler's METRICS_PORT in compose
HAN = re.compile(r"[\u4e00-\u9fff]")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: install Debian's {package} package "
            f"(`apt-get install -y --no-install-recommends {package}`; .ci/run does it)"
        )
    return path


def run(argv: list[str], cwd: Path = ROOT) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{output}"
    return output


def rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def scrape_targets() -> dict[str, dict[str, str]]:
    """target address → its labels plus the job, from prometheus.yml."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    targets: dict[str, dict[str, str]] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                targets[target] = {"job": job["job_name"], **static.get("labels", {})}
    return targets


def procfile_processes() -> list[tuple[str, str]]:
    """(service, process) of every Service365 process ``make run`` starts."""
    found = []
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^[\w-]+:\s*scripts/service\s+(\w+)\s+(\w+)", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def test_promtool_accepts_the_configuration_and_its_rule_file():
    promtool = tool("promtool", "prometheus")
    output = run([promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert "SUCCESS" in output and "1 rule files found" in output, output


def test_promtool_accepts_the_alert_rules():
    promtool = tool("promtool", "prometheus")
    output = run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS)
    assert f"SUCCESS: {len(rules())} rules found" in output, output


def test_the_dlq_service_down_and_outbox_age_alerts_fire_on_trouble_and_not_on_health():
    promtool = tool("promtool", "prometheus")
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text(encoding="utf-8"))
    tested = {
        case["alertname"]
        for block in tests["tests"]
        for case in block.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    silent = {
        case["alertname"]
        for block in tests["tests"]
        for case in block.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    for alert in ("DeadLetters", "ServiceProcessDown", "OutboxBacklog"):
        assert alert in tested, f"alerts_test.yml has no case where {alert} fires"
        assert alert in silent, f"alerts_test.yml has no case where {alert} stays silent"

    output = run([promtool, "test", "rules", "deploy/prometheus/alerts_test.yml"])

    assert "SUCCESS" in output and "FAILED" not in output, output


def test_every_alert_tells_the_operator_in_chinese_what_happened_and_what_to_do():
    for rule in rules():
        assert "alert" in rule, f"a recording rule slipped into alerts.yml: {rule}"
        notes = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert HAN.search(notes.get(key, "")), f"{rule['alert']}: {key} missing or not Chinese"
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]


def test_every_process_of_every_service_is_scraped_with_its_service_and_component():
    targets = scrape_targets()
    processes = procfile_processes()
    services = sorted(p.name for p in (ROOT / "services").iterdir() if (p / p.name).is_dir())
    assert sorted({service for service, _ in processes}) == services
    for service, process in processes:
        if process == "web":
            address = f"{service}-web:{PORTS[service]}"
        elif process == "stream":
            address = f"{service}-stream:{STREAM_PORT}"
        else:
            address = f"{service}-{process}:{METRICS_PORT}"
        assert address in targets, f"prometheus.yml does not scrape {service} {process} ({address})"
        labels = targets[address]
        assert labels["service"] == service and labels["component"] == process, labels
        assert labels["job"] == f"service365-{process}", labels
    for infrastructure in ("rabbitmq:15692", "postgres-exporter:9187"):
        assert infrastructure in targets


def test_the_scraped_ports_are_the_ones_the_processes_listen_on():
    """The web's default port per service, and the worker-type processes' METRICS_PORT."""
    from shared.settings import ServiceSettings

    assert ServiceSettings().metrics_port == 0  # off unless the deployment sets it
    text = (ROOT / "scripts" / "service").read_text(encoding="utf-8")
    for service, process in procfile_processes():
        if process in ("worker", "scheduler"):
            assert (
                f"{service}-{process})" in text
            ), f"scripts/service: no METRICS_PORT for {process}"


def test_amtool_accepts_the_alertmanager_configuration():
    amtool = tool("amtool", "prometheus-alertmanager")
    output = run([amtool, "check-config", str(ALERTMANAGER / "alertmanager.yml")])
    assert "SUCCESS" in output, output


def test_alertmanager_routes_every_alert_to_a_receiver_that_exists():
    config = yaml.safe_load((ALERTMANAGER / "alertmanager.yml").read_text(encoding="utf-8"))
    receivers = {receiver["name"] for receiver in config["receivers"]}
    route = config["route"]
    assert route["receiver"] in receivers
    for child in route.get("routes", []):
        assert child["receiver"] in receivers
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    managers = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert managers == ["alertmanager:9093"]
    names = {rule["alert"] for rule in rules()}
    for inhibit in config.get("inhibit_rules", []):
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            for name in re.findall(r"[A-Z][A-Za-z0-9]+", matcher.split("=", 1)[1]):
                assert name in names, f"alertmanager.yml inhibits an unknown alert {name}"
