"""``shared.fields.OutSchema`` answers exactly what marshmallow's own ``Schema.dump`` answers,
for every kind of object and field the services hand it: ORM-like objects, dicts, SQLAlchemy
rows, missing values and defaults, ``attribute`` / ``data_key``, dotted attributes, computed
fields, nesting, ``many``, ``only`` / ``exclude`` and dump hooks."""

from __future__ import annotations

import uuid
from collections import UserDict
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from marshmallow import Schema, fields, post_dump, pre_dump

from shared.clock import LocalDateTime
from shared.fields import Derived, OutSchema

WHEN = datetime(2026, 11, 28, 16, 30, tzinfo=UTC)  # 00:30 the next day in Shanghai


def twins(declared: dict, **hooks) -> tuple[type[Schema], type[Schema]]:
    """The same fields on marshmallow's Schema and on OutSchema (each class copies them)."""
    plain = type("Plain", (Schema,), {**declared, **hooks})
    fast = type("Fast", (OutSchema,), {**declared, **hooks})
    return plain, fast


def item_fields() -> dict:
    return {
        "id": fields.UUID(),
        "state": fields.String(),
        "state_label": Derived(lambda i: {"reported": "已受理"}.get(_get(i, "state"), "其他")),
        "difficulty": fields.Integer(allow_none=True),
        "lat": fields.Float(allow_none=True),
        "done": fields.Boolean(allow_none=True),
        "photo_ids": fields.List(fields.String()),
        "reported_at": LocalDateTime(),
        "due_at": LocalDateTime(allow_none=True),
        "handler_name": fields.String(attribute="assignee_name", allow_none=True),
        "from_": fields.String(data_key="from", load_default=None),
        "count": fields.Integer(dump_default=0),
        "tags": fields.List(fields.String(), dump_default=list),
        "secret": fields.String(load_only=True),
        "shouted": fields.Function(lambda i: str(_get(i, "state")).upper()),
    }


def _get(obj, name):
    return obj[name] if hasattr(obj, "keys") else getattr(obj, name)


VALUES = {
    "id": uuid.UUID(int=7),
    "state": "reported",
    "difficulty": None,
    "lat": 36.25,
    "done": False,
    "photo_ids": ["a", "b"],
    "reported_at": WHEN,
    "due_at": None,
    "assignee_name": "张三",
    "from_": "2026-11-01",
    "secret": "不外传",
}


def as_row(values: dict) -> sa.Row:
    engine = sa.create_engine("sqlite://")
    names = list(values)
    select = ", ".join(f":p{i} AS {name}" for i, name in enumerate(names))
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT {select}"), {f"p{i}": values[n] for i, n in enumerate(names)}
        ).one()
    engine.dispose()
    return row


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda v: SimpleNamespace(**v), id="object"),
        pytest.param(dict, id="dict"),
        pytest.param(UserDict, id="mapping that is not a dict"),
    ],
)
def test_one_item_is_dumped_as_marshmallow_dumps_it(make) -> None:
    plain, fast = twins(item_fields())
    obj = make(dict(VALUES))
    expected = plain().dump(obj)
    assert fast().dump(obj) == expected
    assert list(fast().dump(obj)) == list(expected)  # the same keys in the same order
    assert expected["handler_name"] == "张三" and expected["from"] == "2026-11-01"
    assert expected["reported_at"] == "2026-11-29T00:30:00+08:00"
    assert expected["count"] == 0 and expected["tags"] == [] and "secret" not in expected


def test_a_sqlalchemy_row_is_read_by_its_column_names() -> None:
    declared = {
        "id": fields.String(),
        "count": fields.Integer(),  # a column named like a tuple method
        "handler_name": fields.String(attribute="assignee_name"),
        "label": Derived(lambda row: f"#{row.id}"),
    }
    plain, fast = twins(declared)
    row = as_row({"id": "T-1", "count": 3, "assignee_name": "李四"})
    assert (
        fast().dump(row)
        == plain().dump(row)
        == {
            "id": "T-1",
            "count": 3,
            "handler_name": "李四",
            "label": "#T-1",
        }
    )


def test_missing_values_are_left_out_or_defaulted_the_same_way() -> None:
    plain, fast = twins(item_fields())
    sparse = {"id": uuid.UUID(int=1), "state": "reported", "reported_at": WHEN}
    for obj in (sparse, SimpleNamespace(**sparse)):
        expected = plain().dump(obj)
        assert fast().dump(obj) == expected
        assert "difficulty" not in expected and expected["count"] == 0


def test_dotted_attributes_walk_the_object() -> None:
    declared = {"village": fields.String(attribute="village.name")}
    plain, fast = twins(declared)
    for obj in (
        SimpleNamespace(village=SimpleNamespace(name="沙口集村")),
        {"village": {"name": "沙口集村"}},
    ):
        assert fast().dump(obj) == plain().dump(obj) == {"village": "沙口集村"}


def test_nesting_many_only_and_exclude() -> None:
    child_plain, child_fast = twins({"id": fields.Integer(), "note": fields.String()})
    page = {
        "items": [SimpleNamespace(id=n, note=f"第{n}条") for n in range(3)],
        "first": {"id": 9, "note": "置顶"},
        "next_cursor": None,
    }

    def page_fields(child: type[Schema]) -> dict:
        return {
            "items": fields.List(fields.Nested(child)),
            "first": fields.Nested(child, only=("id",)),
            "next_cursor": fields.String(allow_none=True),
        }

    plain, _ = twins(page_fields(child_plain))
    _, fast = twins(page_fields(child_fast))
    assert fast().dump(page) == plain().dump(page)
    assert fast().dump(page)["first"] == {"id": 9}
    items = page["items"]
    assert child_fast(many=True).dump(items) == child_plain(many=True).dump(items)
    assert child_fast(exclude=("note",)).dump(items[0]) == {"id": 0}
    assert fast().dump({**page, "items": [], "first": None}) == {
        "items": [],
        "first": None,
        "next_cursor": None,
    }


def test_dump_hooks_still_run() -> None:
    @pre_dump
    def wrap(self, obj, **_):
        return {"id": obj}

    @post_dump
    def stamp(self, data, **_):
        return {**data, "checked": True}

    plain, fast = twins({"id": fields.Integer()}, wrap=wrap, stamp=stamp)
    assert fast().dump(5) == plain().dump(5) == {"id": 5, "checked": True}
    assert fast(many=True).dump([1, 2]) == plain(many=True).dump([1, 2])


def test_a_schema_instance_dumps_many_objects_of_different_kinds() -> None:
    """The plan is per schema instance and the way values are looked up is chosen per object:
    one instance may dump a dict, then a row, then an object."""
    declared = {
        "id": fields.String(),
        "handler_name": fields.String(attribute="assignee_name"),
        "state_label": Derived(lambda i: _get(i, "id") + "号"),
        "urges": fields.Integer(dump_default=0),
    }
    plain, fast = twins(declared)
    schema = fast()
    values = {"id": "T-2", "assignee_name": "王五"}
    for obj in (values, as_row(values), SimpleNamespace(**values), UserDict(values)):
        assert (
            schema.dump(obj)
            == plain().dump(obj)
            == {
                "id": "T-2",
                "handler_name": "王五",
                "state_label": "T-2号",
                "urges": 0,
            }
        )
