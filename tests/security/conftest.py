"""One running system for the whole folder: every service as real processes, started once.

The security modules only read and make objects of their own (people with their own names, their
own reports), so they share one system instead of starting ten processes per module: on two
cores the start is most of their time. ``township`` is the operator's township of
``build_township`` (tag ``sec``); ``people`` adds everyone else the checks need.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Harness, Township, build_township


@pytest.fixture(scope="package")
def harness(start_system) -> Iterator[Harness]:
    """Every service's web, worker (and scheduler) as real processes until the folder ends."""
    with start_system("security") as system:
        yield system


@pytest.fixture(scope="package")
def township(harness: Harness) -> Township:
    return build_township(harness, tag="sec")
