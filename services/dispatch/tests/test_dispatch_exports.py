"""The ledger export (CSV and XLSX) over HTTP on the real PostgreSQL: a resident's text that
looks like a formula comes out as inert text."""

from __future__ import annotations

import csv
import io
import uuid

from dispatch_helpers import envelope, report_data
from openpyxl import load_workbook

from dispatch.handlers import handle_issue_reported
from dispatch.models import LedgerEntry, LedgerProgress

DESCRIPTIONS = ['=HYPERLINK("http://evil","x")', "＋1+2", "@SUM(A1)"]


def ledger_item(db, town, description: str, number: int) -> None:
    """A resident's report with ``description``, referred to the county ledger."""
    data = report_data(town.village1, reporter_id=town.resident.id)
    data["description"] = description
    data["ticket_no"] = f"SKJ-20260301-{number:04d}"
    with db.transaction() as session:
        handle_issue_reported(session, envelope("issue.reported", data))
        entry = LedgerEntry(
            ledger_no=f"YN-2026-{number:04d}",
            issue_id=uuid.UUID(data["issue_id"]),
            department_id=town.department,
            reason="-需县水利局支持",
            referred_by=town.admin.id,
        )
        session.add(entry)
        session.flush()
        session.add(LedgerProgress(entry_id=entry.id, text="已派人勘察。", status="in_progress"))


def test_formula_like_descriptions_are_inert_in_the_csv_and_the_xlsx_export(client, db, town):
    for number, description in enumerate(DESCRIPTIONS, start=1):
        ledger_item(db, town, description, number)

    as_csv = client.get("/api/v1/ledger/export?format=csv", headers=town.admin.headers)
    assert as_csv.status_code == 200, as_csv.get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(as_csv.data.decode("utf-8").lstrip("\ufeff"))))
    assert rows[0][4] == "问题描述"
    assert [r[4] for r in rows[1:]] == ["'" + d for d in DESCRIPTIONS]
    assert {r[7] for r in rows[1:]} == {"'-需县水利局支持"}
    assert rows[1][0] == "YN-2026-0001"  # harmless text is untouched

    as_xlsx = client.get("/api/v1/ledger/export?format=xlsx", headers=town.admin.headers)
    assert as_xlsx.status_code == 200
    sheet = load_workbook(io.BytesIO(as_xlsx.data)).active
    cells = [sheet.cell(row=line, column=5) for line in range(2, 2 + len(DESCRIPTIONS))]
    assert [c.value for c in cells] == ["'" + d for d in DESCRIPTIONS]
    for cell in [*cells, sheet.cell(row=2, column=8)]:
        assert cell.data_type == "s", (cell.value, cell.data_type)
    assert sheet.cell(row=2, column=8).value == "'-需县水利局支持"
