"""The life cycle as plain rules, on a fake work item: every allowed and every refused step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from dispatch import domain
from shared.errors import Conflict, Forbidden, Invalid

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ALL_STATES = tuple(domain.STATES)


@dataclass
class FakeIssue:
    """The attributes of a work item, without a database."""

    state: str = "reported"
    level: str = "grid"
    category: str = "water_power"
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    assignee_id: uuid.UUID | None = None
    grid_id: uuid.UUID | None = None
    grid_leader_id: uuid.UUID | None = None
    handler_id: uuid.UUID | None = None
    follower_id: uuid.UUID | None = None
    difficulty: int | None = None
    due_at: datetime | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_on_time: bool | None = None
    resolution_note: str | None = None
    resolution_photo_ids: list = field(default_factory=list)
    resolution_count: int = 0
    closed_at: datetime | None = None
    rating: str | None = None
    reject_reason: str | None = None
    ever_unsatisfied: bool = False
    callback_status: str | None = None
    department_id: uuid.UUID | None = None
    reminded_at: datetime | None = None
    overdue_at: datetime | None = None
    overdue_escalated_at: datetime | None = None
    urge_count: int = 0
    last_urged_at: datetime | None = None
    version: int = 1


def do(action: str, item: FakeIssue) -> domain.Step:
    """Apply ``action`` with ordinary arguments."""
    due = NOW + timedelta(hours=24)
    if action == "assign":
        return domain.assign(
            item,
            assignee_id=uuid.uuid4(),
            grid_id=None,
            grid_leader_id=None,
            difficulty=2,
            due_at=due,
            now=NOW,
        )
    if action == "reassign":
        return domain.assign(
            item,
            assignee_id=uuid.uuid4(),
            grid_id=None,
            grid_leader_id=None,
            difficulty=2,
            due_at=due,
            now=NOW,
            reassign=True,
        )
    if action == "reject":
        return domain.reject(item, reason="重复反映")
    if action == "start":
        return domain.start(item, now=NOW)
    if action == "note":
        return domain.note(item, text="已上门查看")
    if action == "resolve":
        return domain.resolve(item, note="已修好", now=NOW)
    if action == "rate":
        return domain.rate(
            item, rating="satisfied", comment=None, now=NOW, reopen_due_at=due, area_leader_id=None
        )
    if action == "rate_late":
        item.resolution_count = 1  # closed with resolution 1 unrated: by the scheduler
        return domain.rate_after_auto_close(
            item, rating="satisfied", comment=None, reopen_due_at=due, area_leader_id=None
        )
    if action == "auto_close":
        return domain.auto_close(item, now=NOW)
    if action == "callback":
        return domain.record_callback(
            item, passed=True, notes=None, reopen_due_at=due, area_leader_id=None
        )
    if action == "escalate":
        return domain.escalate(item, to_level="township", reason="村里解决不了", is_admin=False)
    if action == "withdraw":
        return domain.withdraw(item, reason="已自行解决")
    if action == "urge":
        return domain.urge(item, now=NOW, text=None)
    raise AssertionError(action)


EXPECTED = {
    "assign": {"reported": "assigned"},
    "reassign": {
        "reported": "assigned",  # nothing to re-assign yet: a first assignment
        "assigned": "assigned",
        "in_progress": "assigned",
        "reopened": "assigned",
    },
    "reject": {"reported": "rejected", "assigned": "rejected"},
    "start": {"assigned": "in_progress", "reopened": "in_progress"},
    "note": {s: s for s in ("assigned", "in_progress", "reopened")},
    "resolve": {"in_progress": "resolved"},
    "rate": {"resolved": "closed"},
    "rate_late": {"closed": "closed"},
    "auto_close": {"resolved": "closed"},
    "callback": {"closed": "closed"},
    "escalate": {s: s for s in ("reported", "assigned", "in_progress", "reopened")},
    "withdraw": {"reported": "withdrawn"},
    "urge": {s: s for s in ("reported", "assigned", "in_progress", "reopened")},
}
CASES = [(action, state) for action in EXPECTED for state in ALL_STATES]


@pytest.mark.parametrize(("action", "state"), CASES)
def test_each_step_is_allowed_only_from_its_states(action: str, state: str):
    item = FakeIssue(state=state, due_at=NOW + timedelta(hours=1))
    allowed = EXPECTED[action]
    if state in allowed:
        step = do(action, item)
        assert (step.from_state, step.to_state) == (state, allowed[state])
        assert item.state == allowed[state]
    else:
        with pytest.raises(Conflict) as caught:
            do(action, item)
        assert caught.value.code == "wrong_state"
        assert caught.value.message.endswith("。")
        assert item.state == state  # nothing changed


def test_resolving_a_closed_issue_says_why():
    with pytest.raises(Conflict, match="该事项已关闭，不能再次办结。"):
        domain.resolve(FakeIssue(state="closed"), note="x", now=NOW)


def test_rating_twice_says_why():
    item = FakeIssue(state="resolved")
    do("rate", item)
    with pytest.raises(Conflict, match="不能重复评价"):
        do("rate", item)


def test_unsatisfied_reopens_with_a_new_deadline_and_the_area_leader():
    leader = uuid.uuid4()
    item = FakeIssue(state="resolved", assignee_id=uuid.uuid4(), overdue_at=NOW)
    new_due = NOW + timedelta(hours=48)
    step = domain.rate(
        item,
        rating="unsatisfied",
        comment="没修好",
        now=NOW,
        reopen_due_at=new_due,
        area_leader_id=leader,
    )
    assert (step.action, step.to_state) == ("reopen", "reopened")
    assert item.due_at == new_due and item.follower_id == leader
    assert item.overdue_at is None and item.ever_unsatisfied
    assert step.details["reason"] == "unsatisfied"


@pytest.mark.parametrize("rating", ["satisfied", "basically_satisfied"])
def test_satisfied_closes(rating: str):
    item = FakeIssue(state="resolved")
    domain.rate(item, rating=rating, comment=None, now=NOW, reopen_due_at=NOW, area_leader_id=None)
    assert item.state == "closed" and item.closed_at == NOW and item.callback_status is None


def test_a_closed_issue_that_was_once_unsatisfied_waits_for_a_callback():
    item = FakeIssue(state="resolved", ever_unsatisfied=True)
    do("rate", item)
    assert item.callback_status == "pending"


def test_a_failed_callback_reopens():
    item = FakeIssue(state="closed", assignee_id=uuid.uuid4())
    step = domain.record_callback(
        item, passed=False, notes="群众不认可", reopen_due_at=NOW, area_leader_id=None
    )
    assert item.state == "reopened" and item.callback_status == "failed"
    assert step.details == {
        "reason": "callback_failed",
        "due_at": NOW,
        "area_leader_id": None,
        "passed": False,
    }


@pytest.mark.parametrize(
    ("lawful", "implemented", "accepted", "passed"),
    [
        (True, True, True, True),
        (False, True, True, False),
        (True, False, True, False),
        (True, True, False, False),
    ],
)
def test_a_callback_passes_only_when_all_three_hold(lawful, implemented, accepted, passed):
    assert domain.callback_passed(lawful=lawful, implemented=implemented, accepted=accepted) is (
        passed
    )


@pytest.mark.parametrize(
    ("reason", "state", "allowed"),
    [
        ("unsatisfied", "resolved", True),
        ("unsatisfied", "closed", True),  # rated unsatisfied after the auto-close
        ("callback_failed", "closed", True),
        ("callback_failed", "resolved", False),
        ("admin", "resolved", True),
        ("admin", "closed", True),
        ("admin", "in_progress", False),
        ("admin", "rejected", False),
    ],
)
def test_reopen_reasons_and_their_states(reason: str, state: str, allowed: bool):
    item = FakeIssue(state=state)
    if allowed:
        domain.reopen(item, reason=reason, due_at=NOW, area_leader_id=None)
        assert item.state == "reopened"
    else:
        with pytest.raises(Conflict):
            domain.reopen(item, reason=reason, due_at=NOW, area_leader_id=None)


def test_levels_only_climb():
    item = FakeIssue(state="assigned", level="township")
    domain.escalate(item, to_level="area_leader", reason="需要协调", is_admin=False)
    assert item.level == "area_leader"
    with pytest.raises(Conflict, match="已在"):
        domain.escalate(item, to_level="area_leader", reason="再升", is_admin=False)
    with pytest.raises(Forbidden):
        domain.escalate(item, to_level="township", reason="降级", is_admin=False)
    with pytest.raises(Conflict, match="admin_override"):
        domain.escalate(item, to_level="township", reason="降级", is_admin=True)
    step = domain.escalate(
        item, to_level="grid", reason="村里已能解决", is_admin=True, admin_override=True
    )
    assert item.level == "grid" and step.details["override"] is True


def test_a_non_admin_climbs_one_level_at_a_time_and_never_skips_a_level():
    item = FakeIssue(state="in_progress")
    with pytest.raises(Forbidden, match="逐级") as skipped:
        domain.escalate(item, to_level="area_leader", reason="想直接找包片领导", is_admin=False)
    assert skipped.value.code == "level_skip" and item.level == "grid"
    with pytest.raises(Forbidden, match="逐级"):
        domain.escalate(
            item, to_level="county", reason="直接报县里", is_admin=False, department_id=uuid.uuid4()
        )
    assert item.level == "grid" and item.department_id is None
    domain.escalate(item, to_level="township", reason="村里解决不了", is_admin=False)
    domain.escalate(item, to_level="area_leader", reason="乡里协调不了", is_admin=False)
    assert item.level == "area_leader"


def test_only_an_admin_refers_an_item_to_the_county_even_from_the_level_below():
    item = FakeIssue(state="in_progress", level="area_leader")
    with pytest.raises(Forbidden, match="管理员") as refused:
        domain.escalate(
            item, to_level="county", reason="需县里协调", is_admin=False, department_id=uuid.uuid4()
        )
    assert refused.value.code == "county_admin_only" and item.level == "area_leader"


def test_an_admin_may_skip_a_level_with_a_reason_and_the_step_says_so():
    item = FakeIssue(state="assigned")
    with pytest.raises(Invalid):
        domain.escalate(
            item, to_level="county", reason=" ", is_admin=True, department_id=uuid.uuid4()
        )
    step = domain.escalate(
        item,
        to_level="county",
        reason="水源污染，需县里处理",
        is_admin=True,
        department_id=uuid.uuid4(),
    )
    assert item.level == "county" and step.details["skipped"] is True


def test_escalation_hands_the_item_over_with_a_new_deadline_and_keeps_the_grid_worker():
    worker, leader = uuid.uuid4(), uuid.uuid4()
    item = FakeIssue(
        state="in_progress",
        assignee_id=worker,
        due_at=NOW - timedelta(hours=30),
        reminded_at=NOW - timedelta(hours=40),
        overdue_at=NOW - timedelta(hours=29),
        overdue_escalated_at=NOW,
    )
    new_due = NOW + timedelta(hours=72)
    domain.escalate(item, to_level="township", reason="超期", is_admin=True, due_at=new_due)
    domain.escalate(
        item, to_level="area_leader", reason="需协调", is_admin=False, handler_id=leader
    )
    assert (item.level, item.handler_id, item.assignee_id) == ("area_leader", leader, worker)
    assert item.due_at == new_due
    assert (item.reminded_at, item.overdue_at, item.overdue_escalated_at) == (None, None, None)
    assert not domain.is_overdue(item, NOW + timedelta(hours=1))


def test_a_department_is_named_only_at_the_township_or_the_county():
    item = FakeIssue(state="assigned", level="township", department_id=uuid.uuid4())
    with pytest.raises(Invalid):
        domain.escalate(
            item, to_level="area_leader", reason="需协调", is_admin=True, department_id=uuid.uuid4()
        )
    domain.escalate(item, to_level="area_leader", reason="需协调", is_admin=True)
    assert item.department_id is None  # the area leader holds it now, not the department


def test_an_assignment_names_a_worker_or_a_township_department_never_both():
    for assignee, department in ((None, None), (uuid.uuid4(), uuid.uuid4())):
        with pytest.raises(Invalid):
            domain.assign(
                FakeIssue(),
                assignee_id=assignee,
                department_id=department,
                grid_id=None,
                grid_leader_id=None,
                difficulty=2,
                due_at=NOW,
                now=NOW,
            )
    item = FakeIssue(level="grid")
    department = uuid.uuid4()
    step = domain.assign(
        item,
        assignee_id=None,
        department_id=department,
        grid_id=None,
        grid_leader_id=None,
        difficulty=2,
        due_at=NOW + timedelta(hours=24),
        now=NOW,
    )
    assert (item.state, item.level, item.department_id) == ("assigned", "township", department)
    assert step.to_level == "township"
    higher = FakeIssue(state="in_progress", level="county", department_id=uuid.uuid4())
    with pytest.raises(Conflict):
        domain.assign(
            higher,
            assignee_id=None,
            department_id=department,
            grid_id=None,
            grid_leader_id=None,
            difficulty=2,
            due_at=NOW,
            now=NOW,
            reassign=True,
        )


def test_county_needs_a_department_and_a_reason():
    item = FakeIssue(state="in_progress", level="area_leader")
    with pytest.raises(Invalid):
        domain.escalate(item, to_level="county", reason="需县里协调", is_admin=True)
    with pytest.raises(Invalid):
        domain.escalate(
            item, to_level="county", reason=" ", is_admin=True, department_id=uuid.uuid4()
        )
    dept = uuid.uuid4()
    domain.escalate(item, to_level="county", reason="需县里协调", is_admin=True, department_id=dept)
    assert item.level == "county" and item.department_id == dept
    assert domain.next_level("county") is None and domain.next_level("grid") == "township"


def test_resolving_after_the_deadline_is_not_on_time():
    item = FakeIssue(state="in_progress", due_at=NOW - timedelta(minutes=1))
    domain.resolve(item, note="迟了", now=NOW)
    assert item.resolved_on_time is False and item.resolution_count == 1


def test_a_new_assignment_restarts_the_deadline_clock():
    item = FakeIssue(state="assigned", reminded_at=NOW, overdue_at=NOW, overdue_escalated_at=NOW)
    do("reassign", item)
    assert (item.reminded_at, item.overdue_at, item.overdue_escalated_at) == (None, None, None)


def test_difficulty_and_deadline_rules():
    with pytest.raises(Invalid):
        domain.assign(
            FakeIssue(),
            assignee_id=uuid.uuid4(),
            grid_id=None,
            grid_leader_id=None,
            difficulty=0,
            due_at=NOW,
            now=NOW,
        )
    assert domain.due_at_for(now=NOW, due_at=None, due_in_hours=None, default_hours=24) == (
        NOW + timedelta(hours=24)
    )
    assert domain.due_at_for(now=NOW, due_at=None, due_in_hours=2, default_hours=24) == (
        NOW + timedelta(hours=2)
    )
    with pytest.raises(Invalid):
        domain.due_at_for(
            now=NOW, due_at=NOW - timedelta(hours=1), due_in_hours=None, default_hours=24
        )
    with pytest.raises(Invalid):
        domain.due_at_for(
            now=NOW, due_at=NOW + timedelta(hours=1), due_in_hours=1, default_hours=24
        )


def test_a_stale_version_is_a_conflict():
    item = FakeIssue(version=3)
    domain.check_version(item, None)
    domain.check_version(item, 3)
    with pytest.raises(Conflict):
        domain.check_version(item, 2)


def test_the_seed_completion_rate_and_percentiles():
    assert domain.completion_rate(2750, 2811) == 97.83
    assert domain.completion_rate(0, 0) == 0.0
    assert domain.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert domain.percentile([10.0], 0.9) == 10.0
    assert domain.percentile(list(range(11)), 0.9) == 9.0
    assert domain.percentile([], 0.5) is None


def test_the_callback_sample_is_stable_and_near_the_share():
    ids = [uuid.UUID(int=i * 7919 + 1) for i in range(4000)]
    picked = [i for i in ids if domain.in_callback_sample(i, 0.25)]
    assert 0.2 < len(picked) / len(ids) < 0.3
    assert picked == [i for i in ids if domain.in_callback_sample(i, 0.25)]
    assert not any(domain.in_callback_sample(i, 0.0) for i in ids[:50])
    assert all(domain.in_callback_sample(i, 1.0) for i in ids[:50])


def test_a_rating_after_the_auto_close_is_kept_and_unsatisfied_reopens():
    leader = uuid.uuid4()
    kept = FakeIssue(state="resolved", resolution_count=1)
    domain.auto_close(kept, now=NOW)
    step = domain.rate_after_auto_close(
        kept, rating="basically_satisfied", comment=None, reopen_due_at=NOW, area_leader_id=leader
    )
    assert (step.action, kept.state, kept.rating) == ("rate_late", "closed", "basically_satisfied")
    with pytest.raises(Conflict, match="不能重复评价"):
        domain.rate_after_auto_close(
            kept, rating="unsatisfied", comment=None, reopen_due_at=NOW, area_leader_id=leader
        )

    reopened = FakeIssue(state="resolved", resolution_count=1)
    domain.auto_close(reopened, now=NOW)
    due = NOW + timedelta(hours=48)
    step = domain.rate_after_auto_close(
        reopened, rating="unsatisfied", comment="没修好", reopen_due_at=due, area_leader_id=leader
    )
    assert (step.action, step.from_state, step.to_state) == ("reopen", "closed", "reopened")
    assert reopened.follower_id == leader and reopened.due_at == due
    assert reopened.closed_at is None and reopened.ever_unsatisfied


def test_a_new_resolution_is_not_rated_yet():
    item = FakeIssue(state="in_progress", rating="unsatisfied", resolution_count=1)
    domain.resolve(item, note="已修好", now=NOW)
    assert item.rating is None and item.resolution_count == 2


def test_free_text_fields_refuse_a_nul_even_when_loaded_outside_a_request() -> None:
    from marshmallow import ValidationError

    from dispatch.schemas import ReasonIn

    with pytest.raises(ValidationError) as refused:
        ReasonIn().load({"reason": "重复反映\x00"})
    assert "空字符" in str(refused.value.messages["reason"])
