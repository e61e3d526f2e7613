"""Scoring's routes: HTTP only. Each loads its input, calls one use case, dumps the answer."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from flask import Response, current_app
from flask_smorest import Blueprint

from scoring import boards, services
from scoring.schemas import (
    AssessmentQuery,
    KpiOut,
    KpiQuery,
    LeaderboardOut,
    LeaderboardQuery,
    PointsOut,
    PointsQuery,
    RuleIn,
    RuleOut,
)
from scoring.settings import ScoringSettings
from shared.auth import current_principal, require_roles
from shared.clock import utcnow
from shared.web import XLSX, file_responses, request_transaction

blp = Blueprint("scoring", __name__, url_prefix="/api/v1", description="积分排行 Scoring")
BEARER = [{"bearerAuth": []}]

# Who reads the rules and KPIs: the township's staff who are scored or who assess.
STAFF = ("admin", "supervisor", "area_leader", "grid_leader", "grid_worker")
# Who may look at one worker's points (and which worker: boards.check_may_see_worker).
WORKER_VIEWERS = ("admin", "area_leader", "grid_leader", "grid_worker")


def _settings() -> ScoringSettings:
    return current_app.extensions["settings"]


_transaction = request_transaction


def _me():
    principal = current_principal()
    assert principal is not None
    return principal


# --- rules ---------------------------------------------------------------------------------------


@blp.get("/rules")
@require_roles(*STAFF)
@blp.response(200, RuleOut(many=True))
@blp.doc(security=BEARER)
def list_rules():
    """积分规则：每条规则今天生效的分值和全部历史版本（版本 0 为内置默认）。"""
    with _transaction() as session:
        return [asdict(view) for view in services.list_rules(session, utcnow())]


@blp.put("/rules/<string:code>")
@require_roles("admin")
@blp.arguments(RuleIn)
@blp.response(200, RuleOut)
@blp.doc(security=BEARER)
def change_rule(body: dict[str, Any], code: str):
    """修改积分规则：新增一个版本，从指定日期（北京时间，不早于明天，默认明天）起生效；
    已计分的日子不受影响。记录修改人和时间。"""
    now = utcnow()
    with _transaction() as session:
        services.change_rule(session, _me(), code, now=now, **body)
        view = next(v for v in services.list_rules(session, now) if v.code == code)
        return asdict(view)


# --- boards --------------------------------------------------------------------------------------


@blp.get("/leaderboard")
@require_roles()
@blp.arguments(LeaderboardQuery, location="query")
@blp.response(200, LeaderboardOut)
@blp.doc(security=BEARER)
def get_leaderboard(args: dict[str, Any]):
    """积分排行（任何已登录用户可看；只列网格员、网格长，不含电话和群众信息）。

    名次按积分、再按按时办结数排列，两者都相同者并列，下一名次跳过（1、1、3）。
    ``rank_change`` 为与上一周期相比的名次变化。数据来自随每条积分记录同步更新的汇总表。"""
    period = boards.period_or_current(args["period"], utcnow())
    with _transaction() as session:
        items, cursor = boards.leaderboard(
            session,
            period=period,
            scope=args["scope"],
            village_id=args["village_id"],
            cursor=args["cursor"],
            limit=args["limit"] or _settings().leaderboard_default_limit,
        )
    return {"period": period.key, "scope": args["scope"], "items": items, "next_cursor": cursor}


@blp.get("/kpis")
@require_roles(*STAFF)
@blp.arguments(KpiQuery, location="query")
@blp.response(200, KpiOut)
@blp.doc(security=BEARER)
def get_kpis(args: dict[str, Any]):
    """考核指标：按网格员、网格、村或全乡统计响应率、按时办结率、满意率、返工率、回访通过率
    和综合指标（各指标定义见返回字段说明）。"""
    period = boards.period_or_current(args["period"], utcnow())
    settings = _settings()
    with _transaction() as session:
        rows = boards.kpi_rows(
            session, settings, scope=args["scope"], period=period, village_id=args["village_id"]
        )
    items = [
        {
            "scope": r.scope,
            "id": r.id,
            "name": r.name,
            "village_id": r.village_id,
            "village_name": r.village_name,
            **r.counts,
            **asdict(r.kpis),  # type: ignore[arg-type]
        }
        for r in rows
    ]
    return {
        "period": period.key,
        "scope": args["scope"],
        "weights": settings.kpi_weights,
        "items": items,
    }


@blp.get("/assessment")
@require_roles("admin")
@blp.arguments(AssessmentQuery, location="query")
@blp.doc(security=BEARER, responses=file_responses("网格员考核表", "text/csv", XLSX))
def export_assessment(args: dict[str, Any]):
    """网格员考核表（CSV 或 XLSX；中文表头，每名网格员一行：名次、积分和各项指标）。"""
    period = boards.period_or_current(args["period"], utcnow())
    with _transaction() as session:
        body = boards.assessment(session, _settings(), period, args["format"])
    content_type = XLSX if args["format"] == "xlsx" else "text/csv; charset=utf-8"
    filename = f"assessment-{period.key.replace(':', '-')}.{args['format']}"
    return Response(
        body,
        content_type=content_type,  # mimetype= would add a second "; charset=utf-8"
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- points --------------------------------------------------------------------------------------


@blp.get("/points/mine")
@require_roles()
@blp.arguments(PointsQuery, location="query")
@blp.response(200, PointsOut)
@blp.doc(security=BEARER)
def my_points(args: dict[str, Any]):
    """我的积分：积分明细（最新在前，附事项编号）和本月、本季度、本年、累计合计。"""
    return _points(_me().id, args)


@blp.get("/workers/<uuid:worker_id>/points")
@require_roles(*WORKER_VIEWERS)
@blp.arguments(PointsQuery, location="query")
@blp.response(200, PointsOut)
@blp.doc(security=BEARER)
def worker_points(args: dict[str, Any], worker_id: uuid.UUID):
    """某网格员的积分明细：其网格长、所在村的包片领导和管理员可看（本人亦可）。"""
    with _transaction() as session:
        boards.check_may_see_worker(session, _me(), worker_id)
    return _points(worker_id, args)


def _points(user_id: uuid.UUID, args: dict[str, Any]) -> dict[str, Any]:
    now = utcnow()
    period = boards.period_or_current(args["period"], now) if args["period"] else None
    with _transaction() as session:
        return boards.points_of(
            session, user_id, now=now, period=period, cursor=args["cursor"], limit=args["limit"]
        )
