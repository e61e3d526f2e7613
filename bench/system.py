"""What the HTTP sections start for themselves: throwaway databases and vhosts, real processes.

Every section that needs a running service starts its own (so ``make bench`` measures the same
thing on a fresh clone and never touches ``make up``'s data): ``Backends`` makes throwaway
PostgreSQL databases (a copy of a migrated template per service), SQLite files, vhosts on the
local RabbitMQ and a JWT key pair, and removes all of it in ``close()``; ``harness()`` starts
services as real processes with ``tests/e2e/harness.py``'s ``Harness``. Also here: the wrk runner
(``wrk``), a per-process RSS walk (``process_tree_rss``) and the RSS snapshots the memory
section reports (``RSS``).

Example::

    with Backends("bench_intake") as backends:
        system = backends.harness([ServiceSpec("intake", processes=("web",), consumes=False)])
        try:
            system.start_all()
            figures = wrk(system.url("intake") + "/healthz", seconds=2, connections=4)
        finally:
            system.stop_all()
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT, rss_mb

# The services' packages, as pytest's ``pythonpath`` has them (``python -m bench.run`` from the
# project root only has the root itself).
for _svc in ("intake", "dispatch", "scoring", "notify", "feed"):
    _path = str(ROOT / "services" / _svc)
    if _path not in sys.path:
        sys.path.append(_path)

from shared.testing import PostgresServer, RabbitServer, _local_rabbitmqctl  # noqa: E402
from tests.e2e.harness import SERVICES, Harness, ServiceSpec  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
LUA = ROOT / "bench" / "wrk"

# Limits a benchmark's residents would hit at once (the real ones are per hour and per person).
GENEROUS_LIMITS = {
    "RATE_LIMIT_REPORTS": "1000000 per hour",
    "RATE_LIMIT_UPLOADS": "1000000 per hour",
    "RATE_LIMIT_LOGIN": "1000000 per minute",
    "RATE_LIMIT_LOGIN_IP": "1000000 per minute",
    "RATE_LIMIT_WECHAT_LOGIN_IP": "1000000 per minute",
}
# As deployed: JSON logs at INFO, two gunicorn workers (this machine has two cores);
# BENCH_WEB_CONCURRENCY tries another number of workers, for ours and the reference alike.
DEPLOYED = {
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "WEB_CONCURRENCY": os.environ.get("BENCH_WEB_CONCURRENCY", "2"),
}

# label -> MiB, filled by the sections after their runs; ``bench/memory.py`` reports them.
RSS: dict[str, float] = {}


class Backends:
    """Throwaway databases, vhosts and keys on the local servers; ``close()`` removes them."""

    def __init__(self, prefix: str = "bench") -> None:
        self.prefix = prefix
        self.postgres = PostgresServer("127.0.0.1", 5432, "postgres")
        self.rabbit = RabbitServer("127.0.0.1", 5672, "guest", "guest", _local_rabbitmqctl)
        self.folder = Path(tempfile.mkdtemp(prefix=f"service365-{prefix}-"))
        self._templates: dict[str, str] = {}
        from shared.auth import ensure_keypair

        keys = self.folder / "keys"
        keys.mkdir()
        self.keys = (keys / "private.pem", keys / "public.pem")
        ensure_keypair(*self.keys)

    def database(self, service: str) -> str:
        """A new PostgreSQL database at the service's Alembic head (a copy of a template)."""
        from shared.migrations import upgrade

        template = self._templates.get(service)
        if template is None:
            url = self.postgres.create_database(f"{self.prefix}_{service}_tpl")
            upgrade(service, url)
            template = url.rsplit("/", 1)[1]
            self._templates[service] = template
        return self.postgres.create_database(f"{self.prefix}_{service}", template=template)

    def empty_database(self, name: str) -> str:
        return self.postgres.create_database(f"{self.prefix}_{name}")

    def sqlite(self, service: str) -> str:
        """A migrated SQLite file: the embedded default a service uses without DATABASE_URL."""
        from shared.migrations import upgrade

        url = f"sqlite:///{self.folder / f'{service}-{uuid.uuid4().hex[:6]}.db'}"
        upgrade(service, url)
        return url

    def vhost(self) -> str:
        return self.rabbit.create_vhost(self.prefix)

    def harness(
        self,
        specs: Iterable[ServiceSpec] = SERVICES,
        *,
        sqlite: Iterable[str] = (),
    ) -> Harness:
        """A ``Harness`` (not started) on fresh databases (SQLite for the services named)."""
        on_sqlite = set(sqlite)

        def database(service: str) -> str:
            return self.sqlite(service) if service in on_sqlite else self.database(service)

        folder = Path(tempfile.mkdtemp(prefix="system-", dir=self.folder))
        return Harness(folder, database, self.vhost(), self.keys, specs)

    def close(self) -> None:
        errors: list[str] = []
        for step in (self.postgres.drop_all, self.rabbit.delete_all):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - remove the rest anyway, then say so
                errors.append(f"{step.__qualname__}: {exc}")
        shutil.rmtree(self.folder, ignore_errors=True)
        if errors:
            print("bench clean-up: " + "; ".join(errors), file=sys.stderr)

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running(system: Harness) -> Iterator[Harness]:
    """Start every process of ``system``; stop them all however the block ends."""
    try:
        system.start_all()
        yield system
    except BaseException:
        # The last lines of each process, each cut short (a traceback in a JSON log line is long).
        lines = [line[:400] for line in system.report(8).splitlines()]
        print("\n".join(lines), file=sys.stderr)
        raise
    finally:
        system.stop_all()


def spec(name: str, processes: tuple[str, ...] = ("web",), **env: str) -> ServiceSpec:
    """A service of the harness as deployed (JSON logs, two web workers), ``env`` on top."""
    base = next((s for s in SERVICES if s.name == name), ServiceSpec(name))
    return ServiceSpec(
        name,
        processes=processes,
        env={**base.env, **DEPLOYED, **GENEROUS_LIMITS, **env},
        consumes="worker" in processes,
    )


# --- processes ------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of a process (every thread's ``children`` file)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError),
                open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f,
            ):
                found += [int(p) for p in f.read().split()]
    return found


def process_tree_rss(pid: int) -> list[tuple[int, float]]:
    """``(pid, RSS MiB)`` of a process and every descendant, the root first."""
    out: list[tuple[int, float]] = []
    stack = [pid]
    while stack:
        current = stack.pop(0)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            out.append((current, rss_mb(current)))
        stack += children(current)
    return out


def record_rss(system: Harness, label: str) -> dict[str, float]:
    """RSS of every gunicorn worker and worker/scheduler process of ``system`` into ``RSS``.

    A web's master (the session leader) only forks and watches: its workers are what serve, so
    they are recorded one by one (``<label> intake web worker 1``); other processes as they are.
    """
    taken: dict[str, float] = {}
    for (service, kind), proc in sorted(system.procs.items()):
        if not proc.alive:
            continue
        tree = process_tree_rss(proc.popen.pid)
        if kind in ("web", "stream") and len(tree) > 1:
            for n, (_pid, mb) in enumerate(tree[1:], 1):
                taken[f"{label}: {service} {kind} worker {n}"] = mb
        else:
            taken[f"{label}: {service} {kind}"] = max(mb for _pid, mb in tree)
    RSS.update(taken)
    return taken


# --- wrk ---------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx/3xx answers
    output: str


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()
    return float(number) * _UNITS[unit]


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    script: str | None = None,
    env: dict[str, str] | None = None,
    threads: int = 2,
) -> WrkResult:
    """Run wrk with ``--latency`` (and a Lua script from ``bench/wrk``); parse what it prints.

    The scripts' ``done()`` prints one ``JSON {...}`` line with exact percentiles and counts,
    preferred over the rounded text figures when present.
    """
    argv = [
        WRK,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script:
        argv += ["-s", str(LUA / script)]
    argv.append(url)
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        env={**os.environ, **(env or {})},
        cwd=LUA,
    )
    out = result.stdout
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}\n{out}")
    summary: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("JSON "):
            summary = json.loads(line[5:])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if summary:
        p50, p99 = summary["p50_us"] / 1000, summary["p99_us"] / 1000
        requests, errors = int(summary["requests"]), int(summary["errors"])
    else:
        p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = int(bad.group(1)) if bad else 0
    if requests and errors > requests * 0.01:
        raise RuntimeError(f"wrk: {errors} of {requests} requests failed\n{out}\n{result.stderr}")
    return WrkResult(rps, p50, p99, requests, errors, out)


# --- the reference app ---------------------------------------------------------------------------


@contextlib.contextmanager
def reference_server(database_url: str, folder: Path) -> Iterator[Callable[[], str]]:
    """``bench/reference_app.py`` under gunicorn with the services' settings, started at once;
    yields a function that waits until it answers and returns its URL."""
    import signal
    import time

    import requests

    from bench.reference_app import create_tables
    from shared.cli import gunicorn_argv
    from tests.e2e.harness import free_port

    create_tables(database_url)
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics").mkdir(exist_ok=True)
    argv = gunicorn_argv(
        "bench",
        None,  # type: ignore[arg-type] - only read when no port is given
        "bench.reference_app:create_app()",
        process="reference",
        port=port,
        workers=int(DEPLOYED["WEB_CONCURRENCY"]),
    )
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")},
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        "SERVICE365_VAR_DIR": str(folder),
        "LOG_LEVEL": "info",
    }
    with (folder / "reference.log").open("wb") as log:
        popen = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> str:
        """The URL, once the app answers (it starts while the caller does other things)."""
        deadline = time.monotonic() + 30
        while True:
            if popen.poll() is not None:
                raise RuntimeError(
                    "the reference app exited:\n" + (folder / "reference.log").read_text()
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    return url
            if time.monotonic() > deadline:
                raise RuntimeError("the reference app did not answer within 30 s")
            time.sleep(0.1)

    try:
        yield ready
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(5)
