"""The township's organisation: villages, grids and their members, area leaders, departments.

Membership is by user id: a person may be named before intake's ``account.upserted`` reaches
dispatch (the demo loader does exactly that); assignment checks the person's roles then.
Every change of a village's name or area leader is announced (``village.upserted``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from dispatch.models import (
    Department,
    DepartmentMember,
    Grid,
    GridMember,
    Issue,
    LedgerEntry,
    Staff,
    Village,
)
from shared.auth import STAFF_ROLES, Principal
from shared.errors import Conflict, Invalid, NotFound
from shared.events import emit
from shared.pagination import encode_cursor, keyset_page


def _announce_village(session: Session, village: Village) -> None:
    """Announce the village's new state with the next ``revision`` (consumers drop older ones)."""
    village.revision = (village.revision or 0) + 1
    session.flush()
    emit(
        session,
        "village.upserted",
        {
            "village_id": village.id,
            "name": village.name,
            "code": village.code,
            "area_leader_id": village.area_leader_id,
            "revision": village.revision,
        },
    )


def _unique(session: Session, model: type, field: str, value: Any, own_id: Any, label: str):
    if value is None:
        return
    column = getattr(model, field)
    found = session.scalars(sa.select(model.id).where(column == value)).first()
    if found is not None and found != own_id:
        raise Conflict(f"{label}「{value}」已存在。", code=f"{field}_taken")


# --- villages ----------------------------------------------------------------------------------


def list_villages(session: Session) -> list[Village]:
    return list(session.scalars(sa.select(Village).order_by(Village.code, Village.name)))


def get_village(session: Session, village_id: uuid.UUID, *, lock: bool = False) -> Village:
    village = session.get(Village, village_id, with_for_update=lock)
    if village is None:
        raise NotFound("未找到该村庄。", code="village_not_found")
    return village


def create_village(session: Session, data: dict[str, Any]) -> Village:
    """A new village (the id may be given, so that every service and reload agree on it)."""
    village_id = data.get("id") or uuid.uuid4()
    if session.get(Village, village_id) is not None:
        raise Conflict("该村庄编号已存在。", code="village_exists")
    _unique(session, Village, "name", data["name"], village_id, "村庄名称")
    _unique(session, Village, "code", data.get("code"), village_id, "村庄代码")
    village = Village(
        id=village_id,
        name=data["name"],
        code=data.get("code"),
        area_leader_id=data.get("area_leader_id"),
    )
    session.add(village)
    _announce_village(session, village)
    return village


def change_village(session: Session, village_id: uuid.UUID, changes: dict[str, Any]) -> Village:
    """Rename a village, change its code or area leader; announced when something changed."""
    village = get_village(session, village_id, lock=True)
    if "name" in changes:
        _unique(session, Village, "name", changes["name"], village.id, "村庄名称")
    if "code" in changes:
        _unique(session, Village, "code", changes["code"], village.id, "村庄代码")
    changed = False
    for field in ("name", "code", "area_leader_id"):
        if field in changes and getattr(village, field) != changes[field]:
            setattr(village, field, changes[field])
            changed = True
    if changed:
        _announce_village(session, village)
    return village


# --- grids -------------------------------------------------------------------------------------


def list_grids(session: Session, village_id: uuid.UUID | None = None) -> list[Grid]:
    stmt = sa.select(Grid).options(selectinload(Grid.members)).order_by(Grid.code, Grid.name)
    if village_id:
        stmt = stmt.where(Grid.village_id == village_id)
    return list(session.scalars(stmt))


def get_grid(session: Session, grid_id: uuid.UUID, *, lock: bool = False) -> Grid:
    grid = session.get(Grid, grid_id, with_for_update=lock)
    if grid is None:
        raise NotFound("未找到该网格。", code="grid_not_found")
    return grid


def _grid_name_free(session: Session, village_id: uuid.UUID, name: str, own_id: uuid.UUID):
    found = session.scalars(
        sa.select(Grid.id).where(Grid.village_id == village_id, Grid.name == name)
    ).first()
    if found is not None and found != own_id:
        raise Conflict(f"该村已有名为「{name}」的网格。", code="grid_name_taken")


def create_grid(session: Session, data: dict[str, Any]) -> Grid:
    """A grid in a village, with its leader and members (by user id)."""
    grid_id = data.get("id") or uuid.uuid4()
    if session.get(Grid, grid_id) is not None:
        raise Conflict("该网格编号已存在。", code="grid_exists")
    get_village(session, data["village_id"])
    _grid_name_free(session, data["village_id"], data["name"], grid_id)
    _unique(session, Grid, "code", data.get("code"), grid_id, "网格代码")
    grid = Grid(
        id=grid_id,
        village_id=data["village_id"],
        name=data["name"],
        code=data.get("code"),
        leader_id=data.get("leader_id"),
    )
    session.add(grid)
    session.flush()
    set_members(session, grid.id, data.get("member_ids") or [])
    return grid


def change_grid(session: Session, grid_id: uuid.UUID, changes: dict[str, Any]) -> Grid:
    grid = get_grid(session, grid_id, lock=True)
    if "village_id" in changes:
        get_village(session, changes["village_id"])
    if "name" in changes or "village_id" in changes:
        _grid_name_free(
            session,
            changes.get("village_id", grid.village_id),
            changes.get("name", grid.name),
            grid.id,
        )
    if "code" in changes:
        _unique(session, Grid, "code", changes["code"], grid.id, "网格代码")
    for field in ("name", "code", "leader_id", "village_id"):
        if field in changes:
            setattr(grid, field, changes[field])
    if "member_ids" in changes:
        set_members(session, grid.id, changes["member_ids"])
    session.flush()
    return grid


def set_members(session: Session, grid_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> Grid:
    """Make the grid's workers exactly ``user_ids`` (order kept, duplicates refused)."""
    if len(set(user_ids)) != len(user_ids):
        raise Invalid("网格成员不能重复。", code="duplicate_member")
    grid = get_grid(session, grid_id, lock=True)
    wanted = list(user_ids)
    current = {m.user_id: m for m in grid.members}
    for user_id, member in current.items():
        if user_id not in wanted:
            grid.members.remove(member)
    for user_id in wanted:
        if user_id not in current:
            grid.members.append(GridMember(grid_id=grid.id, user_id=user_id))
    session.flush()
    return grid


def add_member(session: Session, grid_id: uuid.UUID, user_id: uuid.UUID) -> Grid:
    grid = get_grid(session, grid_id, lock=True)
    if all(m.user_id != user_id for m in grid.members):
        grid.members.append(GridMember(grid_id=grid.id, user_id=user_id))
        session.flush()
    return grid


def remove_member(session: Session, grid_id: uuid.UUID, user_id: uuid.UUID) -> Grid:
    grid = get_grid(session, grid_id, lock=True)
    member = next((m for m in grid.members if m.user_id == user_id), None)
    if member is None:
        raise NotFound("该人员不在此网格中。", code="member_not_found")
    grid.members.remove(member)
    session.flush()
    return grid


# --- area leaders -------------------------------------------------------------------------------


def list_area_leaders(session: Session) -> list[dict[str, Any]]:
    """Everyone holding the area-leader role or named on a village, with their villages."""
    villages = list_villages(session)
    leaders: dict[uuid.UUID, dict[str, Any]] = {}
    for staff in session.scalars(sa.select(Staff).order_by(Staff.name)):
        if "area_leader" in (staff.roles or []):
            leaders[staff.id] = {"user_id": staff.id, "name": staff.name, "villages": []}
    for village in villages:
        if village.area_leader_id is None:
            continue
        entry = leaders.setdefault(
            village.area_leader_id,
            {
                "user_id": village.area_leader_id,
                "name": _name(session, village.area_leader_id),
                "villages": [],
            },
        )
        entry["villages"].append(village)
    return list(leaders.values())


def _name(session: Session, user_id: uuid.UUID) -> str | None:
    staff = session.get(Staff, user_id)
    return staff.name if staff else None


def set_area_leader_villages(
    session: Session, user_id: uuid.UUID, village_ids: Sequence[uuid.UUID]
) -> dict[str, Any]:
    """Make ``user_id`` the area leader of exactly these villages (others lose them)."""
    wanted = set(village_ids)
    villages = {
        v.id: v
        for v in session.scalars(
            sa.select(Village)
            .where(sa.or_(Village.id.in_(wanted), Village.area_leader_id == user_id))
            .with_for_update()
        )
    }
    missing = wanted - set(villages)
    if missing:
        raise Invalid(
            "有村庄不存在。",
            code="unknown_village",
            details={"village_ids": sorted(map(str, missing))},
        )
    for village in villages.values():
        target = user_id if village.id in wanted else None
        if village.id not in wanted and village.area_leader_id != user_id:
            continue
        if village.area_leader_id != target:
            village.area_leader_id = target
            _announce_village(session, village)
    return {
        "user_id": user_id,
        "name": _name(session, user_id),
        "villages": sorted(
            (v for v in villages.values() if v.id in wanted), key=lambda v: (v.code or "", v.name)
        ),
    }


# --- departments --------------------------------------------------------------------------------


def list_departments(session: Session, kind: str | None = None) -> list[Department]:
    """Township departments (分管部门) and county departments, optionally of one kind."""
    stmt = sa.select(Department).order_by(Department.kind.desc(), Department.code)
    if kind:
        stmt = stmt.where(Department.kind == kind)
    return list(session.scalars(stmt))


def create_department(session: Session, data: dict[str, Any]) -> Department:
    """A township department (``kind=township``) or a county department, with its staff."""
    dept_id = data.get("id") or uuid.uuid4()
    if session.get(Department, dept_id) is not None:
        raise Conflict("该部门编号已存在。", code="department_exists")
    _unique(session, Department, "code", data["code"], dept_id, "部门代码")
    _unique(session, Department, "name", data["name"], dept_id, "部门名称")
    department = Department(
        id=dept_id,
        code=data["code"],
        name=data["name"],
        kind=data.get("kind") or "county",
        active=data.get("active", True),
    )
    session.add(department)
    session.flush()
    set_department_members(session, department, data.get("member_ids") or [])
    return department


def set_department_members(
    session: Session, department: Department, user_ids: Sequence[uuid.UUID]
) -> Department:
    """Make the department's staff exactly ``user_ids`` (order kept, duplicates refused).

    By user id, like grid members: a person may be named before their account reaches dispatch;
    only those holding the ``department_staff`` role act for the department."""
    if len(set(user_ids)) != len(user_ids):
        raise Invalid("部门人员不能重复。", code="duplicate_member")
    current = {m.user_id: m for m in department.members}
    for user_id, member in current.items():
        if user_id not in user_ids:
            department.members.remove(member)
    for user_id in user_ids:
        if user_id not in current:
            member = DepartmentMember(department_id=department.id, user_id=user_id)
            department.members.append(member)
    session.flush()
    return department


def _department_in_use(session: Session, department_id: uuid.UUID) -> bool:
    held = sa.select(Issue.id).where(Issue.department_id == department_id).limit(1)
    ledger = sa.select(LedgerEntry.id).where(LedgerEntry.department_id == department_id).limit(1)
    return session.scalar(held) is not None or session.scalar(ledger) is not None


def change_department(
    session: Session, department_id: uuid.UUID, changes: dict[str, Any]
) -> Department:
    department = session.get(Department, department_id, with_for_update=True)
    if department is None:
        raise NotFound("未找到该部门。", code="department_not_found")
    if "code" in changes:
        _unique(session, Department, "code", changes["code"], department.id, "部门代码")
    if "name" in changes:
        _unique(session, Department, "name", changes["name"], department.id, "部门名称")
    kind = changes.get("kind", department.kind)
    if kind != department.kind and _department_in_use(session, department.id):
        raise Conflict(
            "该部门已有交办或台账事项，不能更改部门类型。",
            code="department_in_use",
            details={"kind": department.kind},
        )
    for field in ("code", "name", "kind", "active"):
        if field in changes:
            setattr(department, field, changes[field])
    if "member_ids" in changes:
        set_department_members(session, department, changes["member_ids"])
    session.flush()
    return department


# --- staff -------------------------------------------------------------------------------------


def list_staff(
    session: Session,
    viewer: Principal,
    role: str | None = None,
    *,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Staff], str | None]:
    """One page of the staff dispatch knows from intake, by name: people holding a staff role
    (residents are not listed), optionally one role. Phones are shown to admins only
    (``shown_phone``, set on the rows for the answer, never stored).

    Roles are a JSON list, so the filter runs here over keyset batches of the ordered table
    (a few hundred people), not in SQL; the cursor is still (name, id).
    """
    wanted = {role} if role else set(STAFF_ROLES)
    found: list[Staff] = []
    batch_cursor = cursor
    while len(found) <= limit:
        rows, batch_cursor = keyset_page(
            session,
            sa.select(Staff),
            order=[Staff.name.asc(), Staff.id.asc()],
            key=lambda s: [s.name, s.id],
            cursor=batch_cursor,
            limit=200,
        )
        found += [s for s in rows if wanted.intersection(s.roles or [])]
        if batch_cursor is None:
            break
    items = found[:limit]
    next_cursor = encode_cursor([items[-1].name, items[-1].id]) if len(found) > limit else None
    admin = viewer.has("admin")
    for staff in items:
        staff.shown_phone = staff.phone if admin else None  # type: ignore[attr-defined]
    return items, next_cursor
