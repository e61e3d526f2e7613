"""The request guard every service gets from ``create_service_app``: a body size cap, a JSON
depth limit and text a database can store, each a 4xx with a Chinese message, never a 500.
Through HTTP on the tiny service (real PostgreSQL behind it)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from marshmallow import Schema, ValidationError

from shared.clock import LocalDateTime
from shared.fields import NOT_TEXT, Text, text_problem
from shared.pagination import encode_cursor
from shared.request_guard import json_depth
from shared.tests.tinyapp import TinySettings, build_app, make_keys, metadata


@pytest.fixture(scope="module")
def client(postgres_server, tmp_path_factory):
    import sqlalchemy as sa

    url = postgres_server.create_database("guard")
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    public = make_keys(tmp_path_factory.mktemp("keys"))[1]
    settings = TinySettings(
        app_env="test",
        database_url=url,
        jwt_public_key_file=public,
        log_format="text",
        max_json_body_bytes=4096,
        max_json_depth=8,
    )
    app = build_app(settings)
    yield app.test_client()
    app.extensions["db"].dispose()


def post_json(client, body: str | bytes):
    return client.post("/api/v1/things", data=body, content_type="application/json")


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in error["message"]), error
    return error


def test_a_good_body_still_goes_through(client):
    response = post_json(client, json.dumps({"name": "路灯 \ud83d\udca1"}))  # an emoji is fine
    assert response.status_code == 201
    assert response.get_json() == {"name": "路灯 💡"}


def test_a_body_over_the_cap_is_413(client):
    error = error_of(post_json(client, json.dumps({"name": "水" * 5000})), 413)
    assert error["code"] == "payload_too_large"
    form = client.post("/api/v1/things", data={"name": "水" * 5000})
    error_of(form, 413)


@pytest.mark.parametrize("depth", [9, 2000])  # 2000 levels: a RecursionError in json
def test_json_nested_deeper_than_the_limit_is_400_before_it_is_parsed(client, depth):
    error = error_of(post_json(client, "[" * depth + "]" * depth), 400)
    assert error["code"] == "json_too_deep" and "8" in error["message"]
    error_of(post_json(client, '{"name": ' + "[" * depth), 400)  # not even closed


def test_json_at_the_depth_limit_reaches_the_schema(client):
    body = {"name": "x", "extra": [[[[[[[1]]]]]]]}  # depth 8
    assert json_depth(json.dumps(body)) == 8
    response = post_json(client, json.dumps(body))
    assert response.status_code == 422  # the schema's answer: "extra" is unknown


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"name": "漏水\\u0000了"}', "name"),
        ('{"name": "\\ud800"}', "name"),
        ('{"name": "ok", "notes": [{"text": "\\udfff"}]}', "notes.0.text"),
        ('{"na\\u0000me": "ok"}', "na\ufffdme"),
    ],
)
def test_a_nul_or_a_lone_surrogate_in_json_is_422(client, body, field):
    error = error_of(post_json(client, body), 422)
    assert error["code"] == "invalid_text"
    assert error["details"] == {field: [NOT_TEXT]}


def test_a_nul_in_a_query_string_or_a_form_is_422(client):
    error = error_of(client.get("/api/v1/things?cursor=%00"), 422)
    assert error["details"] == {"cursor": [NOT_TEXT]}
    error_of(client.post("/api/v1/things", data={"name": "a\x00b"}), 422)


@pytest.mark.parametrize(
    "values",
    [
        [{"dt": 5}, {"uuid": 5}],
        [{"dt": "2026-01-01T00:00:00+00:00"}, {"uuid": ["x"]}],
        ["2026-01-01", "not a uuid"],
        [{"dt": "2026-01-01T00:00:00"}, {"uuid": str(uuid.uuid4())}],  # no zone
        [{"dt": "0001-01-01T00:00:00+08:00"}, {"uuid": str(uuid.uuid4())}],  # before year 1 UTC
        [1, 2],
        [True, {"dt": "2026-01-01T00:00:00+00:00"}],
        [{"a": 1}, {"uuid": str(uuid.uuid4())}],
        [[[[[[1]]]]], 2],
    ],
)
def test_a_cursor_with_values_of_the_wrong_kind_is_400(client, values):
    cursor = encode_cursor(values)
    error = error_of(client.get("/api/v1/things", query_string={"cursor": cursor}), 400)
    assert error["code"] == "invalid_cursor"


def test_a_deeply_nested_or_huge_cursor_is_400(client):
    import base64

    for raw in ("[" * 100_000 + "]" * 100_000, json.dumps(["x" * 5000, 1])):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        error = error_of(client.get("/api/v1/things", query_string={"cursor": cursor}), 400)
        assert error["code"] == "invalid_cursor"


def test_a_cursor_at_the_calendar_limits_is_a_correct_empty_page(client):
    for moment in (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)):
        cursor = encode_cursor([moment, uuid.UUID(int=0)])
        response = client.get("/api/v1/things", query_string={"cursor": cursor})
        assert response.status_code == 200, response.get_data(as_text=True)


def test_json_depth_counts_brackets_outside_strings_only():
    assert json_depth(b"1") == 0
    assert json_depth(b"[]") == 1
    assert json_depth('{"a": [1, "[[[{{{"], "b": {"c": "\\"]]"}}') == 2
    assert json_depth(b"[" * 50) == 50
    assert json_depth(b'["a\\"]]]", [[1]]]') == 3
    assert json_depth(b'["never closed [[[[') == 1


@pytest.mark.parametrize(
    "raw",
    [
        b'"' + b'\\"' * 500_000,  # one string, never closed, full of escaped quotes
        b'"\\' * 350_000,
        b"[]" * 500_000,
        b"[" * 1_000_000,
        (b"\\" * 10 + b'"') * 90_000,
    ],
)
def test_json_depth_takes_linear_time_on_a_megabyte_of_anything(raw):
    started = time.perf_counter()
    json_depth(raw)
    assert time.perf_counter() - started < 1.0


def test_the_text_field_refuses_nul_and_lone_surrogates_in_chinese():
    class NoteIn(Schema):
        text = Text(required=True)

    assert NoteIn().load({"text": "已派人勘察 💡"}) == {"text": "已派人勘察 💡"}
    for bad in ("a\x00b", "\ud800", "x\udfffy"):
        with pytest.raises(ValidationError) as caught:
            NoteIn().load({"text": bad})
        assert caught.value.messages == {"text": [NOT_TEXT]}
        assert text_problem(bad) == NOT_TEXT
    assert text_problem("正常的文字") is None


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00", "0001-01-01T07:59:59+08:00"])
def test_a_time_before_year_one_in_utc_is_a_validation_error(value):
    class DueIn(Schema):
        due_at = LocalDateTime()

    with pytest.raises(ValidationError) as caught:
        DueIn().load({"due_at": value})
    assert "due_at" in caught.value.messages
    assert DueIn().load({"due_at": "9999-12-31T23:59:59"})["due_at"].year == 9999
