"""The hard-problems ledger (疑难问题台账) as a file for the county: CSV (UTF-8 with BOM, so
Excel opens it) or XLSX, with Chinese headers and Asia/Shanghai times."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime

import sqlalchemy as sa
from openpyxl import Workbook
from openpyxl.styles import Alignment, Font
from sqlalchemy.orm import Session, selectinload

from dispatch.domain import CATEGORIES, STATES
from dispatch.models import Issue, LedgerEntry, Village
from dispatch.services import LEDGER_STATUSES
from shared.clock import to_local

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


def rows(session: Session, status: str | None = None) -> Iterator[list[str]]:
    """One row per ledger item, oldest referral first; progress notes one per line."""
    stmt = (
        sa.select(LedgerEntry, Issue, Village.name)
        .join(Issue, Issue.id == LedgerEntry.issue_id)
        .outerjoin(Village, Village.id == Issue.village_id)
        .options(selectinload(LedgerEntry.progress))
        .order_by(LedgerEntry.referred_at, LedgerEntry.id)
    )
    if status:
        stmt = stmt.where(LedgerEntry.status == status)
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
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADERS)
    writer.writerows(data)
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def to_xlsx(data: Iterator[list[str]]) -> bytes:
    book = Workbook()
    sheet = book.active
    sheet.title = "疑难问题台账"
    sheet.append(list(HEADERS))
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in data:
        sheet.append(row)
    for index, width in enumerate(WIDTHS, start=1):
        sheet.column_dimensions[sheet.cell(row=1, column=index).column_letter].width = width
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            cell.alignment = Alignment(wrap_text=True, vertical="top")
    sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
