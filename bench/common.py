"""What every benchmark section shares: a result row, medians of repeated runs, the table and
``bench/results.json``.

A section is a module with ``run(ctx: Context) -> list[Result]``; ``bench/run.py`` lists them.
Every figure is the median of ``ctx.repeats`` runs, and every goal is a ratio to a reference
measured beside it in the same run (this machine is shared and noisy). ``ctx.smoke`` makes each
section small and quick: it checks that the section works, not how fast.

Example::

    def run(ctx: Context) -> list[Result]:
        ours = median_of(ctx.repeats, lambda: measure_ours(ctx))
        ref = median_of(ctx.repeats, lambda: measure_reference(ctx))
        return [Result("relay", "publish 100 k", ours, "events/s", reference=ref,
                       goal=Goal(at_least=5000, ratio_at_least=0.30))]
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"


@dataclass
class Context:
    smoke: bool = False
    repeats: int = 3
    # Where the running system is (``make up``): the services' base URLs.
    urls: dict[str, str] = field(default_factory=dict)
    # Free-form options a section may read (e.g. {"scaling_sizes": [10000, 1000000]}).
    options: dict[str, Any] = field(default_factory=dict)

    def size(self, full: int, smoke: int) -> int:
        return smoke if self.smoke else full


@dataclass
class Goal:
    """What a figure must reach: an absolute bound and/or a ratio to its reference."""

    at_least: float | None = None
    at_most: float | None = None
    ratio_at_least: float | None = None  # ours / reference
    ratio_at_most: float | None = None

    def text(self) -> str:
        parts = []
        if self.at_least is not None:
            parts.append(f"≥ {self.at_least:g}")
        if self.at_most is not None:
            parts.append(f"≤ {self.at_most:g}")
        if self.ratio_at_least is not None:
            parts.append(f"≥ {self.ratio_at_least:.0%} of ref")
        if self.ratio_at_most is not None:
            parts.append(f"≤ {self.ratio_at_most:g}× ref")
        return ", ".join(parts)


@dataclass
class Result:
    section: str
    name: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str | None = None
    goal: Goal | None = None
    runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0):
            return None
        return self.value / self.reference

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        g, ok = self.goal, True
        if g.at_least is not None:
            ok &= self.value >= g.at_least
        if g.at_most is not None:
            ok &= self.value <= g.at_most
        if g.ratio_at_least is not None:
            ok &= self.ratio is not None and self.ratio >= g.ratio_at_least
        if g.ratio_at_most is not None:
            ok &= self.ratio is not None and self.ratio <= g.ratio_at_most
        return ok

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["goal"] = self.goal.text() if self.goal else None
        out["ratio"] = self.ratio
        out["met"] = self.met
        return out


def median_of(repeats: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``measure`` ``repeats`` times; (median, every run)."""
    runs = [measure() for _ in range(max(1, repeats))]
    return statistics.median(runs), runs


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; values need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (from /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def print_table(results: list[Result]) -> None:
    header = (
        f"{'section':<15} {'measure':<52} {'value':>12} {'unit':<10} {'reference':>11} "
        f"{'ratio':>7} {'goal':<26} met"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ref = f"{r.reference:,.1f}" if r.reference is not None else ""
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        met = {True: "yes", False: "NO", None: ""}[r.met]
        goal = r.goal.text() if r.goal else ""
        print(
            f"{r.section:<15} {r.name[:52]:<52} {r.value:>12,.1f} {r.unit:<10} {ref:>11} "
            f"{ratio:>7} {goal:<26} {met}"
        )


def write_results(results: list[Result], ctx: Context, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "when": datetime.now(UTC).isoformat(),
        "smoke": ctx.smoke,
        "repeats": ctx.repeats,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": [r.as_dict() for r in results],
    }
    path.write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_web(
    service: str,
    url: str,
    keys: Path,
    folder: Path,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """``python -m <service> web`` (gunicorn, in a session of its own: stop it with
    ``os.killpg(proc.pid, SIGTERM)``) on a free port, its database ``url``, the key pair in
    ``keys`` and its files under ``folder``, with ``env`` added; returns once /healthz answers."""
    extra = env or {}
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("var", "metrics", "media"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    process_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    process_env.update(
        {
            "PYTHONPATH": f"{ROOT}:{ROOT / 'services' / service}",
            "APP_ENV": "test",
            "PORT": str(port),
            "DATABASE_URL": url,
            "JWT_PUBLIC_KEY_FILE": str(keys / "public.pem"),
            "JWT_PRIVATE_KEY_FILE": str(keys / "private.pem"),
            "SERVICE365_VAR_DIR": str(folder / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
            "MEDIA_DIR": str(folder / "media"),
            "WEB_CONCURRENCY": str(workers),
            "PUBLIC_FIGURES_CACHE_SECONDS": "0",
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "WARNING",
            "RABBITMQ_URL": os.environ.get("RABBITMQ_URL", "amqp://guest:guest@localhost:5672/%2F"),
            **extra,
        }
    )
    log = (folder / "web.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", service, "web"],
        env=process_env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{service} web exited:\n{(folder / 'web.log').read_text()[-3000:]}")
        try:
            requests.get(f"{base}/healthz", timeout=2)
            return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    os.killpg(proc.pid, 15)
    raise RuntimeError(f"{service} web did not answer within 60 s")
