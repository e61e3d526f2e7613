"""deploy/grafana: every dashboard is a sane Grafana dashboard on the provisioned datasource, and
every metric name its queries (and the alert rules) use is one the running services export.

The names are checked against a LIVE scrape: all five services' web, worker and dispatch's
scheduler start as real processes (``tests.e2e.harness``, fresh databases, one fresh vhost); a
short journey (a report assigned, resolved and rated; news published, read and commented; a
party post liked) makes the labelled series exist; then every process's endpoint is scraped
where Prometheus scrapes it (the web's ``/metrics``, the worker's and scheduler's
``METRICS_PORT``). A name counts as exported when a sample or a ``# HELP``/``# TYPE`` line shows it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from shared.testing import wait_for
from tests.e2e.harness import SERVICES, Api, Township, build_township

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
TIMEOUT = 30

# Series Prometheus makes itself for each target, not exported by anyone.
SYNTHETIC = frozenset({"up"})
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


# --- PromQL ---------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals: label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables ($__rate_interval)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function: rate(, histogram_quantile(, absent(
        if match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_found_in_promql_and_nothing_else():
    expr = (
        "histogram_quantile(0.99, sum by (service, le) (rate(http_request_duration_seconds_bucket"
        '{route!~".*/stream", service="a"}[$__rate_interval]))) > 1 and on(service) '
        "time() - max without (instance) (scheduler_last_run_timestamp_seconds offset 5m) "
        '/ sum(issue_ratings_by_village{satisfied="yes"}) unless absent(up)'
    )
    assert metric_names(expr) == {
        "http_request_duration_seconds_bucket",
        "scheduler_last_run_timestamp_seconds",
        "issue_ratings_by_village",
        "up",
    }


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARDS}


def panels(board: dict) -> Iterator[dict]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> dict[str, list[str]]:
    """Every PromQL expression, named by where it is (``township.json: 满意率 …``)."""
    found: dict[str, list[str]] = {}
    for name, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                found.setdefault(f"{name}: {panel['title']}", []).append(target["expr"])
    return found


def alert_queries() -> dict[str, list[str]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {
        f"alerts.yml: {rule['alert']}": [rule["expr"]]
        for group in groups
        for rule in group["rules"]
    }


# --- the dashboards' shape ------------------------------------------------------------------


def provisioned_datasource_uid() -> str:
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    (source,) = config["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return source["uid"]


def test_the_provider_loads_the_folder_compose_mounts_the_dashboards_in():
    config = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "service365.yml").read_text(encoding="utf-8")
    )
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_there_is_a_dashboard_per_service_and_one_for_the_township():
    services = sorted(p.name for p in (ROOT / "services").iterdir() if (p / p.name).is_dir())
    names = set(dashboards())
    assert {f"service-{service}.json" for service in services} | {"township.json"} == names


def test_every_dashboard_is_a_sane_grafana_dashboard_on_the_provisioned_datasource():
    uid = provisioned_datasource_uid()
    seen_uids = set()
    for name, board in dashboards().items():
        assert board["uid"] not in seen_uids, f"{name}: uid {board['uid']} used twice"
        seen_uids.add(board["uid"])
        assert board["title"] and isinstance(board["schemaVersion"], int), name
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        graphs = [panel for panel in panels(board) if panel["type"] != "row"]
        assert graphs, f"{name} has no panels"
        for panel in graphs:
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
            assert panel["targets"], f"{where} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{where}: refIds repeat"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid, where
                assert target["expr"].strip() and metric_names(target["expr"]), where
            position = panel["gridPos"]
            assert position["w"] > 0 and position["h"] > 0, where
            assert position["x"] + position["w"] <= 24, f"{where} is wider than the grid"


def test_the_service_dashboards_show_requests_errors_latency_events_outbox_dlq_and_lag():
    wanted = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "events_published_total",
        "events_consumed_total",
        "outbox_oldest_pending_seconds",
        "dlq_messages",
        "consumer_lag_seconds_bucket",
    }
    for name, board in dashboards().items():
        if name.startswith("service-"):
            used = set().union(
                *(metric_names(t["expr"]) for p in panels(board) for t in p.get("targets", []))
            )
            assert wanted <= used, f"{name} lacks {sorted(wanted - used)}"


# --- the live scrape ------------------------------------------------------------------------------


@dataclass
class Scrape:
    """The Prometheus text of each process, by (service, process)."""

    texts: dict[tuple[str, str], str]

    def names(self, key: tuple[str, str] | None = None) -> set[str]:
        found: set[str] = set()
        for where, text in self.texts.items():
            if key is not None and where != key:
                continue
            for line in text.splitlines():
                match = re.match(r"^# (?:HELP|TYPE) (\S+)", line) or re.match(
                    r"^([A-Za-z_:][\w:]*)[{ ]", line
                )
                if match:
                    found.add(match.group(1))
        return found

    def exports(self, name: str) -> bool:
        names = self.names()
        if name in names or name in SYNTHETIC:
            return True
        return any(name.endswith(s) and name.removesuffix(s) in names for s in SUFFIXES)


def _journey(township: Township) -> None:
    """The steps that make the labelled series of every service exist."""
    admin = township.dispatch(township.admin)
    worker = township.dispatch(township.worker)
    resident = township.resident("deploy-metrics-resident")
    issue = resident.post(
        "/api/v1/issues",
        {
            "category": "road_traffic",
            "description": "村口路灯不亮，晚上出行不便。",
            "village_id": township.village_id,
            "address": "沙口集村村口",
        },
        expect=201,
    )
    issue_id = issue["id"]
    wait_for(lambda: any(i["id"] == issue_id for i in admin.pages("/api/v1/queue")), TIMEOUT)
    admin.post(
        f"/api/v1/issues/{issue_id}/assign",
        {"assignee_id": township.worker.user["id"], "difficulty": 2, "due_in_hours": 24},
    )
    worker.post(f"/api/v1/issues/{issue_id}/start", {})
    worker.post(f"/api/v1/issues/{issue_id}/resolve", {"note": "已更换灯泡。"})
    wait_for(lambda: resident.get(f"/api/v1/issues/{issue_id}")["can_rate"], TIMEOUT)
    resident.post(f"/api/v1/issues/{issue_id}/rating", {"rating": "satisfied"}, expect=201)

    editor = township.feed(township.admin)
    article = wait_for(
        lambda: _created(
            editor,
            "/api/v1/news",
            {"title": "关于冬季安全用电的通知", "category": "notice", "body": "请注意用电安全。"},
        ),
        TIMEOUT,
    )
    editor.post(f"/api/v1/news/{article['id']}/submit", {})
    editor.post(f"/api/v1/news/{article['id']}/publish", {})
    reader = township.feed(resident)
    reader.get(f"/api/v1/news/{article['id']}")
    wait_for(
        lambda: _created(
            reader, f"/api/v1/news/{article['id']}/comments", {"text": "收到，谢谢。"}
        ),
        TIMEOUT,
    )
    post = editor.post(
        "/api/v1/posts",
        {"text": "今天组织党员清扫村道。", "tag": "activity", "village_id": township.village_id},
        expect=201,
    )
    editor.put(f"/api/v1/posts/{post['id']}/like", {})


def _created(api: Api, path: str, body: dict) -> dict | None:
    """POST once; None while the service does not know the person yet (their account event is
    still on its way), so that ``wait_for`` tries again."""
    answer = api.http.post(api.base + path, json=body, timeout=15)
    if answer.status_code in (401, 403):
        return None
    assert answer.status_code == 201, f"{path}: {answer.status_code} {answer.text[:500]}"
    return answer.json()


@pytest.fixture(scope="module")
def scrape(start_system) -> Iterator[Scrape]:
    """Every service running, a short journey through them, then every process scraped."""
    with start_system("metrics", env={"feed": {"VIEW_FLUSH_VIEWS": "1"}}) as system:
        _journey(build_township(system, tag="metrics"))
        wanted = {
            ("scoring", "worker"): "points_awarded_total{",
            ("notify", "worker"): "notifications_sent_total{",
            ("dispatch", "scheduler"): "scheduler_last_run_timestamp_seconds{",
            ("dispatch", "web"): 'issue_ratings_by_village{category="road_traffic"',
            ("feed", "web"): "feed_news_views_total{",
        }
        for (service, kind), sample in wanted.items():
            wait_for(
                lambda s=service, k=kind, w=sample: w in system.metrics_text(s, k),
                timeout=TIMEOUT,
            )
        yield Scrape(
            {
                (name, kind): system.metrics_text(name, kind)
                for name in system.specs
                for kind in system.processes(name)
            }
        )


def test_every_metric_a_dashboard_queries_is_exported_by_a_running_service(scrape: Scrape):
    missing = {
        where: sorted(name for e in exprs for name in metric_names(e) if not scrape.exports(name))
        for where, exprs in dashboard_queries().items()
    }
    assert not {k: v for k, v in missing.items() if v}


def test_every_metric_an_alert_watches_is_exported_by_a_running_service(scrape: Scrape):
    missing = {
        where: sorted(name for e in exprs for name in metric_names(e) if not scrape.exports(name))
        for where, exprs in alert_queries().items()
    }
    assert not {k: v for k, v in missing.items() if v}


def test_workers_serve_their_own_series_and_the_web_does_not_count_them_again(scrape: Scrape):
    for spec in SERVICES:
        worker = scrape.texts[(spec.name, "worker")]
        web = scrape.texts[(spec.name, "web")]
        assert f'events_consumed_total{{outcome="processed",service="{spec.name}"' in worker
        assert "broker_connected{" in worker and "dlq_messages{" in worker
        # The web shows its requests and the outbox it reads at scrape time, not the worker's
        # consumption: Prometheus adds web and worker up itself.
        assert "events_consumed_total" not in web
        assert "http_requests_total{" in web and "outbox_oldest_pending_seconds{" in web
        assert "http_requests_total" not in worker
    scheduler = scrape.texts[("dispatch", "scheduler")]
    assert 'scheduler_runs_total{outcome="ok",service="dispatch"}' in scheduler


def test_the_township_figures_match_what_happened(scrape: Scrape):
    dispatch = scrape.texts[("dispatch", "web")]
    village = "沙口集村-metrics"
    assert (
        f'issues_by_village{{category="road_traffic",service="dispatch",state="closed",'
        f'village="{village}"}} 1.0'
    ) in dispatch
    assert (
        f'issue_ratings_by_village{{category="road_traffic",satisfied="yes",service="dispatch",'
        f'village="{village}"}} 1.0'
    ) in dispatch
    assert 'issues_reported_total{category="road_traffic"} 1.0' in scrape.texts[("intake", "web")]
