"""Marshmallow schemas for scoring's routes: what each accepts and answers (Asia/Shanghai)."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from scoring.boards import KPI_SCOPES, SCOPES
from scoring.domain import RULE_CODES
from shared.clock import LocalDateTime
from shared.fields import OutSchema, Text

PERIOD_HELP = "统计周期（北京时间）：month:2026-11、quarter:2026-Q4、year:2026 或 all；不填为本月。"
RATE_HELP = "比率 0-1，保留四位小数；分母为 0 时为 null。"


class _In(Schema):
    class Meta:
        unknown = RAISE


class _Query(Schema):
    class Meta:
        unknown = EXCLUDE


class PageQuery(_Query):
    cursor = fields.String(load_default=None, validate=validate.Length(max=1400))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))


# --- rules ---------------------------------------------------------------------------------------


class RuleIn(_In):
    points = fields.Integer(
        required=True,
        validate=validate.Range(min=-100, max=100),
        metadata={"description": "新版本的分值（含义见规则说明 meaning）。"},
    )
    effective_from = fields.Date(
        load_default=None,
        allow_none=True,
        metadata={"description": "生效日期（北京时间），不早于明天；不填为明天。"},
    )
    note = Text(load_default=None, allow_none=True, validate=validate.Length(max=200))


class RuleVersionOut(OutSchema):
    version = fields.Integer()
    points = fields.Integer()
    effective_from = fields.Date()
    note = Text(allow_none=True)
    changed_by = fields.UUID(allow_none=True)
    changed_at = LocalDateTime()


class RuleOut(OutSchema):
    code = fields.String(metadata={"enum": list(RULE_CODES)})
    label = fields.String(metadata={"description": "规则名称"})
    meaning = fields.String(metadata={"description": "分值的含义"})
    points = fields.Integer(metadata={"description": "今天生效的分值"})
    version = fields.Integer(metadata={"description": "今天生效的版本（0：内置默认）"})
    effective_from = fields.Date()
    versions = fields.List(fields.Nested(RuleVersionOut), metadata={"description": "全部版本"})


# --- boards --------------------------------------------------------------------------------------


class LeaderboardQuery(PageQuery):
    limit = fields.Integer(
        load_default=None,
        validate=validate.Range(min=1, max=200),
        metadata={"description": "每页行数；不填为 LEADERBOARD_DEFAULT_LIMIT。"},
    )
    period = fields.String(load_default=None, metadata={"description": PERIOD_HELP})
    scope = fields.String(
        load_default="worker",
        validate=validate.OneOf(SCOPES),
        metadata={"description": "worker：网格员个人；grid：网格；village：村。"},
    )
    village_id = fields.UUID(load_default=None, metadata={"description": "只看该村（村内排名）"})


class BoardRowOut(OutSchema):
    rank = fields.Integer(
        metadata={"description": "名次：按积分、再按按时办结数排序，两者都相同者并列（1,1,3）"}
    )
    id = fields.UUID(metadata={"description": "网格员、网格或村的 id"})
    name = Text()
    village_id = fields.UUID(allow_none=True)
    village_name = fields.String(allow_none=True)
    points = fields.Integer()
    resolved_on_time = fields.Integer(metadata={"description": "按时办结数"})
    satisfaction_rate = fields.Float(
        allow_none=True,
        metadata={"description": "满意率 =（满意 + 基本满意）/ 评价数。" + RATE_HELP},
    )
    rank_change = fields.Integer(
        allow_none=True,
        metadata={"description": "与上一周期相比的名次变化，正数为上升；all 周期为 null。"},
    )


class LeaderboardOut(OutSchema):
    period = fields.String()
    scope = fields.String()
    items = fields.List(fields.Nested(BoardRowOut))
    next_cursor = fields.String(allow_none=True)


class KpiQuery(_Query):
    period = fields.String(load_default=None, metadata={"description": PERIOD_HELP})
    scope = fields.String(load_default="worker", validate=validate.OneOf(KPI_SCOPES))
    village_id = fields.UUID(load_default=None)


class KpiRowOut(OutSchema):
    scope = fields.String()
    id = fields.UUID(allow_none=True)
    name = Text()
    village_id = fields.UUID(allow_none=True)
    village_name = fields.String(allow_none=True)
    points = fields.Integer()
    assigned = fields.Integer(metadata={"description": "本周期交办的事项数"})
    responded = fields.Integer(metadata={"description": "其中在响应时限内开始办理的"})
    resolved = fields.Integer(metadata={"description": "办结数（含超期）"})
    resolved_on_time = fields.Integer()
    rated = fields.Integer()
    satisfied = fields.Integer(metadata={"description": "满意 + 基本满意"})
    reopened = fields.Integer(
        metadata={"description": "办结后重新办理（不满意、回访未通过、管理员）"}
    )
    callbacks = fields.Integer()
    callbacks_passed = fields.Integer()
    response_rate = fields.Float(
        allow_none=True,
        metadata={
            "description": "响应率 = 在 RESPONSE_LIMIT_HOURS 小时内开始办理的交办数 / 交办数"
            "（按交办时间计入周期）。" + RATE_HELP
        },
    )
    on_time_rate = fields.Float(
        allow_none=True, metadata={"description": "按时办结率 = 按时办结数 / 办结数。" + RATE_HELP}
    )
    satisfaction_rate = fields.Float(
        allow_none=True,
        metadata={"description": "满意率 =（满意 + 基本满意）/ 评价数。" + RATE_HELP},
    )
    reopen_rate = fields.Float(
        allow_none=True, metadata={"description": "返工率 = 重新办理数 / 办结数。" + RATE_HELP}
    )
    callback_pass_rate = fields.Float(
        allow_none=True,
        metadata={"description": "回访通过率 = 回访通过数 / 回访数。" + RATE_HELP},
    )
    composite = fields.Float(
        allow_none=True,
        metadata={
            "description": "综合指标 = 响应率、按时办结率、满意率的加权平均（默认权重 30/35/35，"
            "KPI_WEIGHT_*）；没有数据的比率不参与，其余权重按比例放大；都没有时为 null。"
        },
    )


class KpiOut(OutSchema):
    period = fields.String()
    scope = fields.String()
    weights = fields.Dict(keys=fields.String(), values=fields.Integer())
    items = fields.List(fields.Nested(KpiRowOut))


class AssessmentQuery(_Query):
    period = fields.String(load_default=None, metadata={"description": PERIOD_HELP})
    format = fields.String(load_default="csv", validate=validate.OneOf(["csv", "xlsx"]))


# --- points --------------------------------------------------------------------------------------


class PointsQuery(PageQuery):
    period = fields.String(
        load_default=None,
        metadata={"description": "只看该周期的明细和合计；不填为全部明细、本月/季/年/累计合计。"},
    )


class EntryOut(OutSchema):
    id = fields.UUID()
    points = fields.Integer()
    rule = fields.String()
    reason = Text()
    rule_version = fields.Integer()
    issue_id = fields.UUID(allow_none=True)
    ticket_no = fields.String(allow_none=True)
    occurred_at = LocalDateTime()
    period = fields.String()


class TotalOut(OutSchema):
    period = fields.String()
    points = fields.Integer()
    resolved = fields.Integer()
    resolved_on_time = fields.Integer()
    rated = fields.Integer()
    satisfied = fields.Integer()


class PointsOut(OutSchema):
    user_id = fields.UUID()
    name = Text()
    totals = fields.List(fields.Nested(TotalOut))
    items = fields.List(fields.Nested(EntryOut))
    next_cursor = fields.String(allow_none=True)
