"""Every message notify sends, in one place: Chinese title and body per kind, the WeChat
subscribe-message fields and the SMS parameters, all rendered from the same variables.

Variables (``variables_for`` builds them; missing ones render as a neutral word, never as
``None``): ``ticket_no``, ``category`` (label), ``village``, ``due_at`` (Asia/Shanghai),
``difficulty``, ``rating`` (label), ``reason``, ``level`` (label), ``holder``, ``points``,
``period`` (e.g. 2026年11月), ``rank``, ``count``, ``title``, ``duplicate_of_ticket_no``.

WeChat's value limits (WECHAT.md) are applied by ``fit_wechat_value`` from the key's type
(``thing`` ≤ 20 characters, ``phrase`` ≤ 5, ``character_string`` ≤ 32 ASCII, ``name`` ≤ 10,
``number`` ≤ 32 digits, ``time`` a Shanghai time), so 47003 does not happen in practice.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.clock import SHANGHAI, to_local
from shared.contract import CATEGORIES, LEVEL_LABELS, RATINGS

CHANNELS = ("inbox", "wechat", "sms", "webhook")


@dataclass(frozen=True)
class Template:
    label: str  # what the preferences screen calls this kind
    title: str
    body: str
    link_type: str | None = "issue"
    # WeChat subscribe-message data: key (type + number, as in the template) → format string.
    wechat: dict[str, str] = field(default_factory=dict)
    # SMS template parameters (``${name}`` in the provider's template) → format string.
    sms: dict[str, str] = field(default_factory=dict)
    # Urgent messages (overdue alerts) are sent in quiet hours too.
    urgent: bool = False


TEMPLATES: dict[str, Template] = {
    "reported": Template(
        label="新上报事项",
        title="新事项待交办",
        body="{village}群众反映了一件{category}事项（编号 {ticket_no}），请及时交办。",
        wechat={"character_string1": "{ticket_no}", "thing2": "{category}", "thing3": "{village}"},
        sms={"ticket": "{ticket_no}", "category": "{category}"},
    ),
    "assigned": Template(
        label="交办任务",
        title="您有新的交办任务",
        body="{village}的{category}事项（编号 {ticket_no}）已交办，难度 {difficulty} 级，"
        "请于 {due_at} 前办结。",
        wechat={
            "character_string1": "{ticket_no}",
            "thing2": "{category}",
            "time3": "{due_at}",
            "number4": "{difficulty}",
        },
        sms={"ticket": "{ticket_no}", "due": "{due_at}"},
    ),
    "reminder": Template(
        label="即将到期提醒",
        title="事项即将到期",
        body="{category}事项（编号 {ticket_no}）将于 {due_at} 到期，请抓紧办理。",
        wechat={"character_string1": "{ticket_no}", "time2": "{due_at}", "phrase3": "即将到期"},
        sms={"ticket": "{ticket_no}", "due": "{due_at}"},
    ),
    "overdue": Template(
        label="超期预警",
        title="事项已超期",
        body="{category}事项（编号 {ticket_no}）已于 {due_at} 超期未办结，请立即处理。",
        wechat={"character_string1": "{ticket_no}", "time2": "{due_at}", "phrase3": "已超期"},
        sms={"ticket": "{ticket_no}", "due": "{due_at}"},
        urgent=True,
    ),
    "escalated": Template(
        label="事项升级",
        title="有事项升级到您这里",
        body="{village}的{category}事项（编号 {ticket_no}）已升级至{level}，原因：{reason}。"
        "请于 {due_at} 前办结。",
        wechat={"character_string1": "{ticket_no}", "thing2": "{reason}", "time3": "{due_at}"},
        sms={"ticket": "{ticket_no}", "level": "{level}"},
    ),
    "resolved": Template(
        label="办结通知",
        title="您反映的事项已办结",
        body="您反映的{category}事项（编号 {ticket_no}）已办结，请对办理结果进行评价。",
        wechat={"character_string1": "{ticket_no}", "thing2": "{category}", "phrase3": "已办结"},
        sms={"ticket": "{ticket_no}"},
    ),
    "rejected": Template(
        label="不予受理",
        title="您反映的事项未予受理",
        body="您反映的{category}事项（编号 {ticket_no}）未予受理，原因：{reason}。{duplicate_note}",
        wechat={"character_string1": "{ticket_no}", "thing2": "{reason}", "phrase3": "不予受理"},
        sms={"ticket": "{ticket_no}"},
    ),
    "closed": Template(
        label="事项关闭",
        title="您反映的事项已关闭",
        body="您反映的{category}事项（编号 {ticket_no}）已关闭。{rating_note}感谢您的监督。",
        wechat={"character_string1": "{ticket_no}", "phrase2": "已关闭", "thing3": "{category}"},
        sms={"ticket": "{ticket_no}"},
    ),
    "reopened": Template(
        label="重新办理",
        title="事项需重新办理",
        body="{category}事项（编号 {ticket_no}）需重新办理，原因：{reason}。请于 {due_at} 前办结。",
        wechat={"character_string1": "{ticket_no}", "thing2": "{reason}", "time3": "{due_at}"},
        sms={"ticket": "{ticket_no}", "due": "{due_at}"},
    ),
    "urged": Template(
        label="群众催办",
        title="群众催办",
        body="群众对{category}事项（编号 {ticket_no}）进行了第 {count} 次催办，请尽快办理。",
        wechat={"character_string1": "{ticket_no}", "thing2": "{category}", "number3": "{count}"},
        sms={"ticket": "{ticket_no}", "count": "{count}"},
    ),
    "points": Template(
        label="积分变动",
        title="积分变动",
        body="您的积分{points_change}，原因：{reason}（{period}）。",
        link_type="board",
        wechat={"thing1": "{points_change}", "thing2": "{reason}"},
        sms={"points": "{points}"},
    ),
    "leaderboard": Template(
        label="红黑榜发布",
        title="{period}红黑榜已发布",
        body="{period}网格员积分红黑榜已发布，快去看看您的排名吧。",
        link_type="board",
        wechat={"thing1": "{period}红黑榜已发布"},
        sms={"period": "{period}"},
    ),
    "callbacks": Template(
        label="回访提醒",
        title="今日待回访事项",
        body="截至今天，共有 {count} 件已关闭事项等待回访（回头看），最早的关闭于 {due_at}。",
        link_type="callbacks",
        wechat={"number1": "{count}", "time2": "{due_at}"},
        sms={"count": "{count}"},
    ),
    "news": Template(
        label="镇村新闻",
        title="魅力沙口集：{title}",
        body="乡镇发布了新的消息：{title}",
        link_type="news",
        wechat={"thing1": "{title}"},
        sms={"title": "{title}"},
    ),
}

KINDS: tuple[str, ...] = tuple(TEMPLATES)

NEUTRAL = {
    "ticket_no": "—",
    "category": "群众",
    "village": "本镇",
    "due_at": "规定时限",
    "difficulty": "—",
    "rating": "",
    "reason": "未说明",
    "level": "上一级",
    "holder": "",
    "points": "0",
    "points_change": "有变动",
    "period": "本月",
    "rank": "—",
    "count": "1",
    "title": "新消息",
    "duplicate_note": "",
    "rating_note": "",
}


@dataclass(frozen=True)
class Rendered:
    title: str
    body: str


class _Vars(dict):
    def __missing__(self, key: str) -> str:
        return NEUTRAL.get(key, "")


def _text(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, datetime):
        return to_local(value).strftime("%Y年%m月%d日 %H:%M")
    return str(value)


def _fill(pattern: str, variables: dict[str, Any]) -> str:
    values = _Vars({k: _text(v) for k, v in variables.items() if _text(v) != ""})
    return string.Formatter().vformat(pattern, (), values)


def render(kind: str, variables: dict[str, Any]) -> Rendered:
    """The inbox title and body of a kind (also the SMS and webhook text)."""
    template = TEMPLATES[kind]
    return Rendered(
        title=_fill(template.title, variables)[:64], body=_fill(template.body, variables)
    )


def sms_parameters(kind: str, variables: dict[str, Any]) -> dict[str, str]:
    """The SMS template's parameters; providers cap a parameter at 35 characters."""
    return {key: _fill(p, variables)[:35] for key, p in TEMPLATES[kind].sms.items()}


# --- WeChat ----------------------------------------------------------------------------------

_LIMITS = {"thing": 20, "name": 10, "phrase": 5, "character_string": 32, "letter": 32}
_NUMBER = re.compile(r"[^0-9.]")
_NOT_ASCII_PRINTABLE = re.compile(r"[^\x21-\x7e]")
_NOT_LETTER = re.compile(r"[^A-Za-z]")
_NOT_PHONE = re.compile(r"[^0-9+\-() ]")


def _key_type(key: str) -> str:
    return key.rstrip("0123456789")


def fit_wechat_value(key: str, value: str) -> str:
    """Cut or map a value to what WeChat accepts for the key's type (WECHAT.md)."""
    kind = _key_type(key)
    if kind == "number":
        digits = _NUMBER.sub("", value)[:32]
        return digits or "0"
    if kind == "character_string":
        return _NOT_ASCII_PRINTABLE.sub("", value)[:32] or "-"
    if kind == "letter":
        return _NOT_LETTER.sub("", value)[:32] or "x"
    if kind == "phone_number":
        return _NOT_PHONE.sub("", value)[:17]
    if kind in _LIMITS:
        limit = _LIMITS[kind]
        value = value.strip()
        if len(value) > limit:
            value = value[: limit - 1] + "…" if kind == "thing" else value[:limit]
        return value or "—"
    return value


def wechat_data(kind: str, variables: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{"thing2": {"value": "用水用电"}, ...}`` for ``subscribeMessage.send``. ``time`` keys
    take the raw datetime and show it as ``2026年11月28日 15:01`` in Asia/Shanghai."""
    data: dict[str, dict[str, str]] = {}
    for key, pattern in TEMPLATES[kind].wechat.items():
        if _key_type(key) in ("time", "date"):
            name = pattern.strip("{}")
            moment = variables.get(name)
            if isinstance(moment, datetime):
                local = moment.astimezone(SHANGHAI)
                text = local.strftime(
                    "%Y年%m月%d日 %H:%M" if key.startswith("time") else "%Y年%m月%d日"
                )
            else:
                text = _fill(pattern, variables)
            data[key] = {"value": text}
            continue
        data[key] = {"value": fit_wechat_value(key, _fill(pattern, variables))}
    return data


def wechat_ready(kind: str, variables: dict[str, Any]) -> bool:
    """Whether every ``time``/``date`` field of the kind's WeChat message has its time: WeChat
    refuses a word there (47003), so such a message stays in the inbox only."""
    return all(
        isinstance(variables.get(pattern.strip("{}")), datetime)
        for key, pattern in TEMPLATES[kind].wechat.items()
        if _key_type(key) in ("time", "date")
    )


# --- variables -------------------------------------------------------------------------------


def category_label(code: str | None) -> str | None:
    return CATEGORIES.get(code or "", None)


def level_label(code: str | None) -> str | None:
    return LEVEL_LABELS.get(code or "", None)


def rating_label(code: str | None) -> str | None:
    return RATINGS.get(code or "", None)


def period_label(period: str | None) -> str | None:
    """``month:2026-11`` → ``2026年11月``."""
    if not period:
        return None
    value = period.split(":", 1)[-1]
    match = re.fullmatch(r"(\d{4})-(\d{2})", value)
    return f"{match.group(1)}年{int(match.group(2))}月" if match else value
