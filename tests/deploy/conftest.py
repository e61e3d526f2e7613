"""Helpers of the deployment tests: the tools they need, stand-in upstreams, the two gateways.

A tool the tests need (nginx, docker-compose, pg_dump...) that is missing fails the test with a
message saying how to install it (``.ci/run`` installs them); nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from shared.gateway import NginxSettings, RouteTable, render_nginx

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PACKAGE = {
    "nginx": "nginx",
    "docker-compose": "docker-compose",
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
}


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test loudly (never a skip)."""
    for folder in ("", "/usr/sbin/", "/sbin/"):
        path = shutil.which(name) if not folder else folder + name
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(
        f"{name} is not installed: `apt-get install -y {DEBIAN_PACKAGE.get(name, name)}` "
        "(.ci/run does it); this test needs the real tool.",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers (any status), with a deadline."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1, verify=False)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


# --- stand-in upstreams: each answers which upstream it is and what it received -------------------


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(("127.0.0.1", 0), _EchoHandler)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _EchoHandler(BaseHTTPRequestHandler):
    """JSON: upstream name, path, headers, body size. ``/sse`` paths stream two events 1.5 s
    apart; a query ``big=1`` pads the answer (for gzip)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_args) -> None:  # quiet
        return

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            chunk = self.rfile.read(min(65536, length - received))
            if not chunk:
                break
            received += len(chunk)
        if self.path.endswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            time.sleep(1.5)
            self.wfile.write(b"data: second\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        body = {
            "upstream": self.server.name,  # type: ignore[attr-defined]
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": received,
        }
        if "big=1" in self.path:
            body["padding"] = "网格" * 2000
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.load()


@pytest.fixture(scope="module")
def upstreams(table: RouteTable) -> Iterator[dict[str, Upstream]]:
    """One stand-in HTTP server per upstream of the table (plus nothing listening for ``dead``)."""
    servers = {name: Upstream(name) for name in table.upstreams}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    yield servers
    for server in servers.values():
        server.shutdown()
        server.server_close()


# --- the two gateways ----------------------------------------------------------------------------


def nginx_config(
    folder: Path, table: RouteTable, addresses: Mapping[str, str], **settings
) -> tuple[Path, int]:
    """Render the table's nginx.conf into ``folder`` for 127.0.0.1 upstreams; (file, port)."""
    port = free_port()
    temp = folder / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(
        render_nginx(
            table,
            NginxSettings(
                listen=port,
                upstreams=dict(addresses),
                access_log=str(folder / "access.log"),
                error_log=str(folder / "error.log"),
                pid=str(folder / "nginx.pid"),
                temp_dir=str(temp),
                worker_processes="1",
                # As root, nginx's workers would be `nobody`, who cannot enter pytest's private
                # tmp folders to write request bodies: keep them the caller's user.
                user="root" if os.geteuid() == 0 else None,
                **settings,
            ),
        ),
        encoding="utf-8",
    )
    return conf, port


def nginx_test(conf: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` on ``conf``, with its prefix and error log beside it."""
    return subprocess.run(
        [require_tool("nginx"), "-t", "-p", str(conf.parent), "-e", str(conf.parent / "error.log"),
         "-c", str(conf), "-g", "daemon off;"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@contextlib.contextmanager
def running_nginx(conf: Path, port: int) -> Iterator[str]:
    """nginx in the foreground on ``conf`` until the block ends; yields its base URL."""
    folder = conf.parent
    proc = subprocess.Popen(
        [require_tool("nginx"), "-p", str(folder), "-e", str(folder / "error.log"),
         "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextlib.contextmanager
def running_werkzeug_gateway(targets: Mapping[str, str], folder: Path) -> Iterator[str]:
    """``python -m shared.gateway`` (gunicorn) on a free port, upstreams from ``targets``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        GATEWAY_PORT=str(port),
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_THREADS="8",
    )
    for name, url in targets.items():
        env["GATEWAY_UPSTREAM_" + name.upper().replace("-", "_")] = url
    log = folder / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.gateway"], env=env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
