"""One running system for the whole folder: every service as real processes, started once.

The security modules only read and make objects of their own (people with their own names, their
own reports), so they share one system instead of starting ten processes per module: on two
cores the start is most of their time. ``township`` is the operator's township of
``build_township`` (tag ``sec``); ``people`` adds everyone else the checks need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shared.testing import RabbitServer
from tests.e2e.harness import Harness, Township, build_township


@pytest.fixture(scope="package")
def harness(
    tmp_path_factory: pytest.TempPathFactory,
    rabbit_server: RabbitServer,
    migrated_database: Callable[..., str],
    jwt_keys,
) -> Iterator[Harness]:
    """Every service's web, worker (and scheduler) as real processes until the folder ends."""
    system = Harness(
        tmp_path_factory.mktemp("security"),
        lambda service: migrated_database(service, prefix=f"sec_{service}"),
        rabbit_server.create_vhost("security"),
        jwt_keys,
    )
    try:
        system.start_all()
        yield system
    finally:
        system.stop_all()


@pytest.fixture(scope="package")
def township(harness: Harness) -> Township:
    return build_township(harness, tag="sec")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test here shows what each process of the system printed last."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "harness" in getattr(item, "fixturenames", ()):
        system = item.funcargs.get("harness") if hasattr(item, "funcargs") else None
        if isinstance(system, Harness):
            report.sections.append(("security system processes (last lines)", system.report()))
