"""The scheduler process: reminders, overdue flags, escalation after the grace period, closing
unrated items, keeping the callback sample filled and the supervisors' daily digest of the
callbacks waiting (``callbacks.pending``).

Each job asks one partial index for the rows that need work now (so it costs the same with a
million items as with a thousand), takes them with ``FOR UPDATE SKIP LOCKED`` (copies of the
scheduler share the work instead of waiting), and records a ``deadline_marks`` row under its
primary key in the same transaction as the event: however often and in how many copies it runs,
each reminder, overdue flag and escalation is sent once per item and deadline. The daily digest
is kept once per Asia/Shanghai day the same way, by a ``digest_marks`` row.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from types import FrameType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dispatch import domain, services
from dispatch.metrics import SCHEDULER_ACTIONS, SCHEDULER_LAST_RUN, SCHEDULER_RUNS
from dispatch.models import DeadlineMark, DigestMark, Issue, IssueHistory, Village
from dispatch.settings import DispatchSettings
from shared.clock import to_local, utcnow
from shared.db import Database
from shared.events import emit
from shared.metrics import serve_process_metrics

log = logging.getLogger("dispatch.scheduler")

AUTO_ESCALATION_REASON = "超期未办结，超过宽限期，系统自动升级一级。"
WORKING = tuple(sorted(domain.WORKING_STATES))
CALLBACK_DIGEST = "callbacks.pending"
DIGEST_TICKETS = 10  # the oldest items a digest names


@dataclass
class SchedulerReport:
    reminded: int = 0
    overdue: int = 0
    escalated: int = 0
    closed: int = 0
    sampled: int = 0
    digests: int = 0

    def total(self) -> int:
        return sum(asdict(self).values())


def _claim_mark(session: Session, issue_id: uuid.UUID, due_at: datetime, kind: str, now: datetime):
    """Insert the mark; False when another run already holds it (the key makes it once only)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(DeadlineMark)
        .values(issue_id=issue_id, due_at=due_at, kind=kind, marked_at=now)
        .on_conflict_do_nothing()
        .returning(DeadlineMark.issue_id)
    )
    return session.execute(stmt).first() is not None


def _claim_digest(session: Session, kind: str, day: date, now: datetime) -> bool:
    """Insert the day's digest mark; False when another run already holds it (once per day)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(DigestMark)
        .values(kind=kind, day=day, marked_at=now)
        .on_conflict_do_nothing()
        .returning(DigestMark.kind)
    )
    return session.execute(stmt).first() is not None


def _take(session: Session, stmt: sa.Select, limit: int) -> list[Issue]:
    return list(session.scalars(stmt.limit(limit).with_for_update(skip_locked=True)))


def _note(session: Session, issue: Issue, action: str, note: str, now: datetime) -> None:
    session.add(
        IssueHistory(
            issue_id=issue.id,
            action=action,
            from_state=issue.state,
            to_state=issue.state,
            from_level=issue.level,
            to_level=issue.level,
            actor_id=None,
            actor_name="系统",
            note=note,
            details={"due_at": issue.due_at.isoformat() if issue.due_at else None},
            occurred_at=now,
        )
    )


def remind_batch(session: Session, settings: DispatchSettings, now: datetime) -> tuple[int, int]:
    """Tell the assignee a deadline is near (once per deadline)."""
    horizon = now + timedelta(hours=settings.remind_before_hours)
    issues = _take(
        session,
        sa.select(Issue)
        .where(
            Issue.state.in_(WORKING),
            Issue.reminded_at.is_(None),
            Issue.due_at > now,
            Issue.due_at <= horizon,
        )
        .order_by(Issue.due_at),
        settings.scheduler_batch_size,
    )
    sent = 0
    for issue in issues:
        issue.reminded_at = now
        if not _claim_mark(session, issue.id, issue.due_at, "remind", now):
            continue
        _note(session, issue, "remind", "办理时限将到，已提醒办理人。", now)
        services.emit_issue(
            session,
            issue,
            "issue.reminder_due",
            {
                "issue_id": issue.id,
                "assignee_id": issue.assignee_id,
                "grid_leader_id": issue.grid_leader_id,
                "due_at": issue.due_at,
            },
        )
        sent += 1
    return len(issues), sent


def overdue_batch(session: Session, settings: DispatchSettings, now: datetime) -> tuple[int, int]:
    """Flag items past their deadline: one ``issue.overdue`` per item and deadline."""
    issues = _take(
        session,
        sa.select(Issue)
        .where(Issue.state.in_(WORKING), Issue.overdue_at.is_(None), Issue.due_at < now)
        .order_by(Issue.due_at),
        settings.scheduler_batch_size,
    )
    sent = 0
    for issue in issues:
        issue.overdue_at = now
        if not _claim_mark(session, issue.id, issue.due_at, "overdue", now):
            continue
        _note(session, issue, "overdue", "已超过办理时限，已通知办理人和网格长。", now)
        services.emit_issue(
            session,
            issue,
            "issue.overdue",
            {
                "issue_id": issue.id,
                "assignee_id": issue.assignee_id,
                "grid_leader_id": issue.grid_leader_id,
                "due_at": issue.due_at,
                "village_id": issue.village_id,
                "level": issue.level,
            },
        )
        sent += 1
    return len(issues), sent


def escalate_batch(session: Session, settings: DispatchSettings, now: datetime) -> tuple[int, int]:
    """An overdue item climbs one level after the grace period (up to the area leader: a county
    referral needs a person to choose the department)."""
    cutoff = now - timedelta(hours=settings.overdue_grace_hours)
    issues = _take(
        session,
        sa.select(Issue)
        .where(
            Issue.state.in_(WORKING),
            Issue.overdue_at.is_not(None),
            Issue.overdue_escalated_at.is_(None),
            Issue.due_at < cutoff,
        )
        .order_by(Issue.due_at),
        settings.scheduler_batch_size,
    )
    done = 0
    for issue in issues:
        issue.overdue_escalated_at = now
        if not _claim_mark(session, issue.id, issue.due_at, "escalate", now):
            continue
        target = domain.next_level(issue.level)
        village = session.get(Village, issue.village_id)
        if target == "area_leader" and (village is None or village.area_leader_id is None):
            target = None  # nobody to hand it to: the admin decides
        if target is None or target == "county":
            _note(session, issue, "overdue", "超期已过宽限期，需由管理员决定是否转县级部门。", now)
            continue
        # The new level's holder gets the new level's time limit (a new deadline, not overdue).
        services.escalate(
            session,
            None,
            issue.id,
            to_level=target,
            reason=AUTO_ESCALATION_REASON,
            settings=settings,
            now=now,
        )
        done += 1
    return len(issues), done


def auto_close_batch(
    session: Session, settings: DispatchSettings, now: datetime
) -> tuple[int, int]:
    """Close resolved items that got no rating within ``auto_close_days``."""
    cutoff = now - timedelta(days=settings.auto_close_days)
    issues = _take(
        session,
        sa.select(Issue)
        .where(Issue.state == "resolved", Issue.resolved_at < cutoff)
        .order_by(Issue.resolved_at),
        settings.scheduler_batch_size,
    )
    for issue in issues:
        services.auto_close(session, issue, now)
    return len(issues), len(issues)


def sample_batch(session: Session, settings: DispatchSettings, now: datetime) -> tuple[int, int]:
    """Decide for newly closed items whether the supervisors call back (回头看)."""
    issues = _take(
        session,
        sa.select(Issue)
        .where(Issue.state == "closed", Issue.callback_status.is_(None))
        .order_by(Issue.closed_at),
        settings.scheduler_batch_size,
    )
    for issue in issues:
        sampled = issue.ever_unsatisfied or domain.in_callback_sample(
            issue.id, settings.callback_sample_share
        )
        issue.callback_status = "pending" if sampled else "not_sampled"
    return len(issues), sum(1 for i in issues if i.callback_status == "pending")


def callback_digest(session: Session, settings: DispatchSettings, now: datetime) -> tuple[int, int]:
    """Once per Asia/Shanghai day, from ``callback_digest_hour`` on, tell the supervisors which
    closed items wait for a callback (回头看): one ``callbacks.pending``, none while none wait."""
    local = to_local(now)
    if local.hour < settings.callback_digest_hour:
        return 0, 0
    waiting = (Issue.state == "closed", Issue.callback_status == "pending")
    by_village = session.execute(
        sa.select(Issue.village_id, sa.func.count(), sa.func.min(Issue.closed_at))
        .where(*waiting)
        .group_by(Issue.village_id)
    ).all()
    count = sum(n for _village, n, _oldest in by_village)
    if not count or not _claim_digest(session, CALLBACK_DIGEST, local.date(), now):
        return 0, 0
    oldest = session.execute(
        sa.select(Issue.id, Issue.ticket_no)
        .where(*waiting)
        .order_by(Issue.closed_at, Issue.id)
        .limit(DIGEST_TICKETS)
    ).all()
    data: dict[str, Any] = {
        "date": local.date().isoformat(),
        "count": count,
        "oldest_closed_at": min((t for _v, _n, t in by_village if t is not None), default=None),
        # The ticket number the resident knows (issue.reported), the id where there is none.
        "tickets": [row.ticket_no or str(row.id) for row in oldest],
        "issue_ids": [row.id for row in oldest],
        "village_counts": {village: n for village, n, _oldest in by_village},
    }
    emit(session, CALLBACK_DIGEST, data)
    return 0, 1


Job = Callable[[Session, DispatchSettings, datetime], tuple[int, int]]

# name in the report -> job returning (rows taken, events sent); the digest takes no rows
JOBS: tuple[tuple[str, Job], ...] = (
    ("reminded", remind_batch),
    ("overdue", overdue_batch),
    ("escalated", escalate_batch),
    ("closed", auto_close_batch),
    ("sampled", sample_batch),
    ("digests", callback_digest),  # after the sample: today's newly sampled items count
)


def run_once(
    db: Database, settings: DispatchSettings, now: datetime | None = None, max_batches: int = 100
) -> SchedulerReport:
    """One pass of every job, batch by batch (each batch one transaction) until nothing is left."""
    now = now or utcnow()
    report = SchedulerReport()
    for name, job in JOBS:
        for _ in range(max_batches):
            with db.transaction() as session:
                taken, done = job(session, settings, now)
            setattr(report, name, getattr(report, name) + done)
            if taken < settings.scheduler_batch_size:
                break
    return report


def run_scheduler(
    settings: DispatchSettings, db: Database, stop: threading.Event | None = None
) -> None:
    """Run ``run_once`` every ``scheduler_interval_seconds`` until SIGTERM/SIGINT or ``stop``."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s; stopping the scheduler", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
    log.info("dispatch scheduler: every %.0f s", settings.scheduler_interval_seconds)
    # Every action and outcome shown from the start, at 0 until it happens.
    for action in asdict(SchedulerReport()):
        SCHEDULER_ACTIONS.labels(settings.service_name, action)
    for outcome in ("ok", "failed"):
        SCHEDULER_RUNS.labels(settings.service_name, outcome)
    stop_metrics = serve_process_metrics(settings.metrics_port, settings.metrics_host)
    try:
        while not stop.is_set():
            try:
                report = run_once(db, settings)
                if report.total():
                    log.info("dispatch scheduler: %s", asdict(report))
            except Exception:  # logged with its traceback; the next pass tries again
                SCHEDULER_RUNS.labels(settings.service_name, "failed").inc()
                log.exception("dispatch scheduler: pass failed; trying again next interval")
            else:
                record_pass(settings.service_name, report)
            stop.wait(settings.scheduler_interval_seconds)
    finally:
        if stop_metrics is not None:
            stop_metrics()
    log.info("dispatch scheduler: stopped")


def record_pass(service: str, report: SchedulerReport) -> None:
    """Count a successful pass and what it did, and move the heartbeat the alerts watch."""
    SCHEDULER_RUNS.labels(service, "ok").inc()
    for action, done in asdict(report).items():
        if done:
            SCHEDULER_ACTIONS.labels(service, action).inc(done)
    SCHEDULER_LAST_RUN.labels(service).set(time.time())
