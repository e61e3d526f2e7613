"""Fixtures for dispatch's tests: a fresh PostgreSQL database per test (cloned from a migrated
template, so a test costs a CREATE DATABASE rather than a migration run), signed tokens, and a
small township (two villages, two grids, their people, a county department)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from dispatch_helpers import Person, Township, envelope, report_data, settings_with

from dispatch import services
from dispatch.app import create_app
from dispatch.handlers import handle_issue_reported, use_settings
from dispatch.models import Department, Grid, GridMember, Village
from dispatch.settings import DispatchSettings


@pytest.fixture
def database_url(fresh_database) -> str:
    return fresh_database("dispatch")


@pytest.fixture
def settings(database_url, jwt_keys) -> DispatchSettings:
    return settings_with(database_url, jwt_keys)


@pytest.fixture
def app(settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    use_settings(settings)
    yield app
    use_settings(None)
    app.extensions["db"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def db(app):
    return app.extensions["db"]


@pytest.fixture
def person(db, issuer) -> Callable[..., Person]:
    """``person("grid_worker", name="王强")``: known to dispatch (as account.upserted would make
    it) and signed in. ``known=False`` signs in without telling dispatch."""

    def make(*roles: str, name: str = "张三", known: bool = True, active: bool = True) -> Person:
        user_id = uuid.uuid4()
        if known:
            with db.transaction() as session:
                services.upsert_staff(
                    session,
                    {"user_id": user_id, "name": name, "roles": list(roles), "active": active},
                )
        token, _ = issuer.issue(user_id, roles, name)
        return Person(user_id, name, tuple(roles), {"Authorization": f"Bearer {token}"})

    return make


@pytest.fixture
def town(db, person) -> Township:
    t = Township(
        admin=person("admin", name="乡管理员"),
        admin2=person("admin", name="副管理员"),
        area_leader=person("area_leader", name="包片领导赵"),
        supervisor=person("supervisor", name="督导张"),
        resident=person("resident", name="群众李"),
        leader1=person("grid_leader", name="网格长王"),
        worker1=person("grid_worker", name="网格员刘"),
        worker2=person("grid_worker", name="网格员陈"),
        leader2=person("grid_leader", name="网格长孙"),
        worker3=person("grid_worker", name="网格员周"),
        village1=uuid.uuid4(),
        village2=uuid.uuid4(),
        grid1=uuid.uuid4(),
        grid2=uuid.uuid4(),
        department=uuid.uuid4(),
    )
    with db.transaction() as session:
        session.add_all(
            [
                Village(
                    id=t.village1, code="V01", name="沙口集村", area_leader_id=t.area_leader.id
                ),
                Village(id=t.village2, code="V02", name="王营村"),
                Department(id=t.department, code="water", name="县水利局"),
            ]
        )
        session.flush()
        session.add_all(
            [
                Grid(id=t.grid1, village_id=t.village1, name="第一网格", leader_id=t.leader1.id),
                Grid(id=t.grid2, village_id=t.village2, name="第一网格", leader_id=t.leader2.id),
            ]
        )
        session.flush()
        session.add_all(
            [
                GridMember(grid_id=t.grid1, user_id=t.worker1.id),
                GridMember(grid_id=t.grid1, user_id=t.worker2.id),
                GridMember(grid_id=t.grid2, user_id=t.worker3.id),
            ]
        )
    return t


@pytest.fixture
def report(db, town) -> Callable[..., uuid.UUID]:
    """``report()``: an ``issue.reported`` applied through the real handler; returns the id."""

    def make(**kw: Any) -> uuid.UUID:
        village = kw.pop("village_id", town.village1)
        reporter = kw.pop("reporter_id", town.resident.id)
        data = report_data(village, reporter_id=reporter, **kw)
        with db.transaction() as session:
            handle_issue_reported(session, envelope("issue.reported", data))
        return uuid.UUID(data["issue_id"])

    return make
