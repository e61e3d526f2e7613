"""Dispatch's routes: HTTP only. Each loads its input, calls one use case, dumps the answer."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Response, current_app, request
from flask_smorest import Blueprint
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from dispatch import ledger, organisation, public, services, stats
from dispatch.schemas import (
    AreaLeaderIn,
    AreaLeaderOut,
    AssignIn,
    CallbackIn,
    CallbackOut,
    CallbackQuery,
    CallbackResultPageOut,
    CallbackResultsQuery,
    DepartmentChangeIn,
    DepartmentIn,
    DepartmentOut,
    DepartmentQuery,
    DuplicateOut,
    EscalateIn,
    ExportQuery,
    GridChangeIn,
    GridIn,
    GridOut,
    GridQuery,
    HistoryOut,
    IssueOut,
    IssuePageOut,
    LedgerEntryOut,
    LedgerPageOut,
    LedgerProgressIn,
    LedgerQuery,
    MemberIn,
    MembersIn,
    NoteIn,
    PendingCallbackPageOut,
    PublicFiguresOut,
    QueuePageOut,
    QueueQuery,
    RejectIn,
    ReopenIn,
    ResolveIn,
    StaffPageOut,
    StaffQuery,
    StatsQuery,
    TasksQuery,
    VersionIn,
    VillageChangeIn,
    VillageIn,
    VillageOut,
)
from dispatch.settings import DispatchSettings
from shared.auth import current_principal, require_roles
from shared.clock import utcnow
from shared.errors import Conflict
from shared.web import XLSX, file_responses, json_object_responses

blp = Blueprint("dispatch", __name__, url_prefix="/api/v1", description="网格化管理 Dispatch")
org = Blueprint("organisation", __name__, url_prefix="/api/v1", description="组织管理 Organisation")
BEARER = [{"bearerAuth": []}]

# Who reaches dispatch at all: residents, party members and publicists do not.
STAFF = ("admin", "grid_leader", "grid_worker", "area_leader", "supervisor", "department_staff")
# department_staff: staff of a township department (分管部门) or county department handle the
# items their department holds.
WORKERS = ("admin", "grid_leader", "grid_worker", "area_leader", "department_staff")
OVERSIGHT = ("admin", "area_leader", "supervisor")
# The ledger: oversight, and department staff for their department's items (scopes.py).
LEDGER_READERS = (*OVERSIGHT, "department_staff")


def _settings() -> DispatchSettings:
    return current_app.extensions["settings"]


@contextmanager
def _transaction() -> Iterator[Session]:
    """The request's transaction; a lost race on a row or a unique key is a 409, not a 500."""
    try:
        with current_app.extensions["db"].transaction() as session:
            yield session
    except StaleDataError:
        raise services.conflict_from_stale() from None
    except IntegrityError:
        raise Conflict("数据已被他人同时修改，请刷新后重试。", code="integrity_conflict") from None


def _me():
    principal = current_principal()
    assert principal is not None
    return principal


def _page(session: Session, items, next_cursor) -> dict[str, Any]:
    return {"items": services.annotate(session, items), "next_cursor": next_cursor}


# --- the queue and the tasks ---------------------------------------------------------------------


@blp.get("/queue")
@require_roles(*STAFF)
@blp.arguments(QueueQuery, location="query")
@blp.response(200, QueuePageOut)
@blp.doc(security=BEARER)
def get_queue(args: dict[str, Any]):
    """待办：未办结的事项，最早反映的在前。管理员和督导组看全部；网格长、网格员看本网格的事项，
    以及本网格所在村尚未交办的群众反映（``state=reported``，网格员只读）；包片领导看所包村。"""
    filters = services.QueueFilter(
        village_id=args["village_id"] or args["village"],
        category=args["category"],
        level=args["level"],
        state=args["state"],
        overdue=args["overdue"],
    )
    with _transaction() as session:
        items, cursor = services.queue(
            session, _me(), filters, cursor=args["cursor"], limit=args["limit"]
        )
        services.mark_duplicates(session, _settings(), _me(), items)
        return _page(session, items, cursor)


@blp.get("/tasks/mine")
@require_roles(*WORKERS)
@blp.arguments(TasksQuery, location="query")
@blp.response(200, IssuePageOut)
@blp.doc(security=BEARER)
def my_tasks(args: dict[str, Any]):
    """我的任务：交给我的未办结事项，最先到期的在前（``following=true``：我跟进的事项）。"""
    with _transaction() as session:
        items, cursor = services.my_tasks(
            session, _me(), following=args["following"], cursor=args["cursor"], limit=args["limit"]
        )
        return _page(session, items, cursor)


@blp.get("/issues/<uuid:issue_id>")
@require_roles(*STAFF)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def get_issue(issue_id: uuid.UUID):
    """事项详情。"""
    with _transaction() as session:
        return services.annotate(session, [services.read_issue(session, _me(), issue_id)])[0]


@blp.get("/issues/<uuid:issue_id>/history")
@require_roles(*STAFF)
@blp.response(200, HistoryOut(many=True))
@blp.doc(security=BEARER)
def get_history(issue_id: uuid.UUID):
    """办理记录：每一步的操作人、时间、前后状态和说明。"""
    with _transaction() as session:
        return services.history(session, issue_id, _me())


# --- the life cycle ------------------------------------------------------------------------------


def _issue_answer(session: Session, issue) -> Any:
    return services.annotate(session, [issue])[0]


@blp.post("/issues/<uuid:issue_id>/assign")
@require_roles("admin", "grid_leader")
@blp.arguments(AssignIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def assign(body: dict[str, Any], issue_id: uuid.UUID):
    """交办：指定办理人（``assignee_id``）或乡镇分管部门（``department_id``，仅管理员），
    难度分值（1-5）和办理时限（不填按类别默认）。"""
    with _transaction() as session:
        issue = services.assign(session, _settings(), _me(), issue_id, **body)
        return _issue_answer(session, issue)


@blp.post("/issues/<uuid:issue_id>/reject")
@require_roles("admin")
@blp.arguments(RejectIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def reject(body: dict[str, Any], issue_id: uuid.UUID):
    """不予受理（无效或重复的反映），理由群众可见；重复反映可指明原事项（``duplicate_of``，
    同村未办结或已办结的事项），群众随后可查看原事项的办理进展。"""
    with _transaction() as session:
        issue = services.reject(session, _me(), issue_id, **body)
        return _issue_answer(session, issue)


@blp.get("/issues/<uuid:issue_id>/duplicates")
@require_roles("admin", "grid_leader")
@blp.response(200, DuplicateOut(many=True))
@blp.doc(security=BEARER)
def get_duplicates(issue_id: uuid.UUID):
    """疑似重复：同村同类、时间和地点相近的未办结事项（近者在前）。"""
    with _transaction() as session:
        return services.issue_duplicates(session, _settings(), _me(), issue_id)


@blp.post("/issues/<uuid:issue_id>/reopen")
@require_roles("admin")
@blp.arguments(ReopenIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def reopen(body: dict[str, Any], issue_id: uuid.UUID):
    """管理员决定重新办理已办结或已关闭的事项。"""
    with _transaction() as session:
        issue = services.reopen_by_admin(session, _settings(), _me(), issue_id, **body)
        return _issue_answer(session, issue)


@blp.post("/issues/<uuid:issue_id>/start")
@require_roles(*WORKERS)
@blp.arguments(VersionIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def start(body: dict[str, Any], issue_id: uuid.UUID):
    """开始办理（仅办理人或管理员）。"""
    with _transaction() as session:
        issue = services.start(session, _me(), issue_id, **body)
        return _issue_answer(session, issue)


@blp.post("/issues/<uuid:issue_id>/notes")
@require_roles(*WORKERS)
@blp.arguments(NoteIn)
@blp.response(201, HistoryOut)
@blp.doc(security=BEARER)
def add_note(body: dict[str, Any], issue_id: uuid.UUID):
    """记录办理进展（可附照片；包片领导可记录已召开领导班子磋商会）。"""
    with _transaction() as session:
        return services.add_note(session, _me(), issue_id, **body)


@blp.post("/issues/<uuid:issue_id>/resolve")
@require_roles(*WORKERS)
@blp.arguments(ResolveIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def resolve(body: dict[str, Any], issue_id: uuid.UUID):
    """办结：填写办理结果，可附照片（仅办理人或管理员）。"""
    with _transaction() as session:
        issue = services.resolve(session, _me(), issue_id, **body)
        return _issue_answer(session, issue)


@blp.post("/issues/<uuid:issue_id>/escalate")
@require_roles(*WORKERS)
@blp.arguments(EscalateIn)
@blp.response(200, IssueOut)
@blp.doc(security=BEARER)
def escalate(body: dict[str, Any], issue_id: uuid.UUID):
    """升级：乡镇协调、包片领导协办、县级部门会办（纳入疑难问题台账，须指定部门）。"""
    department = body.pop("department")
    with _transaction() as session:
        issue = services.escalate(
            session,
            _me(),
            issue_id,
            department_id=department,
            ledger_prefix=_settings().ledger_prefix,
            settings=_settings(),
            **body,
        )
        return _issue_answer(session, issue)


# --- callbacks -----------------------------------------------------------------------------------


@blp.get("/callbacks/pending")
@require_roles("supervisor", "admin")
@blp.arguments(CallbackQuery, location="query")
@blp.response(200, PendingCallbackPageOut)
@blp.doc(security=BEARER)
def pending_callbacks(args: dict[str, Any]):
    """待回访（回头看）：曾被评为不满意的已关闭事项，以及按比例抽取的其他事项；
    可按村（``village_id``）或包片领导（``area_leader_id``）筛选。"""
    with _transaction() as session:
        items, cursor = services.pending_callbacks(
            session,
            cursor=args["cursor"],
            limit=args["limit"],
            village_id=args["village_id"],
            area_leader_id=args["area_leader_id"],
        )
        services.show_contacts(_me(), items)
        return _page(session, items, cursor)


@blp.get("/callbacks")
@require_roles("supervisor", "admin")
@blp.arguments(CallbackResultsQuery, location="query")
@blp.response(200, CallbackResultPageOut)
@blp.doc(security=BEARER)
def callback_results(args: dict[str, Any]):
    """回访记录：已完成的回访结果，最新的在前；可按村、包片领导和是否通过（``passed``）筛选。"""
    with _transaction() as session:
        items, cursor = services.callback_results(
            session,
            cursor=args["cursor"],
            limit=args["limit"],
            village_id=args["village_id"],
            area_leader_id=args["area_leader_id"],
            passed=args["passed"],
        )
        return {"items": items, "next_cursor": cursor}


@blp.post("/issues/<uuid:issue_id>/callbacks")
@require_roles("supervisor")
@blp.arguments(CallbackIn)
@blp.response(201, CallbackOut)
@blp.doc(security=BEARER)
def record_callback(body: dict[str, Any], issue_id: uuid.UUID):
    """记录回访结果；未通过的事项重新办理。"""
    with _transaction() as session:
        return services.record_callback(session, _settings(), _me(), issue_id, **body)


# --- ledger --------------------------------------------------------------------------------------


@blp.get("/ledger")
@require_roles(*LEDGER_READERS)
@blp.arguments(LedgerQuery, location="query")
@blp.response(200, LedgerPageOut)
@blp.doc(security=BEARER)
def get_ledger(args: dict[str, Any]):
    """疑难问题台账：台账编号、责任部门、转办日期、状态和办理进展。"""
    with _transaction() as session:
        items, cursor = services.ledger_page(
            session,
            status=args["status"],
            department_id=args["department_id"],
            cursor=args["cursor"],
            limit=args["limit"],
            actor=_me(),
        )
        return {"items": items, "next_cursor": cursor}


@blp.get("/ledger/export")
@require_roles(*LEDGER_READERS)
@blp.arguments(ExportQuery, location="query")
@blp.doc(security=BEARER, responses=file_responses("疑难问题台账", "text/csv", XLSX))
def export_ledger(args: dict[str, Any]):
    """导出台账（CSV 或 XLSX；中文表头，北京时间）。"""
    with _transaction() as session:
        data = ledger.rows(session, args["status"], _me())
        if args["format"] == "xlsx":
            body, content_type = ledger.to_xlsx(data), XLSX
        else:
            body, content_type = ledger.to_csv(data), "text/csv; charset=utf-8"
    stamp = utcnow().strftime("%Y%m%d")
    filename = f"ledger-{stamp}.{args['format']}"
    return Response(
        body,
        content_type=content_type,  # mimetype= would add a second "; charset=utf-8"
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@blp.post("/ledger/<uuid:entry_id>/progress")
@require_roles("admin", "area_leader", "department_staff")
@blp.arguments(LedgerProgressIn)
@blp.response(201, LedgerEntryOut)
@blp.doc(security=BEARER)
def add_ledger_progress(body: dict[str, Any], entry_id: uuid.UUID):
    """登记台账办理进展（可同时更新台账状态）。"""
    with _transaction() as session:
        return services.add_ledger_progress(session, _me(), entry_id, **body)


# --- statistics ----------------------------------------------------------------------------------


@blp.get("/stats")
@require_roles("admin", "area_leader", "supervisor", "grid_leader")
@blp.arguments(StatsQuery, location="query")
@blp.doc(security=BEARER, responses=json_object_responses("统计结果"))
def get_stats(args: dict[str, Any]):
    """统计：各类受理数、办结数、办结率、未办结、超期、办理用时中位数和 90 分位、各村情况。"""
    filters = stats.StatsFilter(
        reported_from=args["from_"],
        reported_to=args["to"],
        village_id=args["village_id"],
        category=args["category"],
    )
    with _transaction() as session:
        result = stats.issue_stats(session, filters)
    from shared.events import json_safe

    return json_safe(result)


@blp.get("/public/figures")
@blp.alt_response(200, schema=PublicFiguresOut, description="乡镇公开数据")
@blp.doc(security=[])
def get_public_figures():
    """乡镇公开数据（小程序首页，无需登录）：受理总数、各类数量、办结数、办结率和满意率；
    只有汇总数字，不含任何个人信息。"""
    seconds = _settings().public_figures_cache_seconds

    def compute() -> dict[str, Any]:
        with _transaction() as session:
            return PublicFiguresOut().dump(public.figures(session))

    cached = public.cache_of(current_app, seconds).get(compute)
    response = Response(cached.body, mimetype="application/json")
    response.set_etag(cached.etag, weak=True)
    response.headers["Cache-Control"] = f"public, max-age={seconds}"
    return response.make_conditional(request)


# --- organisation --------------------------------------------------------------------------------


@org.get("/villages")
@require_roles(*STAFF)
@org.response(200, VillageOut(many=True))
@org.doc(security=BEARER)
def list_villages():
    """村庄列表。"""
    with _transaction() as session:
        return organisation.list_villages(session)


@org.post("/villages")
@require_roles("admin")
@org.arguments(VillageIn)
@org.response(201, VillageOut)
@org.doc(security=BEARER)
def create_village(body: dict[str, Any]):
    """新增村庄（可指定编号）。"""
    with _transaction() as session:
        return organisation.create_village(session, body)


@org.patch("/villages/<uuid:village_id>")
@require_roles("admin")
@org.arguments(VillageChangeIn)
@org.response(200, VillageOut)
@org.doc(security=BEARER)
def change_village(body: dict[str, Any], village_id: uuid.UUID):
    """修改村庄名称、代码或包片领导。"""
    with _transaction() as session:
        return organisation.change_village(session, village_id, body)


@org.get("/grids")
@require_roles(*STAFF)
@org.arguments(GridQuery, location="query")
@org.response(200, GridOut(many=True))
@org.doc(security=BEARER)
def list_grids(args: dict[str, Any]):
    """网格列表（可按村筛选），含网格长和网格员。"""
    with _transaction() as session:
        return organisation.list_grids(session, args["village_id"])


@org.post("/grids")
@require_roles("admin")
@org.arguments(GridIn)
@org.response(201, GridOut)
@org.doc(security=BEARER)
def create_grid(body: dict[str, Any]):
    """新增网格。"""
    with _transaction() as session:
        return organisation.create_grid(session, body)


@org.patch("/grids/<uuid:grid_id>")
@require_roles("admin")
@org.arguments(GridChangeIn)
@org.response(200, GridOut)
@org.doc(security=BEARER)
def change_grid(body: dict[str, Any], grid_id: uuid.UUID):
    """修改网格名称、网格长或成员。"""
    with _transaction() as session:
        return organisation.change_grid(session, grid_id, body)


@org.put("/grids/<uuid:grid_id>/members")
@require_roles("admin")
@org.arguments(MembersIn)
@org.response(200, GridOut)
@org.doc(security=BEARER)
def set_members(body: dict[str, Any], grid_id: uuid.UUID):
    """设置网格员（整体替换）。"""
    with _transaction() as session:
        return organisation.set_members(session, grid_id, body["user_ids"])


@org.post("/grids/<uuid:grid_id>/members")
@require_roles("admin")
@org.arguments(MemberIn)
@org.response(200, GridOut)
@org.doc(security=BEARER)
def add_member(body: dict[str, Any], grid_id: uuid.UUID):
    """增加一名网格员。"""
    with _transaction() as session:
        return organisation.add_member(session, grid_id, body["user_id"])


@org.delete("/grids/<uuid:grid_id>/members/<uuid:user_id>")
@require_roles("admin")
@org.response(200, GridOut)
@org.doc(security=BEARER)
def remove_member(grid_id: uuid.UUID, user_id: uuid.UUID):
    """移出一名网格员。"""
    with _transaction() as session:
        return organisation.remove_member(session, grid_id, user_id)


@org.get("/area-leaders")
@require_roles(*STAFF)
@org.response(200, AreaLeaderOut(many=True))
@org.doc(security=BEARER)
def list_area_leaders():
    """包片领导及其负责的村庄。"""
    with _transaction() as session:
        return organisation.list_area_leaders(session)


@org.put("/area-leaders/<uuid:user_id>")
@require_roles("admin")
@org.arguments(AreaLeaderIn)
@org.response(200, AreaLeaderOut)
@org.doc(security=BEARER)
def set_area_leader(body: dict[str, Any], user_id: uuid.UUID):
    """设置包片领导负责的村庄（整体替换）。"""
    with _transaction() as session:
        return organisation.set_area_leader_villages(session, user_id, body["village_ids"])


@org.get("/departments")
@require_roles(*STAFF)
@org.arguments(DepartmentQuery, location="query")
@org.response(200, DepartmentOut(many=True))
@org.doc(security=BEARER)
def list_departments(args: dict[str, Any]):
    """部门列表：乡镇分管部门（``kind=township``）和县级部门（``kind=county``），含部门人员。"""
    with _transaction() as session:
        return organisation.list_departments(session, args["kind"])


@org.post("/departments")
@require_roles("admin")
@org.arguments(DepartmentIn)
@org.response(201, DepartmentOut)
@org.doc(security=BEARER)
def create_department(body: dict[str, Any]):
    """新增部门（乡镇分管部门或县级部门），可同时设置部门人员（``member_ids``）。"""
    with _transaction() as session:
        return organisation.create_department(session, body)


@org.patch("/departments/<uuid:department_id>")
@require_roles("admin")
@org.arguments(DepartmentChangeIn)
@org.response(200, DepartmentOut)
@org.doc(security=BEARER)
def change_department(body: dict[str, Any], department_id: uuid.UUID):
    """修改或停用部门，或设置部门人员（``member_ids``，整体替换）。"""
    with _transaction() as session:
        return organisation.change_department(session, department_id, body)


@org.get("/staff")
@require_roles(*STAFF)
@org.arguments(StaffQuery, location="query")
@org.response(200, StaffPageOut)
@org.doc(security=BEARER)
def list_staff(args: dict[str, Any]):
    """工作人员（来自受理服务的账号事件，不含群众），按姓名分页，可按角色筛选；
    手机号仅管理员可见。"""
    with _transaction() as session:
        items, cursor = organisation.list_staff(
            session, _me(), args["role"], cursor=args["cursor"], limit=args["limit"]
        )
        return {"items": items, "next_cursor": cursor}
