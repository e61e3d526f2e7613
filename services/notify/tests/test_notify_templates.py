"""Every kind renders in Chinese with and without its variables, and its WeChat fields fit
WeChat's limits (WECHAT.md) however long the values are (no database needed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from notify.templates import (
    KINDS,
    TEMPLATES,
    fit_wechat_value,
    render,
    sms_parameters,
    wechat_data,
    wechat_ready,
)

FULL = {
    "ticket_no": "SK20261129-0007",
    "category": "用水用电",
    "village": "沙口集村",
    "due_at": datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
    "difficulty": 3,
    "rating": "满意",
    "rating_note": "您的评价：满意。",
    "reason": "超期未办结",
    "level": "包片领导",
    "points": 3,
    "points_change": "增加 3 分",
    "period": "2026年11月",
    "count": 2,
    "title": "沙口村自来水管网改造完工",
    "duplicate_note": "该事项与编号 SK20261128-0003 的事项重复。",
}
LONG = {
    **FULL,
    "ticket_no": "SK20261129-0007-" + "X" * 60,
    "village": "非常长的村名" * 10,
    "reason": "群众反映的问题涉及多个部门需要协调处理" * 5,
    "title": "关于做好今冬明春农村饮水安全保障工作的通知" * 3,
    "category": "<script>alert(1)</script>",
}
CHINESE = re.compile(r"[\u4e00-\u9fff]")
LIMITS = {"thing": 20, "phrase": 5, "name": 10, "character_string": 32, "number": 32}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_chinese_with_its_variables(kind):
    rendered = render(kind, FULL)
    assert CHINESE.search(rendered.title) and CHINESE.search(rendered.body)
    assert "{" not in rendered.body + rendered.title and "None" not in rendered.body
    for name in re.findall(r"{(\w+)}", TEMPLATES[kind].body):
        value = FULL[name]
        shown = "2026年11月30日 15:00" if isinstance(value, datetime) else str(value)
        assert shown in rendered.body, (kind, name)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reads_well_without_any_variable(kind):
    rendered = render(kind, {})
    assert "{" not in rendered.body + rendered.title
    assert "None" not in rendered.body + rendered.title
    assert CHINESE.search(rendered.body)


@pytest.mark.parametrize("kind", KINDS)
def test_wechat_fields_fit_their_limits_however_long_the_values(kind):
    for variables in (FULL, LONG):
        data = wechat_data(kind, variables)
        assert set(data) == set(TEMPLATES[kind].wechat)
        for key, field in data.items():
            value = field["value"]
            kind_of_key = key.rstrip("0123456789")
            if kind_of_key in LIMITS:
                assert 0 < len(value) <= LIMITS[kind_of_key], (kind, key, value)
            if kind_of_key == "character_string":
                assert value.isascii(), value
            if kind_of_key == "number":
                assert value.isdigit(), value
            if kind_of_key == "time":
                assert value == "2026年11月30日 15:00"


@pytest.mark.parametrize("kind", KINDS)
def test_sms_parameters_are_short(kind):
    params = sms_parameters(kind, LONG)
    assert set(params) == set(TEMPLATES[kind].sms)
    assert all(len(v) <= 35 for v in params.values())


def test_a_message_whose_time_is_unknown_is_not_sent_by_wechat():
    assert wechat_ready("assigned", FULL)
    assert not wechat_ready("assigned", {**FULL, "due_at": None})
    assert wechat_ready("resolved", {})  # no time field


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("thing1", "一" * 25, "一" * 19 + "…"),
        ("phrase3", "已经办结完成了", "已经办结完"),
        ("character_string1", "编号SK-001", "SK-001"),
        ("number2", "难度3级", "3"),
        ("name4", "欧阳" * 6, "欧阳" * 5),
        ("thing5", "   ", "—"),
    ],
)
def test_values_are_cut_or_mapped_to_what_wechat_takes(key, value, expected):
    assert fit_wechat_value(key, value) == expected
