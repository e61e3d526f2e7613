"""Who may read which report and photo in intake: the one rule every read here goes through.

DESIGN.md: residents see their own reports; publicists no resident data; admins and supervisors
all; an area leader their villages; grid staff their work. Intake knows no grids (dispatch keeps
them), so for grid staff it goes by what it is told:

- the reporter, and the staff member who reported on the resident's behalf: their report;
- ``admin`` and ``supervisor``: every report;
- ``area_leader``: reports of the villages they lead (``Village.area_leader_id``);
- the assignee and the leader of the grid it was assigned to (``issue.assigned``), and whoever
  holds it now in dispatch (the snapshot's ``holder_ids``: the members of the township or county
  department it was referred to, the level's handler);
- ``grid_worker`` / ``grid_leader``: a report not yet assigned in the village of their account
  (网格员随时查看群众反映问题; dispatch shows the same list per grid);
- anyone else (publicists, other residents, other grid staff): nothing, answered as 404.

Photos (``/media``) follow their report: a photo attached to a report is seen by who may read
the report; an unattached one by its uploader, and, when staff took it (work notes, results),
by staff doing the work. A report shows only the photos actually attached to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from intake.models import Issue, Media, User, Village
from shared.auth import Principal

SEE_ALL = ("admin", "supervisor")
GRID_STAFF = ("grid_worker", "grid_leader")
# Staff who work on reports (publicists write news and are not among them).
WORK_ROLES = frozenset({*SEE_ALL, *GRID_STAFF, "area_leader", "department_staff"})


def may_read_issue(session: Session, viewer: Principal, issue: Issue) -> bool:
    """Whether ``viewer`` may read ``issue`` and its photos (the rule above)."""
    if viewer.id in (issue.reporter_id, getattr(issue, "submitted_by", None)):
        return True
    if viewer.has(*SEE_ALL):
        return True
    if viewer.id in (issue.assignee_id, issue.grid_leader_id):
        return True
    if str(viewer.id) in (issue.holder_ids or []):
        return True
    if viewer.has("area_leader"):
        village = session.get(Village, issue.village_id)
        if village is not None and village.area_leader_id == viewer.id:
            return True
    if viewer.has(*GRID_STAFF) and issue.status == "reported" and issue.assignee_id is None:
        home = session.scalar(sa.select(User.village_id).where(User.id == viewer.id))
        return home is not None and home == issue.village_id
    return False


def may_see_media(session: Session, viewer: Principal, media: Media) -> bool:
    """Uploader; who may read the report it is attached to; work staff for staff's own photos."""
    if media.uploader_id == viewer.id:
        return True
    if media.issue_id is not None:
        issue = session.get(Issue, media.issue_id)
        return issue is not None and may_read_issue(session, viewer, issue)
    if not WORK_ROLES.intersection(viewer.roles):
        return False
    roles = session.scalar(sa.select(User.roles).where(User.id == media.uploader_id)) or []
    return bool(WORK_ROLES.intersection(roles))


def attached(session: Session, issue: Issue, ids: Iterable[str | uuid.UUID]) -> list[str]:
    """Of ``ids``, those of photos attached to ``issue`` (order kept): a foreign id is dropped."""
    wanted = [str(i) for i in ids or []]
    if not wanted:
        return []
    keys = []
    for value in wanted:
        try:
            keys.append(uuid.UUID(value))
        except ValueError:
            continue
    mine = {
        str(i)
        for i in session.scalars(
            sa.select(Media.id).where(Media.id.in_(keys), Media.issue_id == issue.id)
        )
    }
    return [i for i in wanted if i in mine]
