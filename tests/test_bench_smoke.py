"""``make bench`` works (issue 11): the benchmark runner at smoke sizes, as CI runs it.

It checks that the suite runs and writes its figures, not how fast anything is. The sections
chosen start everything they need themselves (intake's web under gunicorn with wrk and the bare
Flask reference beside it; the outbox relay against raw pika; the memory of the processes they
ran) on throwaway databases and vhosts of the local PostgreSQL and RabbitMQ; the slower ones
(dispatch_writes, end_to_end: the whole system) are left to ``make bench-smoke``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("http_intake", "relay", "memory")


def argv(results: Path) -> list[str]:
    smoke = ["--smoke", "--results", str(results), "--only", *SECTIONS]
    return [sys.executable, "-m", "bench.run", *smoke]


@pytest.mark.timeout(120)
def test_bench_smoke_runs_and_writes_every_figure(tmp_path: Path, postgres_server, rabbit_server):
    if postgres_server.host != "127.0.0.1" or postgres_server.port != 5432:
        pytest.fail("the bench needs the local PostgreSQL at 127.0.0.1:5432", pytrace=False)
    assert shutil.which("wrk") or Path("/usr/bin/wrk").exists(), "wrk is not installed"
    results = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RABBITMQ_URL")}
    done = subprocess.run(
        argv(results),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    tail = "\n".join(line[:300] for line in (done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0, tail

    body = json.loads(results.read_text(encoding="utf-8"))
    assert body["smoke"] is True
    rows = {(r["section"], r["name"]): r for r in body["results"]}
    names = {name for _section, name in rows}
    for wanted in (
        "POST /issues req/s (c4)",
        "POST /issues p99",
        "GET /issues/{id} req/s (c4)",
        "GET /issues/mine req/s (c4)",
    ):
        row = rows[("http_intake", wanted)]
        assert row["value"] > 0 and row["reference"] > 0, row
        assert row["goal"], row
    relay = [r for r in body["results"] if r["section"] == "relay"]
    assert len(relay) == 1 and relay[0]["value"] > 0 and relay[0]["reference"] > 0, relay
    memory = [r for r in body["results"] if r["section"] == "memory"]
    assert any("intake web worker" in r["name"] for r in memory), names
    assert all(0 < r["value"] < 10_000 for r in memory), memory
    assert "section" in done.stdout and "met" in done.stdout  # the table was printed


def test_the_scaling_section_fills_only_the_services_asked_for(monkeypatch):
    from bench.common import Context
    from bench.scaling import SERVICES, chosen_services

    monkeypatch.delenv("SCALING_SERVICES", raising=False)
    assert chosen_services(Context()) == SERVICES
    # In fill order whatever the order asked, from the option or the environment.
    assert chosen_services(Context(options={"scaling_services": ["intake", "feed"]})) == (
        "feed",
        "intake",
    )
    monkeypatch.setenv("SCALING_SERVICES", "intake, scoring,dispatch")
    assert chosen_services(Context()) == ("dispatch", "scoring", "intake")
    for wrong in ("scoring", "intake,notify"):  # scoring is filled from dispatch's events
        monkeypatch.setenv("SCALING_SERVICES", wrong)
        with pytest.raises(ValueError, match="SCALING_SERVICES"):
            chosen_services(Context())
