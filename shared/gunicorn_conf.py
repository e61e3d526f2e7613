"""gunicorn settings shared by every service's web process (``python -m <service> web``).

The command line adds what differs per service: ``--bind``, ``--workers``, ``--name`` and a
``--control-socket`` of its own. This file holds what is the same: metrics hygiene for
prometheus-client's multiprocess mode, timeouts and logging. Engines and pika connections are
built lazily in each worker after the fork (``shared.db.Database``), so nothing is preloaded here.
"""

from __future__ import annotations

import json
import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# WEB_THREADS > 1: gthread workers, whose threads overlap one request's database round trips
# with another's Python; 1: plain sync workers.
threads = int(os.environ.get("WEB_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
# A photo upload from a slow village connection may take a while; a stuck worker still dies.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM (make down, docker stop) let requests in flight finish before workers are killed.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
# Requests are counted and timed in /metrics and logged by the app as JSON with a correlation
# id; a second, unstructured access log would only double the volume. ACCESS_LOG=1 turns on a
# JSON access log on stdout for operators who want one.
accesslog = "-" if os.environ.get("ACCESS_LOG", "").lower() in ("1", "true", "yes") else None
access_log_format = json.dumps(
    {
        "time": "%(t)s",
        "remote": "%(h)s",
        "method": "%(m)s",
        "path": "%(U)s",
        "status": "%(s)s",
        "bytes": "%(B)s",
        "duration_us": "%(D)s",
        "correlation_id": "%({x-correlation-id}o)s",
        "user_agent": "%(a)s",
    }
)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server) -> None:
    """Remove metric files of processes that are gone (a crash or an earlier run).

    Only dead pids' files go: the service's worker process writes into the same folder and may
    already be running.
    """
    from shared.metrics import clean_stale_files

    removed = clean_stale_files()
    if removed:
        server.log.info("removed %d stale metrics files", removed)


def child_exit(server, worker) -> None:
    """A worker exited (or was killed): drop its live gauges; its counters keep adding up."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker) -> None:
    """Keep pika quiet in web workers: /readyz's broker probe reports a broker outage itself
    (503 with the reason); pika would add five ERROR lines with tracebacks per probe."""
    import logging

    logging.getLogger("pika").setLevel(logging.CRITICAL)
