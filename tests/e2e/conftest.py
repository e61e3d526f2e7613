"""Fixtures of the end-to-end tests: the whole system as real processes, once per test module.

``harness``: every service of ``tests.e2e.harness.SERVICES`` running (fresh databases, one fresh
vhost); ``township``: an admin, a village with its area leader and a grid with its leader and
worker, all made the way an operator makes them. When a test fails, the tail of every process's
output is added to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared.testing import RabbitServer
from tests.e2e.harness import Harness, Township, build_township

# The systems running now, so that a failed test (or fixture) can show their processes' output.
RUNNING: list[Harness] = []


@pytest.fixture(scope="module")
def harness(
    tmp_path_factory: pytest.TempPathFactory,
    rabbit_server: RabbitServer,
    migrated_database: Callable[..., str],
    jwt_keys,
) -> Iterator[Harness]:
    """Every service's web, worker (and scheduler) as real processes until the module ends."""
    system = Harness(
        tmp_path_factory.mktemp("e2e"),
        lambda service: migrated_database(service, prefix=f"e2e_{service}"),
        rabbit_server.create_vhost("e2e"),
        jwt_keys,
    )
    RUNNING.append(system)
    try:
        system.start_all()
        yield system
    finally:
        RUNNING.remove(system)
        system.stop_all()


@pytest.fixture(scope="module")
def township(harness: Harness) -> Township:
    return build_township(harness)


@pytest.fixture(autouse=True)
def _processes_stay_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, every process must still run (a test restarts what it kills)."""
    yield
    if "harness" in request.fixturenames:
        request.getfixturevalue("harness").assert_alive()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test (or setup) shows what each process of the system printed last."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "harness" in getattr(item, "fixturenames", ()):
        for system in RUNNING:
            report.sections.append(("e2e processes (last lines)", system.report()))
