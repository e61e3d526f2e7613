"""Every route of intake, dispatch, scoring, notify and feed, called by every role and by nobody,
against the tables below.

The table is the access policy in one place (DESIGN.md's roles): for each route, the roles that
pass its gate, or ``PUBLIC`` for routes anyone may call without a token. A role outside the set
must get 403 (401 without a token); a role inside it must get past the gate (any other answer:
a 404 for the made-up id, a 422 for the empty body, ...). A route the table does not know, or a
table row whose route is gone, fails the test: a new route is added here with its roles.

Scoping *inside* a role (a grid worker sees only their grids' issues) is tested per service;
this test is about the gates.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from dispatch.app import create_app as create_dispatch
from dispatch.settings import DispatchSettings
from feed.app import create_app as create_feed
from feed.settings import FeedSettings
from intake.app import create_app as create_intake
from intake.settings import IntakeSettings
from notify.app import create_app as create_notify
from notify.settings import NotifySettings
from scoring.app import create_app as create_scoring
from scoring.settings import ScoringSettings
from shared.auth import ROLES

PUBLIC = frozenset({"*"})
EVERYONE = frozenset(ROLES)
STAFF = EVERYONE - {"resident", "party_member"}
# Staff who work on reports in dispatch (publicists write news and see no resident data).
DISPATCH_STAFF = STAFF - {"publicist"}
# Who may hold and act on an item (its assignee, the level's holder, or an admin).
HOLDERS = DISPATCH_STAFF - {"supervisor"}
LEDGER_READERS = frozenset({"admin", "area_leader", "department_staff", "supervisor"})
ADMIN = frozenset({"admin"})

# Routes every web process has, outside the policy (health, metrics, API documents).
PLUMBING = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}

# Intake: a route every signed-in role passes is scoped inside (a resident reads only their own
# reports; anyone else gets 404 for what they may not see).
INTAKE: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/accounts"): ADMIN,
    ("POST", "/api/v1/accounts"): ADMIN,
    ("GET", "/api/v1/accounts/<uuid:user_id>"): ADMIN,
    ("PATCH", "/api/v1/accounts/<uuid:user_id>"): ADMIN,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): PUBLIC,
    ("POST", "/api/v1/auth/refresh"): PUBLIC,
    ("POST", "/api/v1/auth/wechat"): PUBLIC,
    ("GET", "/api/v1/categories"): PUBLIC,
    ("POST", "/api/v1/issues"): frozenset(
        {"admin", "grid_leader", "grid_worker", "party_member", "resident"}
    ),
    ("GET", "/api/v1/issues/<uuid:issue_id>"): EVERYONE,
    ("POST", "/api/v1/issues/<uuid:issue_id>/details"): EVERYONE,
    ("POST", "/api/v1/issues/<uuid:issue_id>/rating"): EVERYONE,
    ("POST", "/api/v1/issues/<uuid:issue_id>/urge"): EVERYONE,
    ("POST", "/api/v1/issues/<uuid:issue_id>/withdraw"): EVERYONE,
    ("GET", "/api/v1/issues/mine"): EVERYONE,
    ("GET", "/api/v1/me"): EVERYONE,
    ("GET", "/api/v1/me/phone"): EVERYONE,
    ("PUT", "/api/v1/me/phone"): EVERYONE,
    ("POST", "/api/v1/media"): EVERYONE,
    ("GET", "/api/v1/media/<uuid:media_id>"): EVERYONE,
    ("GET", "/api/v1/villages"): PUBLIC,
    ("GET", "/open311/v2/discovery.<fmt>"): PUBLIC,
    ("GET", "/open311/v2/requests.<fmt>"): PUBLIC,
    ("POST", "/open311/v2/requests.<fmt>"): PUBLIC,
    ("GET", "/open311/v2/requests/<service_request_id>.<fmt>"): PUBLIC,
    ("GET", "/open311/v2/services.<fmt>"): PUBLIC,
    ("GET", "/open311/v2/services/<service_code>.<fmt>"): PUBLIC,
}

DISPATCH: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/area-leaders"): DISPATCH_STAFF,
    ("PUT", "/api/v1/area-leaders/<uuid:user_id>"): ADMIN,
    ("GET", "/api/v1/callbacks"): frozenset({"admin", "supervisor"}),
    ("GET", "/api/v1/callbacks/pending"): frozenset({"admin", "supervisor"}),
    ("GET", "/api/v1/departments"): DISPATCH_STAFF,
    ("POST", "/api/v1/departments"): ADMIN,
    ("PATCH", "/api/v1/departments/<uuid:department_id>"): ADMIN,
    ("GET", "/api/v1/grids"): DISPATCH_STAFF,
    ("POST", "/api/v1/grids"): ADMIN,
    ("PATCH", "/api/v1/grids/<uuid:grid_id>"): ADMIN,
    ("POST", "/api/v1/grids/<uuid:grid_id>/members"): ADMIN,
    ("PUT", "/api/v1/grids/<uuid:grid_id>/members"): ADMIN,
    ("DELETE", "/api/v1/grids/<uuid:grid_id>/members/<uuid:user_id>"): ADMIN,
    ("GET", "/api/v1/issues/<uuid:issue_id>"): DISPATCH_STAFF,
    ("POST", "/api/v1/issues/<uuid:issue_id>/assign"): frozenset({"admin", "grid_leader"}),
    ("POST", "/api/v1/issues/<uuid:issue_id>/callbacks"): frozenset({"supervisor"}),
    ("GET", "/api/v1/issues/<uuid:issue_id>/duplicates"): frozenset({"admin", "grid_leader"}),
    ("POST", "/api/v1/issues/<uuid:issue_id>/escalate"): HOLDERS,
    ("GET", "/api/v1/issues/<uuid:issue_id>/history"): DISPATCH_STAFF,
    ("POST", "/api/v1/issues/<uuid:issue_id>/notes"): HOLDERS,
    ("POST", "/api/v1/issues/<uuid:issue_id>/reject"): ADMIN,
    ("POST", "/api/v1/issues/<uuid:issue_id>/reopen"): ADMIN,
    ("POST", "/api/v1/issues/<uuid:issue_id>/resolve"): HOLDERS,
    ("POST", "/api/v1/issues/<uuid:issue_id>/start"): HOLDERS,
    ("GET", "/api/v1/ledger"): LEDGER_READERS,
    ("POST", "/api/v1/ledger/<uuid:entry_id>/progress"): frozenset(
        {"admin", "area_leader", "department_staff"}
    ),
    ("GET", "/api/v1/ledger/export"): LEDGER_READERS,
    ("GET", "/api/v1/public/figures"): PUBLIC,
    ("GET", "/api/v1/queue"): DISPATCH_STAFF,
    ("GET", "/api/v1/staff"): DISPATCH_STAFF,
    ("GET", "/api/v1/stats"): frozenset({"admin", "area_leader", "grid_leader", "supervisor"}),
    ("GET", "/api/v1/tasks/mine"): HOLDERS,
    ("GET", "/api/v1/villages"): DISPATCH_STAFF,
    ("POST", "/api/v1/villages"): ADMIN,
    ("PATCH", "/api/v1/villages/<uuid:village_id>"): ADMIN,
}

# Scoring: the board is public in the mini-program (any signed-in user); a person's own points
# are the caller's; a worker's points their grid leader, area leader and admins (scoped inside:
# a grid or area leader gets 404 for a worker outside their reach); the rules and KPIs the
# staff who are scored or who assess; rule changes and the assessment table admins.
SCORING_STAFF = frozenset({"admin", "supervisor", "area_leader", "grid_leader", "grid_worker"})
SCORING: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/assessment"): ADMIN,
    ("GET", "/api/v1/kpis"): SCORING_STAFF,
    ("GET", "/api/v1/leaderboard"): EVERYONE,
    ("GET", "/api/v1/points/mine"): EVERYONE,
    ("GET", "/api/v1/rules"): SCORING_STAFF,
    ("PUT", "/api/v1/rules/<string:code>"): ADMIN,
    # A grid worker passes the gate for their own points only (else 404 inside).
    ("GET", "/api/v1/workers/<uuid:worker_id>/points"): frozenset(
        {"admin", "area_leader", "grid_leader", "grid_worker"}
    ),
}

# notify: everyone signed in has an inbox and preferences (their own only: another user's
# message is a 404 inside); the delivery log and retries are the admins'.
NOTIFY: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/notifications"): EVERYONE,
    ("GET", "/api/v1/notifications/unread-count"): EVERYONE,
    ("POST", "/api/v1/notifications/<uuid:notification_id>/read"): EVERYONE,
    ("POST", "/api/v1/notifications/read-all"): EVERYONE,
    ("GET", "/api/v1/preferences"): EVERYONE,
    ("PUT", "/api/v1/preferences"): EVERYONE,
    ("GET", "/api/v1/deliveries"): ADMIN,
    ("POST", "/api/v1/deliveries/<uuid:delivery_id>/retry"): ADMIN,
}

# notify's stream process (``notify stream``) is an app of its own with one route: everyone's
# own live unread count (its behaviour: services/notify/tests/test_notify_stream.py).
NOTIFY_STREAM: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/notifications/stream"): EVERYONE,
}

# feed: news reads are public; writers are publicists and admins, publishing and moderation
# admins'; the party feed is read by everyone signed in and written by party members, grid
# leaders and admins (an author deletes their own post: others get 403 inside).
WRITERS = frozenset({"admin", "publicist"})
FEED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/api/v1/news"): PUBLIC,
    ("POST", "/api/v1/news"): WRITERS,
    ("GET", "/api/v1/news/desk"): WRITERS,
    ("GET", "/api/v1/news/<uuid:article_id>"): PUBLIC,
    ("PATCH", "/api/v1/news/<uuid:article_id>"): WRITERS,
    ("GET", "/api/v1/news/<uuid:article_id>/edit"): WRITERS,
    ("POST", "/api/v1/news/<uuid:article_id>/submit"): WRITERS,
    ("POST", "/api/v1/news/<uuid:article_id>/archive"): WRITERS,
    ("POST", "/api/v1/news/<uuid:article_id>/publish"): ADMIN,
    ("POST", "/api/v1/news/<uuid:article_id>/return"): ADMIN,
    ("GET", "/api/v1/news/<uuid:article_id>/comments"): PUBLIC,
    ("POST", "/api/v1/news/<uuid:article_id>/comments"): EVERYONE,
    ("GET", "/api/v1/moderation/comments"): ADMIN,
    ("POST", "/api/v1/comments/<uuid:comment_id>/hide"): ADMIN,
    ("POST", "/api/v1/comments/<uuid:comment_id>/restore"): ADMIN,
    ("GET", "/api/v1/posts"): EVERYONE,
    ("POST", "/api/v1/posts"): frozenset({"admin", "grid_leader", "party_member"}),
    ("GET", "/api/v1/posts/<uuid:post_id>"): EVERYONE,
    ("DELETE", "/api/v1/posts/<uuid:post_id>"): EVERYONE,
    ("POST", "/api/v1/posts/<uuid:post_id>/hide"): ADMIN,
    ("POST", "/api/v1/posts/<uuid:post_id>/restore"): ADMIN,
    ("PUT", "/api/v1/posts/<uuid:post_id>/like"): EVERYONE,
    ("DELETE", "/api/v1/posts/<uuid:post_id>/like"): EVERYONE,
    ("GET", "/api/v1/posts/<uuid:post_id>/comments"): EVERYONE,
    ("POST", "/api/v1/posts/<uuid:post_id>/comments"): EVERYONE,
}


def _rules(app: Flask) -> Iterator[tuple[str, str]]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in PLUMBING or rule.rule.startswith("/docs/"):
            continue
        if rule.endpoint.startswith(("api-docs.", "static")):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method, rule.rule


def _path(rule: str) -> str:
    """The rule with made-up values for its converters."""

    def value(match: re.Match) -> str:
        converter = match.group(1) or "string"
        if converter == "uuid":
            return str(uuid.uuid4())
        if converter == "int":
            return "1"
        return "x"

    return re.sub(r"<(?:(\w+)(?:\([^)]*\))?:)?\w+>", value, rule)


def _call(client, method: str, path: str, headers: dict[str, str]) -> int:
    kwargs: dict = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    # Closed at once: a stream's answer would otherwise stay open (and hold its listener).
    with client.open(path, method=method, **kwargs) as response:
        return response.status_code


@pytest.fixture(scope="module")
def people(issuer) -> dict[str, tuple[uuid.UUID, dict[str, str]]]:
    """One account per role (and its token); the services learn of them below."""
    answer = {}
    for role in ROLES:
        user_id = uuid.uuid4()
        token, _ = issuer.issue(user_id, [role], f"{role}测试")
        answer[role] = (user_id, {"Authorization": f"Bearer {token}"})
    return answer


@pytest.fixture(scope="module")
def intake_app(migrated_database, rabbit_server, jwt_keys, tmp_path_factory, people) -> Flask:
    from intake.models import User

    private, public = jwt_keys
    app = create_intake(
        IntakeSettings(
            app_env="test",
            database_url=migrated_database("intake", prefix="intake_authz"),
            rabbitmq_url=rabbit_server.create_vhost("authz"),
            jwt_private_key_file=private,
            jwt_public_key_file=public,
            wechat_mode="dev",
            media_dir=tmp_path_factory.mktemp("media"),
            log_format="text",
        )
    )
    with app.extensions["db"].transaction() as session:
        for role, (user_id, _headers) in people.items():
            fields = {"username": f"authz-{role}"} if role in STAFF else {"openid": f"o-{role}"}
            session.add(User(id=user_id, name=f"{role}测试", roles=[role], **fields))
    yield app
    app.extensions["db"].dispose()


def _app_that_knows(create, settings_cls, service, people, make_person, url, vhost, public_key):
    """A dispatch-like app whose account snapshot already holds one person per role (as
    ``account.upserted`` would have told it): each token is checked against that snapshot."""
    app = create(
        settings_cls(
            app_env="test",
            database_url=url(service, prefix=f"{service}_authz"),
            rabbitmq_url=vhost("authz"),
            jwt_public_key_file=public_key,
            log_format="text",
        )
    )
    with app.extensions["db"].transaction() as session:
        for role, (user_id, _headers) in people.items():
            session.add(make_person(id=user_id, name=f"{role}测试", roles=[role], active=True))
    return app


@pytest.fixture(scope="module")
def dispatch_app(migrated_database, rabbit_server, jwt_keys, people) -> Iterator[Flask]:
    from dispatch.models import Staff

    app = _app_that_knows(
        create_dispatch, DispatchSettings, "dispatch", people, Staff,
        migrated_database, rabbit_server.create_vhost, jwt_keys[1],
    )  # fmt: skip
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def scoring_app(migrated_database, rabbit_server, jwt_keys, people) -> Iterator[Flask]:
    from scoring.models import Person

    app = _app_that_knows(
        create_scoring, ScoringSettings, "scoring", people, Person,
        migrated_database, rabbit_server.create_vhost, jwt_keys[1],
    )  # fmt: skip
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def notify_app(migrated_database, rabbit_server, jwt_keys, people) -> Iterator[Flask]:
    from notify.models import Person

    app = _app_that_knows(
        create_notify, NotifySettings, "notify", people, Person,
        migrated_database, rabbit_server.create_vhost, jwt_keys[1],
    )  # fmt: skip
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def notify_stream_app(migrated_database, rabbit_server, jwt_keys, people) -> Iterator[Flask]:
    from notify.models import Person
    from notify.stream import create_stream_app

    app = _app_that_knows(
        create_stream_app, NotifySettings, "notify", people, Person,
        migrated_database, rabbit_server.create_vhost, jwt_keys[1],
    )  # fmt: skip
    yield app
    app.extensions["notify_stream_hub"].close()
    app.extensions["db"].dispose()


@pytest.fixture(scope="module")
def feed_app(migrated_database, rabbit_server, jwt_keys, people) -> Iterator[Flask]:
    from feed.models import Person

    app = _app_that_knows(
        create_feed, FeedSettings, "feed", people, Person,
        migrated_database, rabbit_server.create_vhost, jwt_keys[1],
    )  # fmt: skip
    yield app
    app.extensions["db"].dispose()


def _check(app: Flask, table: dict, people: dict) -> None:
    routes = set(_rules(app))
    assert routes - set(table) == set(), "routes missing from the table (add them with roles)"
    assert set(table) - routes == set(), "table rows whose route is gone"
    client = app.test_client()
    wrong = []
    for method, rule in sorted(routes):
        allowed = table[(method, rule)]
        path = _path(rule)
        anonymous = _call(client, method, path, {})
        if allowed == PUBLIC:
            if anonymous in (401, 403):
                wrong.append(f"{method} {rule}: anonymous got {anonymous}, the route is public")
            continue
        if anonymous != 401:
            wrong.append(f"{method} {rule}: anonymous got {anonymous}, expected 401")
        for role, (_user_id, headers) in people.items():
            status = _call(client, method, path, headers)
            passed = status not in (401, 403)
            if passed != (role in allowed):
                wrong.append(f"{method} {rule}: {role} got {status}")
    assert not wrong, "\n".join(wrong)


def test_every_intake_route_lets_in_exactly_the_roles_of_the_table(intake_app, people):
    _check(intake_app, INTAKE, people)


def test_every_dispatch_route_lets_in_exactly_the_roles_of_the_table(dispatch_app, people):
    _check(dispatch_app, DISPATCH, people)


def test_every_scoring_route_lets_in_exactly_the_roles_of_the_table(scoring_app, people):
    _check(scoring_app, SCORING, people)


def test_every_notify_route_lets_in_exactly_the_roles_of_the_table(notify_app, people):
    _check(notify_app, NOTIFY, people)


def test_the_notify_stream_route_lets_in_exactly_the_roles_of_the_table(notify_stream_app, people):
    _check(notify_stream_app, NOTIFY_STREAM, people)


def test_every_feed_route_lets_in_exactly_the_roles_of_the_table(feed_app, people):
    _check(feed_app, FEED, people)


def observed(app: Flask, people: dict) -> dict[tuple[str, str], frozenset[str]]:
    """What each route lets in today (for writing the table; the test compares it with it)."""
    client = app.test_client()
    seen = {}
    for method, rule in sorted(set(_rules(app))):
        path = _path(rule)
        if _call(client, method, path, {}) not in (401, 403):
            seen[(method, rule)] = PUBLIC
            continue
        seen[(method, rule)] = frozenset(
            role
            for role, (_user_id, headers) in people.items()
            if _call(client, method, path, headers) not in (401, 403)
        )
    return seen
