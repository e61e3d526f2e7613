"""The hard-problems ledger (疑难问题台账) as a file for the county: CSV (UTF-8 with BOM, so
Excel opens it) or XLSX, with Chinese headers and Asia/Shanghai times; written through
``shared.export`` so a resident's text never becomes a formula."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from dispatch import scopes
from dispatch.domain import CATEGORIES, STATES
from dispatch.models import Issue, LedgerEntry, Village
from dispatch.services import LEDGER_STATUSES
from shared.auth import Principal
from shared.clock import to_local
from shared.export import csv_bytes, xlsx_bytes

HEADERS = (
    "台账编号",
    "事项编号",
    "类别",
    "所属村",
    "问题描述",
    "责任部门",
    "转办日期",
    "转办原因",
    "台账状态",
    "事项状态",
    "办理进展",
    "最后更新",
)
WIDTHS = (16, 22, 10, 12, 40, 16, 18, 30, 10, 10, 60, 18)


def _when(moment: datetime | None) -> str:
    return to_local(moment).strftime("%Y-%m-%d %H:%M") if moment else ""


def rows(
    session: Session, status: str | None = None, actor: Principal | None = None
) -> Iterator[list[str]]:
    """One row per ledger item, oldest referral first; progress notes one per line (``actor``
    given: only the items they may read, e.g. an area leader's villages)."""
    stmt = (
        sa.select(LedgerEntry, Issue, Village.name)
        .join(Issue, Issue.id == LedgerEntry.issue_id)
        .outerjoin(Village, Village.id == Issue.village_id)
        .options(selectinload(LedgerEntry.progress))
        .order_by(LedgerEntry.referred_at, LedgerEntry.id)
    )
    if status:
        stmt = stmt.where(LedgerEntry.status == status)
    if actor is not None:
        stmt = stmt.where(scopes.visible_issues(session, actor))
    for entry, issue, village in session.execute(stmt):
        progress = "\n".join(f"{_when(p.created_at)} {p.text}" for p in entry.progress)
        yield [
            entry.ledger_no,
            issue.ticket_no or str(issue.id),
            CATEGORIES.get(issue.category, issue.category),
            village or "",
            issue.description,
            entry.department.name,
            _when(entry.referred_at),
            entry.reason,
            LEDGER_STATUSES.get(entry.status, entry.status),
            STATES.get(issue.state, issue.state),
            progress,
            _when(entry.updated_at),
        ]


def to_csv(data: Iterator[list[str]]) -> bytes:
    return csv_bytes(HEADERS, data)


def to_xlsx(data: Iterator[list[str]]) -> bytes:
    return xlsx_bytes(HEADERS, data, title="疑难问题台账", widths=WIDTHS)
