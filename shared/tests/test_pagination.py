"""Keyset pagination on real PostgreSQL: every row exactly once, in order, even with ties."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from itertools import chain

import pytest
import sqlalchemy as sa

from shared.db import Database
from shared.errors import BadRequest
from shared.pagination import KeysetQuery, encode_cursor, keyset_page
from shared.tests.tinyapp import TinySettings, build_app, make_keys, metadata, things

START = datetime(2022, 2, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def database_url(postgres_server):
    url = postgres_server.create_database("paging")
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    rows = [
        # 10 distinct times, 5 rows each: the id must break the ties.
        {"id": uuid.uuid4(), "name": f"事项 {n}", "created_at": START + timedelta(hours=n // 5)}
        for n in range(50)
    ]
    with engine.begin() as conn:
        conn.execute(things.insert(), rows)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def expected_ids(database_url) -> list[str]:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        ids = conn.execute(
            sa.select(things.c.id).order_by(things.c.created_at, things.c.id)
        ).scalars()
        result = [str(i) for i in ids]
    engine.dispose()
    return result


@pytest.fixture(scope="module")
def client(database_url, tmp_path_factory):
    public = make_keys(tmp_path_factory.mktemp("keys"))[1]
    settings = TinySettings(
        app_env="test", database_url=database_url, jwt_public_key_file=public, log_format="text"
    )
    return build_app(settings).test_client()


def test_walking_the_pages_returns_every_row_exactly_once_in_order(client, expected_ids):
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        response = client.get("/api/v1/things", query_string=query)
        assert response.status_code == 200
        body = response.get_json()
        seen.extend(item["id"] for item in body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == expected_ids
    assert len(set(seen)) == 50
    assert pages == 8


def test_a_page_that_ends_exactly_at_the_last_row_has_no_next_cursor(client):
    body = client.get("/api/v1/things", query_string={"limit": 50}).get_json()

    assert len(body["items"]) == 50
    assert body["next_cursor"] is None


def test_descending_pages_return_every_row_exactly_once_newest_first(database_url, expected_ids):
    db = Database(database_url, metadata=metadata, producer="paging")
    seen: list[str] = []
    cursor = None
    with db.session() as session:
        while True:
            rows, cursor = keyset_page(
                session,
                sa.select(things),
                order=[things.c.created_at.desc(), things.c.id.desc()],
                key=lambda row: [row.created_at, row.id],
                cursor=cursor,
                limit=9,
                scalars=False,
            )
            seen.extend(str(row.id) for row in rows)
            if cursor is None:
                break
    db.dispose()

    assert seen == list(reversed(expected_ids))


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%not-base64%%%",
        "bm90IGpzb24",  # base64 of "not json"
        encode_cursor(["only one value"]),
        "eyJhIjoxfQ",  # base64 of {"a":1}: JSON, but not a list
    ],
)
def test_a_bad_cursor_answers_400_invalid_cursor(client, cursor):
    response = client.get("/api/v1/things", query_string={"cursor": cursor})

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_cursor"
    assert error["message"] == "分页参数 cursor 无效。"


# --- a KeysetQuery: the same pages from statements built once ------------------------------------

NAMED = sa.select(things).where(things.c.name.like(sa.bindparam("pattern")))
ASCENDING = KeysetQuery(NAMED, order=[things.c.created_at.asc(), things.c.id.asc()])
DESCENDING = KeysetQuery(NAMED, order=[things.c.created_at.desc(), things.c.id.desc()])


def _walk(url: str, query: KeysetQuery, limit: int, pattern: str = "事项%") -> list[list[str]]:
    """Every page of ``query``, as lists of ids."""
    db = Database(url, metadata=metadata, producer="paging")
    pages: list[list[str]] = []
    cursor = None
    try:
        with db.session() as session:
            while True:
                rows, cursor = keyset_page(
                    session,
                    query,
                    key=lambda row: [row.created_at, row.id],
                    cursor=cursor,
                    limit=limit,
                    scalars=False,
                    params={"pattern": pattern},
                )
                pages.append([str(row.id) for row in rows])
                if cursor is None:
                    return pages
                assert len(pages) <= 50, "the cursor never reaches the end"
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory, database_url):
    """The same 50 rows in a SQLite file (the embedded default's engine)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('paging') / 'things.db'}"
    source, target = sa.create_engine(database_url), sa.create_engine(url)
    metadata.create_all(target)
    with source.connect() as read, target.begin() as write:
        write.execute(things.insert(), [dict(r._mapping) for r in read.execute(sa.select(things))])
    source.dispose()
    target.dispose()
    return url


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_a_keyset_query_walks_every_row_once_in_both_directions(
    engine, database_url, sqlite_url, expected_ids
):
    url = database_url if engine == "postgresql" else sqlite_url

    forward = _walk(url, ASCENDING, limit=7)
    backward = _walk(url, DESCENDING, limit=9)

    assert [len(page) for page in forward] == [7] * 7 + [1]
    assert list(chain(*forward)) == expected_ids
    assert list(chain(*backward)) == list(reversed(expected_ids))


def test_a_keyset_query_pages_exactly_as_a_select_built_each_time(database_url):
    db = Database(database_url, metadata=metadata, producer="paging")

    def built_each_time(session, cursor):
        return keyset_page(
            session,
            NAMED.where(things.c.name.like("事项 1%")),
            order=[things.c.created_at.asc(), things.c.id.asc()],
            key=lambda row: [row.created_at, row.id],
            cursor=cursor,
            limit=4,
            scalars=False,
            params={"pattern": "事项%"},
        )

    try:
        with db.session() as session:
            built, cursor = built_each_time(session, None)
            after, _ = built_each_time(session, cursor)
    finally:
        db.dispose()

    once = _walk(database_url, ASCENDING, limit=4, pattern="事项 1%")

    assert once[0] == [str(r.id) for r in built]
    assert once[1] == [str(r.id) for r in after]
    assert len(list(chain(*once))) == 11  # 事项 1 and 事项 10-19, and only those


def test_a_keyset_query_refuses_a_cursor_that_does_not_fit_its_columns(database_url):
    db = Database(database_url, metadata=metadata, producer="paging")
    try:
        with db.session() as session, pytest.raises(BadRequest) as refused:
            keyset_page(
                session,
                ASCENDING,
                key=lambda row: [row.created_at, row.id],
                cursor=encode_cursor(["not a time", str(uuid.uuid4())]),
                limit=5,
                params={"pattern": "%"},
            )
    finally:
        db.dispose()

    assert refused.value.code == "invalid_cursor"
