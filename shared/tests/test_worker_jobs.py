"""A service's timers in its worker (``PeriodicJob``): run at start and again, surviving a bug."""

from __future__ import annotations

import threading

from shared.db import Database
from shared.settings import ServiceSettings
from shared.testing import wait_for
from shared.tests.conftest import Broker, running
from shared.worker import PeriodicJob, run_worker


def test_a_periodic_job_runs_at_start_and_again_even_after_it_failed(
    db: Database, broker: Broker, service: str
) -> None:
    calls: list[int] = []

    def flaky(_db: Database) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("a bug on the first run")

    settings = ServiceSettings(service_name=service, rabbitmq_url=broker.url)
    job = PeriodicJob("flaky", 0.05, flaky)

    def work(stop: threading.Event) -> None:
        run_worker(settings, db, None, relay=False, stop=stop, jobs=[job])

    with running(work):
        wait_for(lambda: len(calls) >= 3)
