"""Prometheus series of DESIGN.md, correct under gunicorn's several workers (multiprocess mode).

Each process *kind* of a service has its own folder in ``PROMETHEUS_MULTIPROC_DIR``: the web's
gunicorn workers share one (``var/metrics/<service>``) and the web's ``/metrics`` adds them up;
the ``worker`` (and dispatch's ``scheduler``, notify's ``stream``) write to their own
(``var/metrics/<service>-worker``) and serve them on their own port (``METRICS_PORT``, see
``serve_process_metrics``). Prometheus scrapes each endpoint, so nothing is counted twice.
Counter and histogram files of dead processes are kept, so a total never goes down while the
service lives. Only *live* gauges (``broker_connected``, ``queue_declare_conflict``) belong to a
process: at scrape time the files of dead processes are left out, and gunicorn's start hook (or
the worker at start) removes them (``clean_stale_files``).

Example (a worker)::

    stop_serving = serve_process_metrics(settings.metrics_port, settings.metrics_host)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["service", "method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["service", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS_PUBLISHED = Counter(
    "events_published_total", "Events confirmed by the broker", ["service", "type"]
)
EVENTS_CONSUMED = Counter(
    "events_consumed_total",
    "Events taken from the service's queue, by outcome",
    ["service", "type", "outcome"],
)
DLQ_MESSAGES = Gauge(
    "dlq_messages",
    "Messages waiting in the service's dead-letter queue",
    ["service"],
    multiprocess_mode="mostrecent",
)
QUEUE_MESSAGES = Gauge(
    "queue_messages",
    "Messages waiting in one of the service's queues (main, retry, dead-letter)",
    ["queue"],
    multiprocess_mode="mostrecent",
)
EVENTS_UNROUTED = Counter(
    "events_unrouted_total",
    "Events the broker returned because no queue was bound for them (kept pending)",
    ["service"],
)
RELAY_PUBLISH_FAILURES = Counter(
    "relay_publish_failures_total",
    "Events the relay tried to publish without a confirm (nack, timeout, lost connection)",
    ["service"],
)
BROKER_CONNECTED = Gauge(
    "broker_connected",
    "1 while the process (relay or consumer) holds an open connection to the broker",
    ["service", "process"],
    multiprocess_mode="livemax",
)
QUEUE_DECLARE_CONFLICT = Gauge(
    "queue_declare_conflict",
    "1 while the service's queues cannot be declared as configured (406 PRECONDITION_FAILED)",
    ["service"],
    multiprocess_mode="livemax",
)
CONSUMER_LAG = Histogram(
    "consumer_lag_seconds",
    "Time from an event's occurred_at to its handling by the consumer",
    ["service", "type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
)
EVENT_HANDLER_DURATION = Histogram(
    "event_handler_duration_seconds",
    "Time to apply one event (handler and its transaction)",
    ["service", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RETENTION_PURGED = Counter(
    "retention_purged_total",
    "Rows removed by the retention purge (sent outbox rows, processed-event rows)",
    ["service", "table"],
)

log = logging.getLogger(__name__)
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def _dead_live_gauge(path: Path) -> bool:
    match = _LIVE_GAUGE_FILE.match(path.name)
    if not match:
        return False
    pid = int(match.group(1))
    return pid != os.getpid() and not _alive(pid)


def clean_stale_files(directory: Path | None = None) -> int:
    """Remove the live-gauge files of processes that no longer run; return how many.

    Counter and histogram files are never removed: a dead process's counts are part of the
    service's totals (removing them would make ``http_requests_total`` go down). Called from
    gunicorn's ``on_starting`` hook only.
    """
    directory = directory or multiprocess_dir()
    if directory is None:
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in directory.glob("gauge_live*.db"):
        if _dead_live_gauge(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class _LiveProcessesCollector:
    """prometheus-client's multiprocess merge, leaving out live gauges of dead processes.

    Why: the worker is not a gunicorn child, so nobody calls ``mark_process_dead`` when it is
    killed; without this its ``broker_connected`` would read 1 until the next web restart.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self):
        files = [str(path) for path in self.directory.glob("*.db") if not _dead_live_gauge(path)]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge read when /metrics is scraped (e.g. ``outbox_pending`` counted in the database).

    ``read`` returns a number, or, when ``labels`` are named, rows of (label values, number)::

        ScrapeGauge("issues_open", "Open work items", read_open, labels=("state", "level"))
    """

    name: str
    doc: str
    read: Callable[[], Any]
    labels: Sequence[str] = ()


class ScrapeTimeGauges:
    """The service's scrape-time gauges, each with the ``service`` label first."""

    def __init__(self, gauges: Iterable[ScrapeGauge | tuple], service: str):
        self.gauges = [g if isinstance(g, ScrapeGauge) else ScrapeGauge(*g) for g in gauges]
        self.service = service

    def collect(self):
        for gauge in self.gauges:
            try:
                value = gauge.read()
            except Exception:  # noqa: BLE001 - one source down must not fail the scrape
                log.warning("scrape-time gauge %s could not be read", gauge.name, exc_info=True)
                continue
            if value is None:
                continue
            family = GaugeMetricFamily(gauge.name, gauge.doc, labels=["service", *gauge.labels])
            if gauge.labels:
                for label_values, number in value:
                    family.add_metric([self.service, *label_values], float(number))
            else:
                family.add_metric([self.service], float(value))
            yield family


def process_registry() -> CollectorRegistry:
    """What this process kind shows: its multiprocess folder's files (live gauges of live
    processes only), or the default registry when it runs without ``PROMETHEUS_MULTIPROC_DIR``."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_LiveProcessesCollector(directory))
    return registry


def serve_process_metrics(port: int, host: str = "0.0.0.0") -> Callable[[], None] | None:
    """Serve this process's series as Prometheus text on ``host:port`` from a daemon thread.

    For processes without a web server of their own (a service's ``worker``, dispatch's
    ``scheduler``): Prometheus scrapes them there, beside the web. Returns a function that
    stops the server, or None when ``port`` is 0 (not served). A port that cannot be bound
    stops the process with one line naming ``METRICS_PORT`` (exit 2)::

        stop = serve_process_metrics(9101)   # curl http://127.0.0.1:9101/metrics
        ...
        stop()
    """
    if not port:
        return None
    clean_stale_files()
    try:
        server, _thread = start_http_server(port, addr=host, registry=process_registry())
    except OSError as exc:
        print(
            f"配置错误 / invalid settings: METRICS_PORT: cannot serve metrics on {host}:{port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    log.info("metrics served on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop


def metrics_response(extra: ScrapeTimeGauges | None = None) -> Response:
    directory = multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        registry.register(_LiveProcessesCollector(directory))
    else:
        registry = CollectorRegistry() if extra else REGISTRY
        if extra:
            from prometheus_client import REGISTRY as default

            registry.register(_Delegate(default))
    if extra is not None:
        registry.register(extra)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _Delegate:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def init_http_metrics(app: Flask, service: str) -> None:
    """Count and time every request by route template (``/api/v1/issues/<uuid:issue_id>``)."""

    @app.before_request
    def _start_timer() -> None:
        g._metrics_started = time.perf_counter()

    @app.after_request
    def _record(response: Response) -> Response:
        started = g.pop("_metrics_started", None)
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        if route == "/metrics":
            return response
        HTTP_REQUESTS.labels(service, request.method, route, str(response.status_code)).inc()
        if started is not None:
            HTTP_DURATION.labels(service, route).observe(time.perf_counter() - started)
        return response
