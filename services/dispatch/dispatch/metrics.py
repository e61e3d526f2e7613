"""Dispatch's own business series (the plumbing's series live in ``shared.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

RATINGS_NOT_APPLIED = Counter(
    "ratings_not_applied_total",
    "Ratings recorded but not applied: another resolution, or a state that does not take them",
    ["service", "reason"],
)
