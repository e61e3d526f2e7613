"""shared.export: text that a spreadsheet would run as a formula is written as inert text."""

from __future__ import annotations

import csv
import io

import pytest
from openpyxl import load_workbook

from shared.export import csv_bytes, inert_cell, xlsx_bytes

DANGEROUS = [
    '=HYPERLINK("http://evil","x")',
    "+1+2",
    "-1+2",
    "@SUM(A1)",
    "\tcmd",
    "\rcmd",
    "＝1+2",
    "＋1+2",
    "－1+2",
    "＠SUM(A1)",
]


@pytest.mark.parametrize("text", DANGEROUS)
def test_text_that_starts_like_a_formula_gets_a_leading_quote(text):
    assert inert_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["村东头漏水", "2026-03-01 08:00", "a=b", "", None, 3, 2.5])
def test_other_values_are_left_alone(value):
    assert inert_cell(value) == value


def test_the_csv_has_a_bom_and_every_dangerous_cell_inert():
    body = csv_bytes(("编号", "问题描述"), [[str(i), text] for i, text in enumerate(DANGEROUS)])
    text = body.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")))
    assert rows[0] == ["编号", "问题描述"]
    assert [r[1] for r in rows[1:]] == ["'" + t for t in DANGEROUS]


def test_the_xlsx_stores_dangerous_text_as_strings_never_formulas():
    rows = [[i, text] for i, text in enumerate(DANGEROUS)]
    body = xlsx_bytes(("编号", "问题描述"), rows, title="台账", widths=(8, 40))
    sheet = load_workbook(io.BytesIO(body)).active
    assert sheet.title == "台账"
    assert [c.value for c in sheet[1]] == ["编号", "问题描述"]
    cells = [sheet.cell(row=i + 2, column=2) for i in range(len(DANGEROUS))]
    # XML reads a lone "\r" back as "\n"; everything else round-trips
    assert [c.value for c in cells] == ["'" + t.replace("\r", "\n") for t in DANGEROUS]
    for cell in cells:
        assert cell.data_type == "s", (cell.value, cell.data_type)
        assert cell.value.startswith("'")
    assert sheet.cell(row=2, column=1).value == 0  # numbers stay numbers


def test_the_xlsx_drops_control_characters_it_cannot_carry():
    body = xlsx_bytes(("问题描述",), [["漏水\x01\x1b了"]], title="台账")
    sheet = load_workbook(io.BytesIO(body)).active
    assert sheet.cell(row=2, column=1).value == "漏水了"
