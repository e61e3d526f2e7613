"""What every web process has (shared.web): JSON errors, health, readiness, metrics, OpenAPI and
the correlation id, seen through a tiny service built the way every service is built."""

from __future__ import annotations

import io
import json
import logging
import socket
import uuid

import pytest

from shared.tests.tinyapp import TinySettings, build_app, make_keys
from shared.web import CORRELATION_HEADER


@pytest.fixture(scope="module")
def public_key(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("keys"))[1]


@pytest.fixture(scope="module")
def database_url(postgres_server):
    return postgres_server.create_database("shared")


def _app(public_key, database_url, rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/%2F"):
    settings = TinySettings(
        app_env="test",
        database_url=database_url,
        rabbitmq_url=rabbitmq_url,
        jwt_public_key_file=public_key,
        log_format="json",
    )
    return build_app(settings)


@pytest.fixture
def app(public_key, database_url):
    return _app(public_key, database_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def log_lines():
    """The JSON lines the app's own log handler writes (the one configure_logging installed)."""
    handler = logging.getLogger().handlers[0]
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    handler.setStream(previous)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _error(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json")
    return response.get_json()["error"]


def test_an_unknown_route_answers_404_in_json_with_a_chinese_message(client):
    response = client.get("/api/v1/no-such-thing")

    assert response.status_code == 404
    assert _error(response) == {"code": "not_found", "message": "未找到该内容。", "details": None}


def test_a_wrong_method_answers_405_and_says_which_are_allowed(client):
    response = client.delete("/api/v1/things/3")

    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


def test_a_malformed_json_body_answers_400_in_json(client):
    response = client.post(
        "/api/v1/things", data='{"name": "路灯', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    error = _error(response)
    assert error["code"] in ("bad_request", "malformed_json")
    assert error["message"].endswith("。")


def test_a_body_that_breaks_the_schema_answers_422_with_the_field_in_chinese(client):
    response = client.post("/api/v1/things", json={"name": ""})

    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "invalid"
    assert "name" in json.dumps(error["details"], ensure_ascii=False)
    assert "长度" in json.dumps(error["details"], ensure_ascii=False)


def test_an_unexpected_exception_answers_500_without_internals_and_is_logged(client, log_lines):
    cid = str(uuid.uuid4())

    response = client.get("/boom", headers={CORRELATION_HEADER: cid})

    assert response.status_code == 500
    error = _error(response)
    assert error["code"] == "internal_error"
    assert cid in error["message"]
    assert "hunter2" not in response.get_data(as_text=True)
    assert "secret" not in response.get_data(as_text=True)
    logged = [line for line in log_lines() if line["level"] == "ERROR"]
    assert logged and logged[0]["correlation_id"] == cid
    assert "hunter2" in logged[0].get("exc_info", "")


@pytest.fixture
def client_without_database(public_key, amqp_url):
    """The app with its database on a port nobody listens on."""
    return _app(
        public_key, f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/none", amqp_url
    ).test_client()


def test_a_request_while_the_database_does_not_answer_is_503_in_chinese_not_a_500(
    client_without_database, log_lines
):
    """An outage is no bug: the person is told to try later, and no traceback is logged."""
    response = client_without_database.get("/api/v1/things")

    assert response.status_code == 503
    error = _error(response)
    assert error["code"] == "unavailable"
    assert error["message"] == "服务暂时不可用，请稍后再试。"
    assert not [line for line in log_lines() if line["level"] == "ERROR"]
    assert [line for line in log_lines() if "database unreachable" in line["message"]]


def test_the_correlation_id_is_echoed_and_on_every_log_line_of_the_request(client, log_lines):
    cid = str(uuid.uuid4())

    response = client.get("/api/v1/things/5", headers={CORRELATION_HEADER: cid})

    assert response.status_code == 200
    assert response.headers[CORRELATION_HEADER] == cid
    lines = [line for line in log_lines() if line["message"] == "thing 5 looked at"]
    assert len(lines) == 1
    assert lines[0]["correlation_id"] == cid
    assert lines[0]["service"] == "tiny"


def test_a_request_without_a_usable_correlation_id_gets_a_new_one(client):
    first = client.get("/healthz", headers={CORRELATION_HEADER: "<script>"})
    second = client.get("/healthz")

    ids = {first.headers[CORRELATION_HEADER], second.headers[CORRELATION_HEADER]}
    assert len(ids) == 2
    assert all(uuid.UUID(value) for value in ids)


def test_healthz_answers_200_without_touching_the_database_or_broker(public_key):
    app = _app(
        public_key,
        "postgresql+psycopg://nobody@127.0.0.1:1/none",
        f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F",
    )

    response = app.test_client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "tiny"}


def test_readyz_answers_200_when_postgresql_and_rabbitmq_answer(public_key, database_url, amqp_url):
    client = _app(public_key, database_url, amqp_url).test_client()

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "service": "tiny"}


def test_readyz_answers_503_with_the_reason_when_the_broker_port_is_closed(
    public_key, database_url
):
    client = _app(
        public_key, database_url, f"amqp://guest:guest@127.0.0.1:{_closed_port()}/%2F"
    ).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert [p for p in body["problems"] if p.startswith("broker:")]
    assert not [p for p in body["problems"] if p.startswith("database:")]
    assert body["message"] == "服务未就绪：消息队列（RabbitMQ）连接不上。"


def test_readyz_answers_503_naming_the_database_when_it_does_not_answer(public_key, amqp_url):
    client = _app(
        public_key, f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/none", amqp_url
    ).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert [p for p in response.get_json()["problems"] if p.startswith("database:")]
    assert response.get_json()["message"] == "服务未就绪：数据库连接不上。"


def test_metrics_count_requests_by_route_template_not_by_raw_path(client):
    for thing_id in (101, 102, 103):
        client.get(f"/api/v1/things/{thing_id}")

    text = client.get("/metrics").get_data(as_text=True)

    assert "http_requests_total{" in text
    assert 'route="/api/v1/things/<int:thing_id>"' in text
    assert "/api/v1/things/101" not in text
    assert "http_request_duration_seconds_bucket{" in text


def test_openapi_json_describes_the_routes(client):
    response = client.get("/openapi.json")

    assert response.status_code == 200
    spec = response.get_json()
    assert spec["info"]["title"] == "tiny"
    assert "/api/v1/things/{thing_id}" in spec["paths"]
    assert "bearerAuth" in spec["components"]["securitySchemes"]


def test_the_docs_page_is_served(client):
    response = client.get("/docs")

    assert response.status_code == 200
    assert "swagger" in response.get_data(as_text=True).lower()
