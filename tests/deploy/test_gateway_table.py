"""The gateway's route table against the services' own OpenAPI documents.

Every path of every service's ``/openapi.json`` and URL map (each app built in-process with its
``create_app``, on a real migrated PostgreSQL database) must reach that service through the
table: at its own path, or, where another service has the same path (two exist), under
``/svc/<service>/``. Nothing else is routed: ``/metrics``, ``/docs``, ``/openapi.json``,
``/readyz`` and anything no service has stay internal, and every row of the table is used.
The checked-in nginx files must be what the table renders.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask

from shared.gateway import RouteTable
from tests.deploy.conftest import ROOT

PLUMBING = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc")


def _build(service: str, migrated_database, amqp_url: str, jwt_keys) -> list[Flask]:
    """The service's web app(s), as gunicorn builds them."""
    private, public = jwt_keys
    common = {
        "app_env": "test",
        "database_url": migrated_database(service, prefix=f"gw_{service}"),
        "rabbitmq_url": amqp_url,
        "jwt_public_key_file": public,
        "log_format": "text",
    }
    if service == "intake":
        from intake.app import create_app
        from intake.settings import IntakeSettings

        return [create_app(IntakeSettings(**common, jwt_private_key_file=private))]
    if service == "dispatch":
        from dispatch.app import create_app
        from dispatch.settings import DispatchSettings

        return [create_app(DispatchSettings(**common))]
    if service == "scoring":
        from scoring.app import create_app
        from scoring.settings import ScoringSettings

        return [create_app(ScoringSettings(**common))]
    if service == "feed":
        from feed.app import create_app
        from feed.settings import FeedSettings

        return [create_app(FeedSettings(**common))]
    from notify.app import create_app
    from notify.settings import NotifySettings
    from notify.stream import create_stream_app

    settings = NotifySettings(**common)
    return [create_app(settings), create_stream_app(settings)]


SERVICES = ("intake", "dispatch", "scoring", "feed", "notify")


@pytest.fixture(scope="module")
def documents(migrated_database, session_amqp_url, jwt_keys) -> Iterator[dict[str, set[str]]]:
    """service → the paths of its OpenAPI documents and URL map (notify: web and stream)."""
    answer: dict[str, set[str]] = {}
    apps = []
    for service in SERVICES:
        for app in _build(service, migrated_database, session_amqp_url, jwt_keys):
            apps.append(app)
            response = app.test_client().get("/openapi.json")
            assert response.status_code == 200, f"{service}: /openapi.json {response.status_code}"
            answer.setdefault(service, set()).update(response.get_json()["paths"])
            # Routes outside the document too (Open311's XML/JSON routes are not in it).
            answer[service].update(served(app))
    yield answer
    for app in apps:
        app.extensions["db"].dispose()


def served(app: Flask) -> set[str]:
    """The app's URL rules as OpenAPI-style templates, without the plumbing and /docs."""
    paths = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("api-docs.", "static")) or rule.rule in PLUMBING:
            continue
        if rule.rule.startswith("/docs/"):
            continue
        paths.add(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule))
    return paths


def concrete(template: str) -> str:
    """An OpenAPI path with made-up values for its parameters."""
    return re.sub(
        r"\{[^}]+\}", lambda m: str(uuid.uuid4()) if "id" in m.group(0) else "x", template
    )


def owner(upstream: str) -> str:
    """notify-stream is notify's process."""
    return upstream.split("-")[0]


def test_every_openapi_route_of_every_service_reaches_that_service(table, documents):
    assert set(documents) == set(SERVICES)
    wrong = []
    for service, paths in sorted(documents.items()):
        for template in sorted(paths):
            path = concrete(template)
            match = table.resolve(path)
            if match is not None and owner(match.upstream) == service:
                assert match.path == path
                continue
            # The path is another service's too: that one has it here, this one under /svc/.
            other = owner(match.upstream) if match else None
            alias = table.resolve(f"{table.alias_prefix}{service}{path}")
            shared = other is not None and template in documents.get(other, set())
            if not (shared and alias and alias.upstream == service and alias.path == path):
                wrong.append(f"{service} {template} -> {match and match.upstream}")
    assert wrong == [], "routes the gateway does not take to their service:\n" + "\n".join(wrong)


def test_paths_two_services_share_are_the_only_ones_behind_an_alias(table, documents):
    """An alias is the exception: list exactly which paths need it, so a new clash is seen."""
    aliased = set()
    for service, paths in documents.items():
        for template in paths:
            match = table.resolve(concrete(template))
            if match is None or owner(match.upstream) != service:
                aliased.add((service, template))
    assert aliased == {
        ("dispatch", "/api/v1/issues/{issue_id}"),
        ("dispatch", "/api/v1/villages"),
    }


def test_internal_paths_are_not_routed(table, documents):
    for service in SERVICES:
        for path in PLUMBING:
            assert table.resolve(path) is None, path
            assert table.resolve(f"/svc/{service}{path}") is None, (service, path)
        assert table.resolve(f"/svc/{service}/docs/assets/swagger-ui.css") is None
    for path in (
        "/",
        "/docs/assets/swagger-ui.css",
        "/api/v1/auth/../../metrics",
        "/api/v1/auth/./login",
        "/api//metrics",
        "/api/v1",
        "/api/v1/",
        "/api/v1/unknown",
        "/api/v1/authx",
        "/open311x/v2/discovery.json",
        "/svc/unknown/api/v1/queue",
        "/svc/notify-stream/api/v1/notifications/stream",
    ):
        assert table.resolve(path) is None, path


def test_every_row_of_the_table_is_used_by_some_route_of_its_service(table, documents):
    used = set()
    for service, paths in documents.items():
        for template in paths:
            match = table.resolve(concrete(template))
            if match is not None and owner(match.upstream) == service:
                used.add((match.route.kind, match.route.path))
    rows = {(route.kind, route.path) for route in table.routes}
    assert rows - used == set(), "table rows no OpenAPI route needs"


def test_uploads_alone_take_the_larger_body_limit(table):
    media = table.resolve("/api/v1/media")
    assert media is not None and media.route.max_bytes >= 10 * 1024 * 1024 + 256 * 1024
    for path in ("/api/v1/issues", "/api/v1/auth/login", "/api/v1/news", "/api/v1/posts"):
        match = table.resolve(path)
        assert match is not None and match.route.max_bytes == 1024 * 1024, path


def test_the_event_stream_goes_to_the_stream_process(table):
    match = table.resolve("/api/v1/notifications/stream")
    assert match is not None and match.upstream == "notify-stream"
    assert table.upstreams["notify-stream"].stream
    assert table.resolve("/api/v1/notifications/unread-count").upstream == "notify"


def test_the_checked_in_nginx_files_are_what_the_table_renders():
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "gateway" / "render.py"), "--check"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_broken_table_is_refused_with_its_reason(tmp_path):
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "upstreams: {intake: {compose: 'intake-web:8001', port: 8001}}\n"
        "routes: [{prefix: /api/v1/queue, to: dispatch}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="unknown 'dispatch'"):
        RouteTable.load(bad)
