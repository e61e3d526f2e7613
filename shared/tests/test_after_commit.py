"""``after_commit``: business counters count what was stored, on the real PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.db import Database, after_commit
from shared.tests.conftest import demo_notes


def test_a_callback_runs_after_the_commit_and_never_after_a_rollback(db: Database) -> None:
    calls: list[str] = []
    with db.transaction() as session:
        session.execute(sa.insert(demo_notes).values(text="kept"))
        after_commit(session, lambda: calls.append("kept"))
        assert calls == []  # not before the commit

    with pytest.raises(sa.exc.IntegrityError), db.transaction() as session:
        after_commit(session, lambda: calls.append("lost"))
        session.execute(sa.insert(demo_notes).values(id=1, text="clash"))
        session.execute(sa.insert(demo_notes).values(id=1, text="clash"))

    assert calls == ["kept"]
