"""/metrics adds up every gunicorn worker of a service, also after one is killed and respawned;
counts of processes that are gone stay in the totals, their live gauges do not.

A real gunicorn runs the tiny service with the shared conf and 2 workers. To be sure both workers
answer, one request is held inside a worker (it writes ``<token>.held`` and waits for
``<token>.release``); while it is held every other request can only reach the other worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.cli import gunicorn_argv
from shared.settings import PROJECT_ROOT
from shared.testing import wait_for
from shared.tests.tinyapp import TinySettings, make_keys

ROUTE = "/api/v1/things/<int:thing_id>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gunicorn:
    process: subprocess.Popen
    base_url: str
    hold_dir: Path
    log_path: Path

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def get(self, path: str, **kwargs) -> requests.Response:
        # A new connection each time (requests.get opens its own session), closed after it.
        return requests.get(
            self.base_url + path, headers={"Connection": "close"}, timeout=30, **kwargs
        )

    def requests_total(self, route: str) -> float:
        return sum(
            sample.value
            for sample in self.samples("http_requests_total")
            if sample.labels.get("route") == route
        )

    def samples(self, name: str) -> list:
        text = self.get("/metrics").text
        return [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

    def serve_with_both_workers(self, count: int) -> set[int]:
        """Send ``count`` requests to ROUTE so that both workers answer; return their pids."""
        token = uuid.uuid4().hex
        held: dict[str, requests.Response] = {}
        holder = threading.Thread(
            target=lambda: held.setdefault(
                "r", self.get("/api/v1/things/1", params={"hold": token})
            )
        )
        holder.start()
        held_file = self.hold_dir / f"{token}.held"
        wait_for(lambda: held_file.exists() and held_file.read_text(), timeout=15)
        busy_pid = int(held_file.read_text())
        try:
            others = {self.get(f"/api/v1/things/{n}").json()["pid"] for n in range(2, count + 1)}
        finally:
            (self.hold_dir / f"{token}.release").touch()
            holder.join(timeout=30)
        assert held["r"].status_code == 200
        assert held["r"].json()["pid"] == busy_pid
        assert busy_pid not in others
        return {busy_pid} | others


@pytest.fixture
def gunicorn(tmp_path, postgres_server, monkeypatch) -> Iterator[Gunicorn]:
    metrics_dir = tmp_path / "metrics"
    hold_dir = tmp_path / "hold"
    metrics_dir.mkdir()
    hold_dir.mkdir()
    _private, public = make_keys(tmp_path)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "GUNICORN"))} | {
        "PYTHONPATH": str(PROJECT_ROOT),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SERVICE365_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": postgres_server.create_database("gunicorn"),
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{_free_port()}/%2F",
        "JWT_PUBLIC_KEY_FILE": str(public),
        "TINY_HOLD_DIR": str(hold_dir),
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "LOG_FORMAT": "text",
    }
    _leave_files_of_a_dead_process(env)
    # The same command line `python -m <service> web` execs, built by shared.cli.
    for name in ("SERVICE365_VAR_DIR", "WEB_CONCURRENCY"):
        monkeypatch.setenv(name, env[name])
    argv = gunicorn_argv("tiny", TinySettings(port=port), "shared.tests.tinyapp:create_app()")
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Gunicorn(process, f"http://127.0.0.1:{port}", hold_dir, log_path)
    try:
        wait_for(lambda: _answers(server) and len(server.worker_pids()) == 2, timeout=30)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(server: Gunicorn) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"gunicorn exited:\n{server.log_tail()}")
    try:
        return server.get("/healthz").status_code == 200
    except requests.ConnectionError:
        return False


DEAD_COUNTS = 1000


def _leave_files_of_a_dead_process(env: dict[str, str]) -> None:
    """A process (a worker, an earlier web worker) counted 1000 requests, said it was connected
    to the broker, and died: its counts stay in the totals, its live gauge must not."""
    code = (
        "from shared.metrics import HTTP_REQUESTS as c, BROKER_CONNECTED as g; "
        f"c.labels('tiny', 'GET', {ROUTE!r}, '200').inc({DEAD_COUNTS}); "
        "g.labels('tiny', 'consumer').set(1)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True)
    folder = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert list(folder.glob("counter_*.db")) and list(folder.glob("gauge_livemax_*.db"))


def test_request_counts_add_up_across_both_workers(gunicorn):
    pids = gunicorn.serve_with_both_workers(10)

    assert pids == gunicorn.worker_pids()
    assert len(pids) == 2
    assert gunicorn.requests_total(ROUTE) == DEAD_COUNTS + 10


def test_a_dead_process_keeps_its_counts_but_not_its_live_gauges(gunicorn):
    assert gunicorn.requests_total(ROUTE) == DEAD_COUNTS
    assert [s.value for s in gunicorn.samples("broker_connected")] == []
    folder = gunicorn.hold_dir.parent / "metrics"
    assert not list(folder.glob("gauge_livemax_*.db"))  # gunicorn's on_starting removed it


def test_a_worker_process_starting_beside_the_web_does_not_make_its_totals_go_down(
    gunicorn, tmp_path
):
    victim = next(iter(gunicorn.serve_with_both_workers(10)))
    os.kill(victim, signal.SIGKILL)  # its counter file now belongs to a dead process
    wait_for(lambda: victim not in gunicorn.worker_pids(), timeout=30)
    before = gunicorn.requests_total(ROUTE)
    # The service's worker starts (as after a crash under `make run`) in the same folder.
    code = (
        "import threading\n"
        "from shared.db import Database\n"
        "from shared.settings import ServiceSettings\n"
        "from shared.tests.conftest import metadata\n"
        "from shared.worker import run_worker\n"
        "stop = threading.Event(); stop.set()\n"
        "db = Database('sqlite://', metadata=metadata, producer='tiny')\n"
        "run_worker(ServiceSettings(service_name='tiny'), db, None, stop=stop)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, check=True)
    assert gunicorn.requests_total(ROUTE) == before == DEAD_COUNTS + 10


def test_counts_survive_a_worker_killed_with_sigkill_and_keep_adding_up(gunicorn):
    first = gunicorn.serve_with_both_workers(10)
    victim = next(iter(first))

    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in gunicorn.worker_pids() and len(gunicorn.worker_pids()) == 2,
        timeout=30,
    )
    assert gunicorn.requests_total(ROUTE) == DEAD_COUNTS + 10

    second = gunicorn.serve_with_both_workers(6)

    assert victim not in second
    assert second == gunicorn.worker_pids()
    assert gunicorn.requests_total(ROUTE) == DEAD_COUNTS + 16
