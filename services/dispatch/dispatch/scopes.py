"""Who may read which work items: the one rule every read of an issue in dispatch goes through.

DESIGN.md: a grid worker sees their grids and tasks, a grid leader their grids, an area leader
their villages, admins and supervisors all, publicists no resident data. In detail:

- ``admin`` and ``supervisor``: every item.
- ``grid_worker``: items in a grid they are a member of (``Issue.grid_id``).
- ``grid_leader``: items in a grid they lead (the grid, not the whole village).
- both: a report not yet assigned (``reported``, no grid yet) in a village where they have a grid,
  read-only (网格员在手机上可随时查看群众反映问题; a grid leader may then assign it inside their
  grid). Once assigned, an item belongs to its grid only.
- ``area_leader``: items in the villages they lead (``Village.area_leader_id``).
- ``department_staff``: items held by a department they are a member of (``Issue.department_id``:
  a township department it was handed to, or the county department of the ledger).
- anyone: items they hold or follow (assignee, the level's handler, the following area leader).
- anyone else (publicists, residents): nothing.

``reach_of`` reads the caller's grids and villages once; ``Reach.condition()`` is the SQL filter
for lists and ``Reach.allows(issue)`` the same rule for one loaded item.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dispatch.models import DepartmentMember, Grid, GridMember, Issue, Village
from shared.auth import Principal
from shared.errors import NotFound

SEE_ALL = ("admin", "supervisor")
UNASSIGNED = "reported"


@dataclass(frozen=True)
class Reach:
    """What one caller may read, worked out from their roles, grids and villages."""

    user_id: uuid.UUID
    everything: bool = False
    grids: frozenset[uuid.UUID] = frozenset()
    grid_villages: frozenset[uuid.UUID] = frozenset()
    area_villages: frozenset[uuid.UUID] = frozenset()
    departments: frozenset[uuid.UUID] = frozenset()

    def condition(self) -> sa.ColumnElement[bool]:
        """The filter on ``Issue`` for lists (queue, ledger, callbacks)."""
        if self.everything:
            return sa.true()
        allowed: list[sa.ColumnElement[bool]] = [
            Issue.assignee_id == self.user_id,
            Issue.handler_id == self.user_id,
            Issue.follower_id == self.user_id,
        ]
        if self.grids:
            allowed.append(Issue.grid_id.in_(self.grids))
        if self.grid_villages:
            allowed.append(
                sa.and_(
                    Issue.grid_id.is_(None),
                    Issue.state == UNASSIGNED,
                    Issue.village_id.in_(self.grid_villages),
                )
            )
        if self.area_villages:
            allowed.append(Issue.village_id.in_(self.area_villages))
        if self.departments:
            allowed.append(Issue.department_id.in_(self.departments))
        return sa.or_(*allowed)

    def allows(self, issue: Issue) -> bool:
        """The same rule as ``condition`` for one item already loaded."""
        if self.everything:
            return True
        if self.user_id in (issue.assignee_id, issue.handler_id, issue.follower_id):
            return True
        if issue.grid_id is not None and issue.grid_id in self.grids:
            return True
        if (
            issue.grid_id is None
            and issue.state == UNASSIGNED
            and issue.village_id in self.grid_villages
        ):
            return True
        if issue.department_id is not None and issue.department_id in self.departments:
            return True
        return issue.village_id in self.area_villages


def reach_of(session: Session, actor: Principal) -> Reach:
    """The caller's grids (joined as a worker, led as a leader) and villages (as area leader)."""
    if actor.has(*SEE_ALL):
        return Reach(actor.id, everything=True)
    grids: set[uuid.UUID] = set()
    villages: set[uuid.UUID] = set()
    if actor.has("grid_worker", "grid_leader"):
        rows = session.execute(
            sa.select(Grid.id, Grid.village_id)
            .join(GridMember, GridMember.grid_id == Grid.id)
            .where(GridMember.user_id == actor.id)
        )
        for grid_id, village_id in rows:
            grids.add(grid_id)
            villages.add(village_id)
    if actor.has("grid_leader"):
        for grid_id, village_id in session.execute(
            sa.select(Grid.id, Grid.village_id).where(Grid.leader_id == actor.id)
        ):
            grids.add(grid_id)
            villages.add(village_id)
    area: frozenset[uuid.UUID] = frozenset()
    if actor.has("area_leader"):
        area = frozenset(
            session.scalars(sa.select(Village.id).where(Village.area_leader_id == actor.id))
        )
    departments: frozenset[uuid.UUID] = frozenset()
    if actor.has("department_staff"):
        departments = frozenset(
            session.scalars(
                sa.select(DepartmentMember.department_id).where(
                    DepartmentMember.user_id == actor.id
                )
            )
        )
    return Reach(actor.id, False, frozenset(grids), frozenset(villages), area, departments)


def visible_issues(session: Session, actor: Principal) -> sa.ColumnElement[bool]:
    """The filter on ``Issue`` selecting what ``actor`` may read."""
    return reach_of(session, actor).condition()


def may_read(session: Session, issue: Issue, actor: Principal) -> bool:
    return reach_of(session, actor).allows(issue)


def require_read(session: Session, issue: Issue, actor: Principal) -> Issue:
    """The item if ``actor`` may read it; else 404, as if it did not exist (no probing by id)."""
    if not may_read(session, issue, actor):
        raise NotFound("未找到该事项。", code="issue_not_found")
    return issue


def led_grids(session: Session, actor: Principal) -> dict[uuid.UUID, Grid]:
    """The grids ``actor`` leads as a grid leader (none without the role)."""
    if not actor.has("grid_leader"):
        return {}
    return {g.id: g for g in session.scalars(sa.select(Grid).where(Grid.leader_id == actor.id))}
