"""Notify's own business series (the plumbing's series live in ``shared.metrics``; the pending
backlog and the oldest pending age are read at scrape time, see ``notify.app``)."""

from __future__ import annotations

from prometheus_client import Counter

NOTIFICATIONS_SENT = Counter(
    "notifications_sent_total",
    "Messages handed to a channel, by outcome (sent / retry / failed; inbox rows count as sent)",
    ["service", "channel", "outcome"],
)
