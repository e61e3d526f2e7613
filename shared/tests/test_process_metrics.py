"""A worker-type process serves its own series on METRICS_PORT, from its own multiprocess folder
(``shared.metrics.serve_process_metrics``, ``shared.cli.default_environment``).

Each case runs in a fresh Python process: prometheus_client picks multiprocess mode at import.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from shared.cli import metrics_folder_name
from shared.settings import PROJECT_ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_scheduler_and_stream_get_a_metrics_folder_of_their_own():
    assert metrics_folder_name("intake", "web") == "intake"
    assert metrics_folder_name("intake", "migrate") == "intake"
    assert metrics_folder_name("intake", None) == "intake"
    assert metrics_folder_name("intake", "worker") == "intake-worker"
    assert metrics_folder_name("dispatch", "scheduler") == "dispatch-scheduler"
    assert metrics_folder_name("notify", "stream") == "notify-stream"


def test_a_process_started_by_hand_writes_to_its_own_folder(tmp_path: Path):
    env = {"SERVICE365_VAR_DIR": str(tmp_path)}
    code = (
        "import os, sys; sys.argv = ['x', 'worker']\n"
        "os.environ.pop('PROMETHEUS_MULTIPROC_DIR', None)\n"
        "from shared.cli import default_environment\n"
        "default_environment('intake'); print(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
    )
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "metrics" / "intake-worker")


def test_the_endpoint_adds_up_this_process_kind_and_keeps_a_dead_runs_counts(tmp_path: Path):
    folder = tmp_path / "metrics-worker"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    earlier = _python(
        "from shared.metrics import EVENTS_CONSUMED as c\n"
        "c.labels('tiny', 'issue.reported', 'processed').inc(7)\n",
        env,
    )
    assert earlier.returncode == 0, earlier.stderr
    port = _free_port()
    code = (
        "import urllib.request\n"
        "from shared.metrics import EVENTS_CONSUMED as c, serve_process_metrics\n"
        "c.labels('tiny', 'issue.reported', 'processed').inc(3)\n"
        f"stop = serve_process_metrics({port}, '127.0.0.1')\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\n"
        "stop()\n"
        "assert serve_process_metrics(0) is None\n"
    )
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    line = 'events_consumed_total{outcome="processed",service="tiny",type="issue.reported"} 10.0'
    assert line in result.stdout


def test_a_metrics_port_in_use_stops_the_process_with_one_line_naming_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _python(
            f"from shared.metrics import serve_process_metrics\n"
            f"serve_process_metrics({port}, '127.0.0.1')\n",
            {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        )
    assert result.returncode == 2
    assert "METRICS_PORT" in result.stderr and str(port) in result.stderr
    assert "Traceback" not in result.stderr
