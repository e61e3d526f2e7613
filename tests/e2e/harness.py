"""The whole system as real processes, for end-to-end tests over HTTP.

Every service in ``SERVICES`` gets its own fresh PostgreSQL database (a copy of the migrated
template), its own folder under the test's tmp (var dir with its gunicorn control socket, media,
Prometheus multiprocess folders: one for the web, one per worker and scheduler, which serve their
own /metrics on a free ``METRICS_PORT``, see ``metrics_url``; logs) and a free port; all of them
share one fresh RabbitMQ vhost.
Each process is the real command line (``python -m <service> web|worker|scheduler``) in a session
of its own, so that killing it takes its gunicorn workers too and nothing outlives the test.

With ``copies=2`` every worker and scheduler runs twice, as a deployment that scales them out
does: the second copy of dispatch's worker is the process ``"worker#2"`` (its own metrics folder
and port, its own logs); ``"worker"`` is always the first copy. ``processes(service)`` names
them all, and ``kill``/``start``/``metrics_url`` take those names.

Adding a service (feed, notify) is one line in ``SERVICES``::

    ServiceSpec("feed"),                                      # web + worker
    ServiceSpec("dispatch", processes=("web", "worker", "scheduler"), env={...}),

Example::

    harness = Harness(tmp, make_database, amqp_url, jwt_keys)
    harness.start_all()
    requests.get(harness.url("intake") + "/readyz")
    harness.kill("dispatch", "worker")          # SIGKILL
    harness.start("dispatch", "worker")         # back, waits until it consumes again
    harness.stop_all()                          # SIGTERM, then SIGKILL; no orphans

    Harness(tmp, make_database, amqp_url, jwt_keys, copies=2)   # two of each worker/scheduler
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import requests
import sqlalchemy as sa

from shared.auth import STAFF_ROLES
from shared.testing import wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
READY_TIMEOUT = 60.0
PASSED_ON = frozenset({"PATH", "HOME", "USER", "LANG", "TMPDIR", "LD_LIBRARY_PATH", "TZ"})
STOP_TIMEOUT = 15.0
# Processes without a web server that serve their own /metrics on METRICS_PORT; with
# ``copies`` > 1 these are the ones that run several times.
METRICS_PORT_PROCESSES = frozenset({"worker", "scheduler"})
COPY_MARK = "#"


def kind_of(process: str) -> str:
    """The command of a process name: ``"worker#2"`` (second copy) runs ``worker``."""
    return process.split(COPY_MARK, 1)[0]


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the system: its processes and the settings it needs beyond the common ones.

    ``consumes``: the worker consumes ``<name>.events`` (so ``<name> declare`` makes the queue
    and the worker counts as ready once it has a consumer on it).
    """

    name: str
    processes: tuple[str, ...] = ("web", "worker")
    env: Mapping[str, str] = field(default_factory=dict)
    consumes: bool = True


# The one table of what runs. Settings every service reads (database, broker, keys, logging,
# retries) are set by the harness; a service's own go here.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "intake",
        env={
            "WECHAT_MODE": "dev",
            # A resident sends 50 reports in one test; the real limits are per hour.
            "RATE_LIMIT_REPORTS": "10000 per hour",
            "RATE_LIMIT_UPLOADS": "10000 per hour",
            "RATE_LIMIT_LOGIN": "10000 per minute",
            "RATE_LIMIT_LOGIN_IP": "10000 per minute",
            "RATE_LIMIT_WECHAT_LOGIN_IP": "10000 per minute",
        },
    ),
    ServiceSpec(
        "dispatch",
        processes=("web", "worker", "scheduler"),
        env={
            "SCHEDULER_INTERVAL_SECONDS": "1",
            # An overdue item climbs one level 7 s after its deadline instead of a day, so a
            # journey sees the whole ladder (tests give the deadline, a few seconds ahead).
            "OVERDUE_GRACE_HOURS": "0.002",
            # Every closed item waits for the supervisors' callback (回头看), not a 10 % sample:
            # a journey's item is certainly on their list.
            "CALLBACK_SAMPLE_SHARE": "1",
        },
    ),
    # Web + worker; its worker consumes scoring.events (accounts, villages, the issue steps).
    ServiceSpec("scoring"),
    # Web + worker; its worker turns every step into inbox rows (no channel switched on here).
    ServiceSpec("notify"),
    # Web + worker; its worker consumes feed.events (accounts, villages, the monthly board).
    ServiceSpec("feed"),
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class ProcessDied(AssertionError):
    """A process of the system exited while the test needed it."""


@dataclass
class Proc:
    service: str
    kind: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, signum: int) -> None:
        """The whole session: a gunicorn master and its workers."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


class Harness:
    """Starts, watches, kills and stops the processes of every service in ``specs``."""

    def __init__(
        self,
        folder: Path,
        database: Callable[[str], str],
        amqp_url: str,
        jwt_keys: tuple[Path, Path],
        specs: Iterable[ServiceSpec] = SERVICES,
        copies: int = 1,
    ) -> None:
        assert copies >= 1, "at least one copy of each process"
        self.folder = folder
        self.amqp_url = amqp_url
        self.specs = {spec.name: spec for spec in specs}
        self.copies = copies
        self.private_key, self.public_key = jwt_keys
        self._ports_given: set[int] = set()
        self.ports = {name: self._free_port() for name in self.specs}
        # Worker-type processes serve their own /metrics (METRICS_PORT) from their own folder.
        self.metrics_ports = {
            (name, process): self._free_port()
            for name in self.specs
            for process in self.processes(name)
            if kind_of(process) in METRICS_PORT_PROCESSES
        }
        self.database_urls = {name: database(name) for name in self.specs}
        self.procs: dict[tuple[str, str], Proc] = {}
        self.runs: dict[tuple[str, str], int] = {}
        self._engines: dict[str, sa.Engine] = {}

    # --- what tests read -----------------------------------------------------------------------

    def _free_port(self) -> int:
        """A free port this harness has not handed out yet."""
        for _ in range(100):
            port = free_port()
            if port not in self._ports_given:
                self._ports_given.add(port)
                return port
        raise AssertionError("no free port")

    def processes(self, service: str) -> list[str]:
        """The names of the service's processes: ``web``, ``worker``, ``worker#2``..."""
        names = []
        for kind in self.specs[service].processes:
            names.append(kind)
            if kind in METRICS_PORT_PROCESSES:
                names.extend(f"{kind}{COPY_MARK}{n}" for n in range(2, self.copies + 1))
        return names

    def url(self, service: str) -> str:
        """Base URL of the service's web process, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.ports[service]}"

    def metrics_url(self, service: str, kind: str = "web") -> str:
        """Where Prometheus would scrape that process: the web's ``/metrics``, or the worker's
        (scheduler's) own port."""
        if kind == "web":
            return f"{self.url(service)}/metrics"
        return f"http://127.0.0.1:{self.metrics_ports[(service, kind)]}/metrics"

    def metrics_text(self, service: str, kind: str = "web") -> str:
        """One scrape of that process's Prometheus text."""
        answer = requests.get(self.metrics_url(service, kind), timeout=10)
        assert answer.status_code == 200, f"{service} {kind} /metrics: {answer.status_code}"
        return answer.text

    def database_url(self, service: str) -> str:
        return self.database_urls[service]

    def engine(self, service: str) -> sa.Engine:
        """An engine on the service's database, for assertions the HTTP API does not answer."""
        if service not in self._engines:
            self._engines[service] = sa.create_engine(
                self.database_urls[service], poolclass=sa.pool.NullPool
            )
        return self._engines[service]

    def scalar(self, service: str, sql: str, **params: Any) -> Any:
        with self.engine(service).connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()

    def rows(self, service: str, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine(service).connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    # --- environment ---------------------------------------------------------------------------

    def service_dir(self, service: str) -> Path:
        return self.folder / service

    def env(self, service: str, kind: str | None = None) -> dict[str, str]:
        """The environment of one process (``kind``) or one-shot command (None) of ``service``."""
        base = self.service_dir(service)
        copied = kind is not None and kind_of(kind) in METRICS_PORT_PROCESSES
        metrics = f"metrics-{kind.replace(COPY_MARK, '-')}" if copied else "metrics"
        # Only the basics of the caller's environment: a setting in the developer's shell
        # (DATABASE_URL, MEDIA_S3_BUCKET, APP_ENV...) must not reach the system under test.
        env = {k: v for k, v in os.environ.items() if k in PASSED_ON or k.startswith("LC_")}
        env.update(
            {
                "PYTHONPATH": f"{ROOT}:{ROOT / 'services' / service}",
                "PYTHONUNBUFFERED": "1",
                "APP_ENV": "test",
                "PORT": str(self.ports[service]),
                "DATABASE_URL": self.database_urls[service],
                "RABBITMQ_URL": self.amqp_url,
                # Also where the gunicorn master's control socket goes (var/run/<service>.ctl):
                # one per service, as gunicorn 27 needs.
                "SERVICE365_VAR_DIR": str(base / "var"),
                "PROMETHEUS_MULTIPROC_DIR": str(base / metrics),
                "MEDIA_DIR": str(base / "media"),
                "JWT_PUBLIC_KEY_FILE": str(self.public_key),
                "JWT_PRIVATE_KEY_FILE": str(self.private_key),
                "LOG_FORMAT": "text",
                "LOG_LEVEL": "INFO",
                # One gunicorn worker per web: nine processes share two cores here, and start-up
                # is most of an e2e test's time (several workers: shared/tests/test_metrics_*).
                "WEB_CONCURRENCY": "1",
                "GUNICORN_GRACEFUL_TIMEOUT": "5",
                "RELAY_POLL_SECONDS": "0.1",
                "CONSUMER_RETRY_DELAYS_MS": json.dumps([100, 300, 1000, 2000]),
                "CONSUMER_MAX_ATTEMPTS": "8",
            }
        )
        if (service, kind) in self.metrics_ports:
            env["METRICS_PORT"] = str(self.metrics_ports[(service, kind)])
            env["METRICS_HOST"] = "127.0.0.1"
        env.update(self.specs[service].env)
        for folder in ("var", metrics, "media", "logs"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        return env

    def command(self, service: str, *args: str, stdin: str | None = None, timeout: float = 60):
        """Run a one-shot command (``migrate``, ``declare``, ``create-user``...) and return it."""
        result = subprocess.run(
            [PYTHON, "-m", service, *args],
            env=self.env(service),
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{service} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    # --- processes -----------------------------------------------------------------------------

    def start_all(self) -> None:
        """Start every process and wait until each is ready.

        Each consuming service's ``declare`` runs first (as ``make run`` does), so that its
        queues and bindings exist before anything publishes; the web processes, which consume
        nothing, start meanwhile.
        """
        declares = [
            subprocess.Popen(
                [PYTHON, "-m", name, "declare"],
                env=self.env(name),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name, spec in self.specs.items()
            if spec.consumes
        ]
        order = [(n, k) for n in self.specs for k in self.processes(n)]
        for name, kind in order:
            if kind == "web":
                self.start(name, kind, wait=False)
        try:
            for proc in declares:
                output, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{output}"
        finally:
            for proc in declares:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for name, kind in order:
            if kind != "web":
                self.start(name, kind, wait=False)
        for name, kind in order:
            try:
                self.wait_ready(name, kind)
            except ProcessDied as died:
                # The free port was taken between our look and the bind (gunicorn's, or the
                # metrics server's): once more on another.
                binds = kind == "web" or (name, kind) in self.metrics_ports
                if not binds or "in use" not in str(died):
                    raise
                if kind == "web":
                    self.ports[name] = self._free_port()
                else:
                    self.metrics_ports[(name, kind)] = self._free_port()
                self.start(name, kind)

    def start(self, service: str, kind: str, *, wait: bool = True) -> Proc:
        """Start (or start again) one process (``kind``: a name of ``processes``, e.g.
        ``worker`` or ``worker#2``); with ``wait``, return once it is ready."""
        key = (service, kind)
        old = self.procs.get(key)
        assert old is None or not old.alive, f"{service} {kind} is already running"
        run = self.runs.get(key, 0) + 1
        self.runs[key] = run
        logs = self.service_dir(service) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        name = kind.replace(COPY_MARK, "-")
        stdout, stderr = logs / f"{name}.{run}.out", logs / f"{name}.{run}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            popen = subprocess.Popen(
                [PYTHON, "-m", service, kind_of(kind)],
                env=self.env(service, kind),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        proc = Proc(service, kind, popen, stdout, stderr)
        self.procs[key] = proc
        if wait:
            self.wait_ready(service, kind)
        return proc

    def wait_ready(self, service: str, kind: str, timeout: float = READY_TIMEOUT) -> None:
        """web: ``/readyz`` answers 200; worker: it consumes its queue (with as many consumers
        as worker copies run); others: still alive."""
        proc = self.procs[(service, kind)]

        def ready() -> bool:
            self._require_alive(proc)
            if kind == "web":
                return self._readyz(service)
            if kind_of(kind) == "worker" and self.specs[service].consumes:
                return self.consumers(f"{service}.events") >= self._workers_alive(service)
            return True

        try:
            wait_for(ready, timeout=timeout, interval=0.1)
        except ProcessDied:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{service} {kind} not ready: {exc}\n{self.report()}") from None

    def _readyz(self, service: str) -> bool:
        try:
            return requests.get(f"{self.url(service)}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _require_alive(self, proc: Proc) -> None:
        if not proc.alive:
            raise ProcessDied(
                f"{proc.service} {proc.kind} exited with {proc.popen.returncode}\n"
                f"--- stdout\n{tail(proc.stdout)}\n--- stderr\n{tail(proc.stderr)}"
            )

    def queue_state(self, queue: str) -> tuple[int, int]:
        """``(messages ready, consumers)`` of ``queue`` on the broker; (0, 0) when it is absent."""
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            try:
                method = channel.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:
                return 0, 0
            return method.message_count, method.consumer_count
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def _workers_alive(self, service: str) -> int:
        return sum(
            1
            for (name, kind), proc in self.procs.items()
            if name == service and kind_of(kind) == "worker" and proc.alive
        )

    def consumers(self, queue: str) -> int:
        return self.queue_state(queue)[1]

    def message_count(self, queue: str) -> int:
        return self.queue_state(queue)[0]

    def kill(self, service: str, kind: str, signum: int = signal.SIGKILL) -> None:
        """Kill one process (default SIGKILL: no clean-up at all) and wait until it is gone."""
        proc = self.procs[(service, kind)]
        proc.signal_group(signum)
        assert proc.wait(STOP_TIMEOUT), f"{service} {kind} survived signal {signum}"
        if kind_of(kind) == "worker" and self.specs[service].consumes:
            # The broker sees the dead TCP connection at once; wait so that a later "ready"
            # means the new worker's consumer, not the old one's ghost.
            alive = self._workers_alive(service)
            wait_for(lambda: self.consumers(f"{service}.events") == alive, timeout=10)

    def restart(self, service: str, kind: str) -> Proc:
        self.kill(service, kind)
        return self.start(service, kind)

    def assert_alive(self) -> None:
        """Fail with the logs of any process that died although nobody killed it."""
        for proc in self.procs.values():
            self._require_alive(proc)

    def stop_all(self) -> None:
        """SIGTERM every process group, wait, then SIGKILL what is left: no orphans."""
        running = [p for p in self.procs.values() if p.alive]
        for proc in running:
            proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in running:
            if not proc.wait(max(0.1, deadline - time.monotonic())):
                proc.signal_group(signal.SIGKILL)
                proc.wait(5)
        for proc in self.procs.values():
            # The master is gone; reap anything left in its session (a gunicorn worker that
            # lost its master), then the session is empty.
            proc.signal_group(signal.SIGKILL)
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    def report(self, lines: int = 30) -> str:
        """The tail of every process's stdout and stderr, for a failed test."""
        parts = []
        for (service, kind), proc in self.procs.items():
            state = "running" if proc.alive else f"exited {proc.popen.returncode}"
            parts.append(
                f"===== {service} {kind} (pid {proc.popen.pid}, {state}) =====\n"
                f"--- {proc.stdout.name}\n{tail(proc.stdout, lines)}\n"
                f"--- {proc.stderr.name}\n{tail(proc.stderr, lines)}"
            )
        return "\n".join(parts)


# --- HTTP clients --------------------------------------------------------------------------------


class Api:
    """A small JSON client for one service, signed in as one person (or nobody)."""

    def __init__(self, base_url: str, token: str | None = None, who: str = "anonymous") -> None:
        self.base = base_url.rstrip("/")
        self.who = who
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.token = token

    def on(self, base_url: str) -> Api:
        """The same person, talking to another service."""
        return Api(base_url, self.token, self.who)

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = 200, **kwargs) -> Any:
        url = self.base + path
        kwargs.setdefault("timeout", 15)
        response = self.http.request(method, url, **kwargs)
        wanted = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in wanted, (
            f"{self.who}: {method} {path} -> {response.status_code} (wanted {wanted}): "
            f"{response.text[:1000]}"
        )
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return response.json()
        return response

    def get(self, path: str, expect: int | tuple[int, ...] = 200, **kwargs) -> Any:
        return self.call("GET", path, expect, **kwargs)

    def post(self, path: str, json: Any = None, expect: int | tuple[int, ...] = 200, **kwargs):
        return self.call("POST", path, expect, json=json, **kwargs)

    def patch(self, path: str, json: Any = None, expect: int | tuple[int, ...] = 200, **kwargs):
        return self.call("PATCH", path, expect, json=json, **kwargs)

    def put(self, path: str, json: Any = None, expect: int | tuple[int, ...] = 200, **kwargs):
        return self.call("PUT", path, expect, json=json, **kwargs)

    def pages(self, path: str, limit: int = 50, **params: Any) -> list[dict]:
        """Every item of a cursor-paginated list (``items`` and ``next_cursor``)."""
        items: list[dict] = []
        cursor = None
        for _ in range(10_000):
            query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
            page = self.get(path, params=query)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return items
        raise AssertionError(f"{path}: the cursor never ended")


def resident_login(intake_url: str, code: str) -> Api:
    """A resident, signed in through the dev-mode WeChat login (the code is the openid)."""
    answer = requests.post(f"{intake_url}/api/v1/auth/wechat", json={"code": code}, timeout=15)
    assert answer.status_code == 200, f"wechat login {code}: {answer.status_code} {answer.text}"
    body = answer.json()
    api = Api(intake_url, body["access_token"], who=f"resident {code}")
    api.user = body["user"]  # type: ignore[attr-defined]
    return api


def staff_login(intake_url: str, username: str, password: str) -> Api:
    """A staff member, signed in with username and password at intake (the JWT issuer)."""
    answer = requests.post(
        f"{intake_url}/api/v1/auth/login",
        json={"username": username, "password": password},
        timeout=15,
    )
    assert answer.status_code == 200, f"login {username}: {answer.status_code} {answer.text}"
    body = answer.json()
    api = Api(intake_url, body["access_token"], who=username)
    api.user = body["user"]  # type: ignore[attr-defined]
    return api


# --- the township: an admin, a village with its area leader, a grid with its worker ---------------

PASSWORD = "e2e-Pass-365"


@dataclass
class Township:
    """Who is who in the small township every e2e test starts from."""

    harness: Harness
    admin: Api  # on intake; ``.on(dispatch_url)`` for dispatch
    village_id: str
    grid_id: str
    worker: Api
    grid_leader: Api
    area_leader: Api

    def intake(self, api: Api) -> Api:
        return api.on(self.harness.url("intake"))

    def dispatch(self, api: Api) -> Api:
        return api.on(self.harness.url("dispatch"))

    def scoring(self, api: Api) -> Api:
        return api.on(self.harness.url("scoring"))

    def notify(self, api: Api) -> Api:
        return api.on(self.harness.url("notify"))

    def feed(self, api: Api) -> Api:
        return api.on(self.harness.url("feed"))

    def resident(self, code: str) -> Api:
        return resident_login(self.harness.url("intake"), code)

    def account(self, username: str, name: str, *roles: str) -> Api:
        """One more account of the village, made by the admin in intake, signed in once every
        service that keeps people (dispatch's staff list for staff roles) knows it."""
        body = {
            "username": username,
            "name": name,
            "roles": list(roles),
            "village_id": self.village_id,
            "password": PASSWORD,
        }
        user_id = self.admin.post("/api/v1/accounts", body, expect=201)["id"]
        if set(roles) & STAFF_ROLES:
            staff = self.dispatch(self.admin)
            wait_for(lambda: user_id in {s["id"] for s in staff.pages("/api/v1/staff")}, 20)
        return staff_login(self.harness.url("intake"), username, PASSWORD)


def build_township(harness: Harness, tag: str = "e2e") -> Township:
    """Set the township up the way an operator does, over HTTP after one CLI command.

    The admin comes from ``intake create-user``; the village is made in dispatch and reaches
    intake as ``village.upserted``; the staff accounts are made in intake and reach dispatch as
    ``account.upserted``; then the village gets its area leader and a grid its leader and worker.
    """
    intake_url, dispatch_url = harness.url("intake"), harness.url("dispatch")
    harness.command(
        "intake",
        "create-user",
        "--username",
        f"{tag}-admin",
        "--role",
        "admin",
        "--name",
        "乡网格总管理员",
        stdin=PASSWORD + "\n",
    )
    admin = staff_login(intake_url, f"{tag}-admin", PASSWORD)
    admin_d = admin.on(dispatch_url)

    village = admin_d.post(
        "/api/v1/villages", {"name": f"沙口集村-{tag}", "code": "V01"}, expect=201
    )
    village_id = village["id"]
    wait_for(
        lambda: any(v["id"] == village_id for v in Api(intake_url).get("/api/v1/villages")),
        timeout=20,
    )

    def account(username: str, name: str, role: str) -> str:
        body = {
            "username": f"{tag}-{username}",
            "name": name,
            "roles": [role],
            "village_id": village_id,
            "password": PASSWORD,
        }
        return admin.post("/api/v1/accounts", body, expect=201)["id"]

    worker_id = account("worker", "王建国", "grid_worker")
    leader_id = account("leader", "李秀英", "grid_leader")
    area_id = account("area", "赵志刚", "area_leader")

    def staff_known() -> bool:
        known = {s["id"] for s in admin_d.pages("/api/v1/staff")}
        return {worker_id, leader_id, area_id} <= known

    wait_for(staff_known, timeout=20)
    admin_d.patch(f"/api/v1/villages/{village_id}", {"area_leader_id": area_id})
    grid = admin_d.post(
        "/api/v1/grids",
        {
            "village_id": village_id,
            "name": "第一网格",
            "code": "G01",
            "leader_id": leader_id,
            "member_ids": [worker_id],
        },
        expect=201,
    )
    return Township(
        harness=harness,
        admin=admin,
        village_id=village_id,
        grid_id=grid["id"],
        worker=staff_login(intake_url, f"{tag}-worker", PASSWORD),
        grid_leader=staff_login(intake_url, f"{tag}-leader", PASSWORD),
        area_leader=staff_login(intake_url, f"{tag}-area", PASSWORD),
    )
