"""What scoring consumes: dispatch's issue steps, intake's ratings, tickets and accounts, and
dispatch's villages.

One ``handle_<event>`` per event type and the one table ``SUBSCRIPTIONS`` the worker binds.
Each handler declares only the fields it reads (tolerant reader). The consumer runs it in the
transaction that records the event id, so a redelivery changes nothing; the ledger's unique
(event, rule) key says the same a second time.

Published by scoring (``services.award``, ``boards.publish_board``): points.awarded,
leaderboard.published.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields
from sqlalchemy.orm import Session

from scoring import services
from scoring.settings import ScoringSettings
from shared.consumer import batched
from shared.events import Envelope, load_data
from shared.settings import SettingsHolder


class _Tolerant(Schema):
    class Meta:
        unknown = EXCLUDE


class SnapshotData(_Tolerant):
    state = fields.String(load_default=None, allow_none=True)
    level = fields.String(load_default=None, allow_none=True)
    assignee_id = fields.UUID(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resolution_no = fields.Integer(load_default=None, allow_none=True)
    resolved_at = fields.AwareDateTime(load_default=None, allow_none=True)
    rating = fields.String(load_default=None, allow_none=True)
    closed_at = fields.AwareDateTime(load_default=None, allow_none=True)


class _IssueStep(_Tolerant):
    """What every dispatch ``issue.*`` event carries."""

    issue_id = fields.UUID(required=True)
    issue_version = fields.Integer(load_default=None, allow_none=True)
    snapshot = fields.Nested(SnapshotData, load_default=None, allow_none=True)
    assignee_id = fields.UUID(load_default=None, allow_none=True)


class AssignedData(_IssueStep):
    assignee_name = fields.String(load_default=None, allow_none=True)
    grid_id = fields.UUID(load_default=None, allow_none=True)
    village_id = fields.UUID(load_default=None, allow_none=True)
    grid_leader_id = fields.UUID(load_default=None, allow_none=True)
    difficulty = fields.Integer(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)


class ResolvedData(_IssueStep):
    resolver_id = fields.UUID(load_default=None, allow_none=True)
    resolver_role = fields.String(load_default=None, allow_none=True)
    difficulty = fields.Integer(load_default=None, allow_none=True)
    due_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resolved_at = fields.AwareDateTime(load_default=None, allow_none=True)
    on_time = fields.Boolean(load_default=None, allow_none=True)
    resolution_no = fields.Integer(load_default=None, allow_none=True)


class RatedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    rating = fields.String(required=True)
    rated_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resolution_no = fields.Integer(load_default=None, allow_none=True)


class ReopenedData(_IssueStep):
    reason = fields.String(load_default=None, allow_none=True)


class ClosedData(_IssueStep):
    rating = fields.String(load_default=None, allow_none=True)
    closed_at = fields.AwareDateTime(load_default=None, allow_none=True)


class CallbackData(_IssueStep):
    passed = fields.Boolean(required=True)


class ReportedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    ticket_no = fields.String(load_default=None, allow_none=True)


class AccountData(_Tolerant):
    user_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    roles = fields.List(fields.String(), load_default=list)
    village_id = fields.UUID(load_default=None, allow_none=True)
    active = fields.Boolean(load_default=True)
    revision = fields.Integer(load_default=None, allow_none=True)
    tokens_valid_after = fields.AwareDateTime(load_default=None, allow_none=True)


class VillageData(_Tolerant):
    village_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    area_leader_id = fields.UUID(load_default=None, allow_none=True)
    revision = fields.Integer(load_default=0, allow_none=True)


_settings = SettingsHolder(ScoringSettings)
# The service's settings (the app's inside a request, else the worker's or the environment's).
settings, use_settings = _settings.get, _settings.use


def handle_issue_reported(session: Session, event: Envelope) -> None:
    """Only the ticket number, shown beside each ledger entry."""
    data = load_data(ReportedData, event.data)
    services.record_ticket(session, data["issue_id"], data["ticket_no"])


def handle_issue_assigned(session: Session, event: Envelope) -> None:
    """Assignee, grid, grid leader, difficulty, deadline; one more assignment to respond to."""
    services.receive_assignment(session, event, load_data(AssignedData, event.data))


def handle_issue_started(session: Session, event: Envelope) -> None:
    """Started: a response if within the limit."""
    services.receive_start(session, settings(), event, _IssueStep().load(event.data))


@batched
def handle_issue_resolved(session: Session, events: list[Envelope]) -> None:
    """Award points on resolution to the resolver: difficulty when on time, else the late rule
    (a run of them together: ``shared.consumer.batched``)."""
    services.receive_resolutions(
        session, [(event, load_data(ResolvedData, event.data)) for event in events]
    )


def handle_issue_rated(session: Session, event: Envelope) -> None:
    """满意 +1, 基本满意 0, 不满意 −1 to the resolver of the rated resolution."""
    services.receive_rating(session, event, load_data(RatedData, event.data))


def handle_issue_reopened(session: Session, event: Envelope) -> None:
    """Claw back the on-time points of the resolution that did not hold."""
    services.receive_reopen(session, event, load_data(ReopenedData, event.data))


def handle_issue_callback_recorded(session: Session, event: Envelope) -> None:
    """A failed callback costs the resolver (−2 by default)."""
    services.receive_callback(session, event, load_data(CallbackData, event.data))


def handle_issue_closed(session: Session, event: Envelope) -> None:
    services.receive_close(session, event, load_data(ClosedData, event.data))


def handle_issue_overdue(session: Session, event: Envelope) -> None:
    services.receive_overdue(session, event, _IssueStep().load(event.data))


def handle_account_upserted(session: Session, event: Envelope) -> None:
    """Names, roles, village and status (newer revisions only); never phones."""
    services.upsert_person(session, load_data(AccountData, event.data))


def handle_village_upserted(session: Session, event: Envelope) -> None:
    """Village names and area leaders (newer revisions only)."""
    services.upsert_village(session, load_data(VillageData, event.data))


SUBSCRIPTIONS = {
    "issue.reported": handle_issue_reported,
    "issue.assigned": handle_issue_assigned,
    "issue.started": handle_issue_started,
    "issue.resolved": handle_issue_resolved,
    "issue.rated": handle_issue_rated,
    "issue.reopened": handle_issue_reopened,
    "issue.callback_recorded": handle_issue_callback_recorded,
    "issue.closed": handle_issue_closed,
    "issue.overdue": handle_issue_overdue,
    "account.upserted": handle_account_upserted,
    "village.upserted": handle_village_upserted,
}
