"""Scoring's pure rules: periods in Asia/Shanghai, rule versions by date, awards, ranks, KPIs."""

from __future__ import annotations

from datetime import date

import pytest

from scoring import domain
from shared.testing import at

WEIGHTS = {"response_rate": 30, "on_time_rate": 35, "satisfaction_rate": 35}


def test_a_moment_counts_in_its_shanghai_month_quarter_year_and_all() -> None:
    assert domain.periods_of(at("2026-11-30T15:59:59Z")) == (
        "month:2026-11",
        "quarter:2026-Q4",
        "year:2026",
        "all",
    )
    assert domain.periods_of(at("2026-12-31T16:00:00Z"))[:3] == (
        "month:2027-01",
        "quarter:2027-Q1",
        "year:2027",
    )


def test_periods_parse_and_know_the_one_before() -> None:
    assert domain.parse_period("month:2026-01").previous().key == "month:2025-12"
    assert domain.parse_period("quarter:2026-Q1").previous().key == "quarter:2025-Q4"
    assert domain.parse_period("year:2026").previous().key == "year:2025"
    assert domain.parse_period("all").previous() is None
    assert domain.parse_period("quarter:2026-Q4").months() == ["2026-10", "2026-11", "2026-12"]
    for bad in ("month:2026-13", "2026-11", "quarter:2026-Q5", "week:2026-01"):
        with pytest.raises(domain.InvalidPeriod):
            domain.parse_period(bad)


def test_the_rule_in_force_is_the_latest_version_not_after_the_day() -> None:
    versions = [
        domain.RuleVersion("resolved_on_time", 1, 2, date(2026, 12, 1)),
        domain.RuleVersion("resolved_on_time", 2, 3, date(2027, 1, 1)),
    ]
    assert domain.rule_in_force(versions, "resolved_on_time", date(2026, 11, 30)).version == 0
    assert domain.rule_in_force(versions, "resolved_on_time", date(2026, 12, 1)).points == 2
    assert domain.rule_in_force(versions, "resolved_on_time", date(2027, 6, 1)).points == 3


def test_on_time_earns_the_difficulty_and_late_earns_the_late_rule() -> None:
    day = date(2026, 11, 10)
    assert domain.resolution_award([], on_time=True, difficulty=4, day=day).points == 4
    assert domain.resolution_award([], on_time=False, difficulty=4, day=day).points == 0
    assert domain.resolution_award([], on_time=True, difficulty=9, day=day).points == 5
    assert domain.clawback_award([], earned=4, day=day).points == -4
    assert domain.callback_award([], passed=False, day=day).points == -2
    assert domain.rating_award([], rating="unsatisfied", day=day).points == -1


def test_ties_share_a_rank_and_the_next_rank_is_skipped() -> None:
    assert domain.standard_ranks([(5, 2), (5, 1), (5, 1), (3, 0)]) == [1, 2, 2, 4]


def test_the_composite_weighs_the_rates_that_have_data() -> None:
    counts = {"assigned": 4, "responded": 2, "resolved": 2, "resolved_on_time": 2}
    kpis = domain.kpis(counts, WEIGHTS)
    assert (kpis.response_rate, kpis.on_time_rate, kpis.satisfaction_rate) == (0.5, 1.0, None)
    assert kpis.composite == round((0.5 * 30 + 1.0 * 35) / 65, 4)
    assert domain.kpis({}, WEIGHTS).composite is None
