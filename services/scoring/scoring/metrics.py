"""Scoring's own business series (the plumbing's series live in ``shared.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

POINTS_AWARDED = Counter(
    "points_awarded_total", "Points ledger entries written, by rule", ["service", "rule"]
)
