"""Running aggregates behind the statistics, kept in the same transaction as each issue change.

Two small tables, whose size grows with villages x categories x states (and resolve-time
buckets), never with the number of issues:

- ``issue_stats_counts``: per (village, category, state, level) the number of issues, how many
  carry a rating and how many of those are satisfied;
- ``issue_stats_resolve_times``: for resolved and closed issues with a ``resolved_at``, how many
  took a number of whole seconds (report -> resolution) falling into each bucket (32 per
  octave), per (village, category) and rolled up to the village, the category and the township
  (``ANY_VILLAGE`` / ``ANY_CATEGORY``). ``stats`` finds which bucket holds a percentile's rank
  and reads the exact values from the issues' resolve-time index, so the percentiles stay exact.

ONE hook keeps them: a session listener that compares every ``Issue`` flushed (inserted, changed,
deleted) with what it was, and adds the difference by upsert in the same flush (inside the same
transaction or savepoint, so a rollback takes it back); statements that write ``issues``
outside the unit of work (``insert(Issue)`` with rows, ``update(Issue).where(...)``) are counted
by the same session's ``do_orm_execute`` listener. ``rebuild`` (``rebuild-stats`` command)
recomputes both tables from the issues and reports any difference.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from dispatch.models import Issue, IssueStatsCount, IssueStatsResolveTime
from shared.contract import DONE_STATES, SATISFIED_RATINGS
from shared.db import Upsert

ANY_VILLAGE = uuid.UUID(int=0)
ANY_CATEGORY = "*"
# The attributes an issue's contribution depends on.
TRACKED = ("village_id", "category", "state", "level", "rating", "reported_at", "resolved_at")
# Column defaults applied at INSERT when the object leaves them unset.
DEFAULTS = {"state": "reported", "level": "grid"}
_PENDING = "dispatch.issue_stats.pending"
_UNKNOWN = object()

CountKey = tuple[uuid.UUID, str, str, str]  # village, category, state, level
TimeKey = tuple[uuid.UUID, str, int]  # village (or ANY), category (or ANY), bucket


# --- buckets -----------------------------------------------------------------------------------


def bucket_of(seconds: int) -> int:
    """The bucket of a whole number of seconds: one per second below 64 s, then 32 per octave
    (each about 2 % wide); -1 for a negative time."""
    if seconds < 0:
        return -1
    if seconds < 64:
        return seconds
    bits = seconds.bit_length()
    return 64 + (bits - 7) * 32 + ((seconds >> (bits - 6)) & 31)


def bucket_start(bucket: int) -> int | None:
    """The smallest whole second in ``bucket`` (None for the negative bucket)."""
    if bucket < 0:
        return None
    if bucket < 64:
        return bucket
    octave, step = divmod(bucket - 64, 32)
    return (32 + step) << (octave + 1)


def whole_seconds(reported_at: datetime, resolved_at: datetime) -> int:
    """floor(resolved_at - reported_at) in seconds, as ``floor(extract(epoch ...))`` gives it."""
    return (resolved_at - reported_at) // timedelta(seconds=1)


# --- one issue's contribution ------------------------------------------------------------------


@dataclass
class Deltas:
    counts: dict[CountKey, list[int]]  # key -> [n, rated, satisfied]
    times: dict[TimeKey, int]

    @classmethod
    def empty(cls) -> Deltas:
        return cls(defaultdict(lambda: [0, 0, 0]), defaultdict(int))

    def add(self, values: dict[str, Any], sign: int) -> None:
        """Count (sign +1) or uncount (-1) one issue with these attribute values."""
        village, category = values["village_id"], values["category"]
        rating = values["rating"]
        row = self.counts[(village, category, values["state"], values["level"])]
        row[0] += sign
        row[1] += sign if rating is not None else 0
        row[2] += sign if rating in SATISFIED_RATINGS else 0
        if values["state"] in DONE_STATES and values["resolved_at"] is not None:
            bucket = bucket_of(whole_seconds(values["reported_at"], values["resolved_at"]))
            for v in (village, ANY_VILLAGE):
                for c in (category, ANY_CATEGORY):
                    self.times[(v, c, bucket)] += sign

    def nonzero(self) -> Deltas:
        return Deltas(
            {k: v for k, v in self.counts.items() if any(v)},
            {k: n for k, n in self.times.items() if n},
        )

    def __bool__(self) -> bool:
        return any(any(v) for v in self.counts.values()) or any(self.times.values())


def _current(issue: Issue) -> dict[str, Any]:
    values = {name: getattr(issue, name) for name in TRACKED}
    for name, default in DEFAULTS.items():
        if values[name] is None:
            values[name] = default
    return values


def _before(issue: Issue) -> tuple[dict[str, Any], bool]:
    """The tracked values as stored (before this flush), and whether any of them changed."""
    state = sa.inspect(issue)
    values: dict[str, Any] = {}
    changed = False
    for name in TRACKED:
        history = state.attrs[name].history
        if history.added or history.deleted:
            changed = True
            values[name] = history.deleted[0] if history.deleted else _UNKNOWN
        else:
            values[name] = getattr(issue, name)
    return values, changed


# --- the hook ----------------------------------------------------------------------------------


def _before_flush(session: Session, _context, _instances) -> None:
    """Take each changed or deleted issue's stored contribution away; the new one is added after
    the flush (when column defaults have been applied)."""
    deltas = Deltas.empty()
    unknown: list[tuple[Issue, dict[str, Any]]] = []
    changed: list[Issue] = []
    for obj in session.dirty:
        if isinstance(obj, Issue):
            before, did_change = _before(obj)
            if not did_change:
                continue
            changed.append(obj)
            if any(v is _UNKNOWN for v in before.values()):
                unknown.append((obj, before))
            else:
                deltas.add(before, -1)
    for obj in session.deleted:
        if isinstance(obj, Issue):
            before, _ = _before(obj)
            if any(v is _UNKNOWN for v in before.values()):
                unknown.append((obj, before))
            else:
                deltas.add(before, -1)
    if unknown:
        # Values assigned over attributes that were never loaded: read what is stored.
        columns = [getattr(Issue, name) for name in TRACKED]
        with session.no_autoflush:
            stored = {
                row.id: row
                for row in session.execute(
                    sa.select(Issue.id, *columns).where(Issue.id.in_([o.id for o, _ in unknown]))
                )
            }
        for obj, _ in unknown:
            row = stored.get(obj.id)
            if row is not None:
                deltas.add({name: getattr(row, name) for name in TRACKED}, -1)
    if deltas or changed:
        session.info[_PENDING] = (deltas, changed)


def _after_flush(session: Session, _context) -> None:
    if _PENDING not in session.info and not any(isinstance(o, Issue) for o in session.new):
        return  # nothing of dispatch's issues in this flush (or another service's session)
    deltas, changed = session.info.pop(_PENDING, (Deltas.empty(), []))
    for obj in session.new:
        if isinstance(obj, Issue):
            deltas.add(_current(obj), +1)
    for obj in changed:
        if obj not in session.deleted:
            deltas.add(_current(obj), +1)
    apply(session, deltas)


def _is_issues(orm_execute_state) -> bool:
    """A statement on dispatch's own ``issues`` table (other services in the same process, e.g.
    in the test run or a benchmark, have tables of that name too: not theirs)."""
    table = getattr(orm_execute_state.statement, "table", None)
    if table is None:
        return False
    # ``insert(Issue)`` names an annotated copy of the table; compare the table itself.
    plain = table._deannotate() if hasattr(table, "_deannotate") else table
    return plain is Issue.__table__


def _rows_delta(deltas: Deltas, rows: Iterable[Any], sign: int) -> None:
    for row in rows:
        deltas.add({name: getattr(row, name) for name in TRACKED}, sign)


def _on_execute(orm_execute_state):
    """Statements that write ``issues`` outside the unit of work (``insert(Issue)`` with rows,
    ``update(Issue).where(...)``, ``delete(Issue)``) are counted too: inserts from their rows,
    updates and deletes by reading the rows they touch before (locked) and after."""
    state = orm_execute_state
    if not (state.is_insert or state.is_update or state.is_delete) or not _is_issues(state):
        return None
    session = state.session
    deltas = Deltas.empty()
    if state.is_insert:
        params = state.parameters
        rows = params if isinstance(params, list) else [params] if params else []
        if not rows:
            raise RuntimeError(
                "INSERT into issues without rows of values bypasses the statistics aggregates "
                "(dispatch.aggregates): pass the rows as parameters or add Issue objects"
            )
        for row in rows:
            values = {name: row.get(name) for name in TRACKED}
            for name, default in DEFAULTS.items():
                if values[name] is None:
                    values[name] = default
            deltas.add(values, +1)
        apply(session, deltas)
        return None
    columns = [Issue.id, *(getattr(Issue, name) for name in TRACKED)]
    touched = sa.select(*columns)
    if state.statement.whereclause is not None:
        touched = touched.where(state.statement.whereclause)
    before = session.execute(touched.with_for_update(), state.parameters or {}).all()
    result = state.invoke_statement()
    _rows_delta(deltas, before, -1)
    if state.is_update and before:
        ids = [row.id for row in before]
        _rows_delta(deltas, session.execute(sa.select(*columns).where(Issue.id.in_(ids))), +1)
    apply(session, deltas)
    return result


event.listen(Session, "before_flush", _before_flush)
event.listen(Session, "after_flush", _after_flush)
event.listen(Session, "do_orm_execute", _on_execute)


# --- writing -----------------------------------------------------------------------------------


_COUNTS = Upsert(
    IssueStatsCount.__table__,
    conflict=("village_id", "category", "state", "level"),
    columns=("village_id", "category", "state", "level", "n", "rated", "satisfied"),
    add=("n", "rated", "satisfied"),
)
_TIMES = Upsert(
    IssueStatsResolveTime.__table__,
    conflict=("village_id", "category", "bucket"),
    columns=("village_id", "category", "bucket", "n"),
    add=("n",),
)


def apply(session: Session, deltas: Deltas) -> None:
    """Add ``deltas`` to the tables: one upsert per table, rows in key order so that two
    transactions touching the same rows wait for each other instead of deadlocking."""
    deltas = deltas.nonzero()
    _COUNTS.execute(session, _count_rows(sorted(deltas.counts.items(), key=_by_key)))
    _TIMES.execute(session, _time_rows(sorted(deltas.times.items(), key=_by_key)))


def _count_rows(items: Iterable[tuple[tuple, tuple]]) -> list[dict[str, Any]]:
    return [
        {
            "village_id": k[0],
            "category": k[1],
            "state": k[2],
            "level": k[3],
            "n": v[0],
            "rated": v[1],
            "satisfied": v[2],
        }
        for k, v in items
    ]


def _time_rows(items: Iterable[tuple[tuple, int]]) -> list[dict[str, Any]]:
    return [{"village_id": k[0], "category": k[1], "bucket": k[2], "n": n} for k, n in items]


def _by_key(item: tuple[tuple, Any]) -> tuple:
    return _order(item[0])


def _order(key: tuple) -> tuple:
    return tuple(str(part) if isinstance(part, uuid.UUID) else part for part in key)


# --- rebuilding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    table: str
    key: tuple
    column: str
    stored: int
    expected: int


def expected(session: Session) -> Deltas:
    """Both tables as the issues say they should be."""
    deltas = Deltas.empty()
    rows = session.execute(
        sa.select(
            Issue.village_id,
            Issue.category,
            Issue.state,
            Issue.level,
            sa.func.count(),
            sa.func.count(Issue.rating),
            sa.func.count().filter(Issue.rating.in_(sorted(SATISFIED_RATINGS))),
        ).group_by(Issue.village_id, Issue.category, Issue.state, Issue.level)
    )
    for village, category, state, level, n, rated, satisfied in rows:
        deltas.counts[(village, category, state, level)] = [n, rated, satisfied]
    done = session.execute(
        sa.select(Issue.village_id, Issue.category, Issue.reported_at, Issue.resolved_at)
        .where(Issue.state.in_(sorted(DONE_STATES)), Issue.resolved_at.is_not(None))
        .execution_options(yield_per=10_000)
    )
    for village, category, reported_at, resolved_at in done:
        bucket = bucket_of(whole_seconds(reported_at, resolved_at))
        for v in (village, ANY_VILLAGE):
            for c in (category, ANY_CATEGORY):
                deltas.times[(v, c, bucket)] += 1
    return deltas.nonzero()


def stored(session: Session) -> Deltas:
    deltas = Deltas.empty()
    for row in session.execute(sa.select(IssueStatsCount)).scalars():
        deltas.counts[(row.village_id, row.category, row.state, row.level)] = [
            row.n,
            row.rated,
            row.satisfied,
        ]
    for row in session.execute(sa.select(IssueStatsResolveTime)).scalars():
        deltas.times[(row.village_id, row.category, row.bucket)] = row.n
    return deltas.nonzero()


def differences(have: Deltas, want: Deltas) -> list[Difference]:
    out: list[Difference] = []
    names = ("n", "rated", "satisfied")
    for key in sorted(set(have.counts) | set(want.counts), key=_order):
        a, b = have.counts.get(key, [0, 0, 0]), want.counts.get(key, [0, 0, 0])
        out += [
            Difference("issue_stats_counts", key, names[i], a[i], b[i])
            for i in range(3)
            if a[i] != b[i]
        ]
    for key in sorted(set(have.times) | set(want.times), key=_order):
        a_n, b_n = have.times.get(key, 0), want.times.get(key, 0)
        if a_n != b_n:
            out.append(Difference("issue_stats_resolve_times", key, "n", a_n, b_n))
    return out


def rebuild(session: Session, *, fix: bool) -> list[Difference]:
    """Recompute both tables from the issues; the differences found (rewritten when ``fix``).
    Locks the tables first so that no issue change slips in between reading and writing."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            sa.text("LOCK TABLE issue_stats_counts, issue_stats_resolve_times IN EXCLUSIVE MODE")
        )
    want = expected(session)
    found = differences(stored(session), want)
    if fix and found:
        session.execute(sa.delete(IssueStatsCount.__table__))
        session.execute(sa.delete(IssueStatsResolveTime.__table__))
        _write(session, want)
    return found


def _write(session: Session, deltas: Deltas) -> None:
    for chunk in _chunks(sorted(deltas.counts.items(), key=_by_key), 5000):
        session.execute(sa.insert(IssueStatsCount.__table__), _count_rows(chunk))
    for chunk in _chunks(sorted(deltas.times.items(), key=_by_key), 5000):
        session.execute(sa.insert(IssueStatsResolveTime.__table__), _time_rows(chunk))


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
