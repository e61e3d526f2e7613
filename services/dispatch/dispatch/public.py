"""The township's public figures (the mini-program's home page, no login): totals, per category,
completion and satisfaction rates. The numbers come from ``stats.issue_stats`` (one source of the
figures); only aggregates leave here, no person, no id, no village. Each web process keeps the
answer for ``PUBLIC_FIGURES_CACHE_SECONDS``, so a busy home page costs one query now and then.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy.orm import Session

from dispatch import stats
from shared.clock import utcnow

CACHE_KEY = "dispatch.public_figures"


def figures(session: Session, now: datetime | None = None) -> dict[str, Any]:
    """The aggregate figures the public may see, taken from the statistics of all reports."""
    now = now or utcnow()
    full = stats.issue_stats(session, stats.StatsFilter(), now=now)
    return {
        "reports": full["reports"],
        "completed": full["completed"],
        "completion_rate": full["completion_rate"],
        "open": full["open"]["total"],
        "rated": full["rated"],
        "satisfied": full["satisfied"],
        "satisfaction_rate": full["satisfaction_rate"],
        "by_category": [
            {
                "category": row["category"],
                "label": row["label"],
                "reports": row["reports"],
                "completed": row["completed"],
                "completion_rate": row["completion_rate"],
            }
            for row in full["by_category"]
        ],
        "as_of": now,
    }


@dataclass(frozen=True)
class Cached:
    body: bytes  # the JSON answer
    etag: str  # of the figures without ``as_of``: unchanged figures keep their tag
    made_at: float  # time.monotonic()


class FiguresCache:
    """One answer per process, recomputed when older than ``seconds`` (0: every time). One
    thread computes while the others wait for its answer, so an expiry costs one query."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._cached: Cached | None = None

    def get(self, compute: Callable[[], dict[str, Any]]) -> Cached:
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached.made_at < self.seconds:
                return cached
            answer = compute()
            tagged = {k: v for k, v in answer.items() if k != "as_of"}
            digest = hashlib.sha256(
                json.dumps(tagged, sort_keys=True, ensure_ascii=False).encode()
            ).hexdigest()
            self._cached = Cached(
                body=json.dumps(answer, ensure_ascii=False).encode(),
                etag=digest[:32],
                made_at=time.monotonic(),
            )
            return self._cached


def cache_of(app: Flask, seconds: float) -> FiguresCache:
    """The app's cache of the figures (made on first use, after the process forked)."""
    cache = app.extensions.get(CACHE_KEY)
    if cache is None:
        cache = app.extensions.setdefault(CACHE_KEY, FiguresCache(seconds))
    return cache
