"""Spreadsheet exports (CSV and XLSX) whose cells are never formulas.

A resident's description such as ``=HYPERLINK("http://evil","点我")`` must not become a live
formula in the file an admin, area leader or county department opens (CSV/formula injection,
https://owasp.org/www-community/attacks/CSV_Injection). Every export of the project (the ledger
today; statistics, assessments and scoring later) writes its rows through ``csv_bytes`` or
``xlsx_bytes`` (or at least passes every cell through ``inert_cell``); none writes cells itself.

Example::

    body = csv_bytes(("编号", "问题描述"), [["YN-1", '=HYPERLINK("http://evil","x")']])
    # the description cell is written as '=HYPERLINK("http://evil","x") (plain text)
    body = xlsx_bytes(("编号", "问题描述"), rows, title="疑难问题台账", widths=(16, 40))
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font

# What a spreadsheet reads as the start of a formula (OWASP's list), and the full-width forms a
# Chinese input method types, which some spreadsheet programs also accept.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")


def inert_cell(value: Any) -> Any:
    """``value`` as a spreadsheet reads it as plain text: text starting like a formula gets a
    leading ``'`` (OWASP's advice); numbers, dates, None and other text are left alone.

    >>> inert_cell("=1+2"), inert_cell("＋1+2"), inert_cell("漏水"), inert_cell(3)
    ("'=1+2", "'＋1+2", '漏水', 3)
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_bytes(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A CSV file, UTF-8 with a BOM (so Excel reads the Chinese), every cell inert."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([inert_cell(h) for h in headers])
    for row in rows:
        writer.writerow([inert_cell(cell) for cell in row])
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")


def _xlsx_cell(value: Any) -> Any:
    value = inert_cell(value)
    if isinstance(value, str):
        # XLSX cannot carry most control characters; openpyxl would refuse the whole file.
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
    return value


def xlsx_bytes(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str,
    widths: Sequence[float] = (),
) -> bytes:
    """One sheet: bold frozen header row, column ``widths``, wrapped text; every text cell is
    inert and typed as a string (data type ``s``), so it is never stored as a formula."""
    book = Workbook()
    sheet = book.active
    sheet.title = title[:31]  # Excel's limit for a sheet name
    for line, values in enumerate(itertools.chain([headers], rows), start=1):
        for column, value in enumerate(values, start=1):
            cell = sheet.cell(row=line, column=column, value=_xlsx_cell(value))
            if isinstance(cell.value, str):
                cell.data_type = "s"
            if line == 1:
                cell.font = Font(bold=True)
            else:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
    for column, width in enumerate(widths, start=1):
        sheet.column_dimensions[sheet.cell(row=1, column=column).column_letter].width = width
    sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
