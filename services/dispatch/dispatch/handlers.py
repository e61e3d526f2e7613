"""What dispatch consumes: intake's reports, ratings, the residents' follow-ups and accounts.

One ``handle_<event>`` per event type and the one table ``SUBSCRIPTIONS`` the worker binds.
Each handler declares only the fields it reads (tolerant reader). The consumer runs it in the
transaction that records the event id, so a redelivery changes nothing.

Published by dispatch (``services.py``, ``organisation.py``, ``scheduler.py``): issue.assigned,
issue.started, issue.escalated, issue.overdue, issue.reminder_due, issue.resolved,
issue.reopened, issue.closed, issue.rejected, issue.callback_recorded,
issue.withdrawal_declined (each with
``issue_version`` and ``snapshot``: ``services.emit_issue``), village.upserted (with ``revision``),
callbacks.pending (the scheduler's daily digest of callbacks waiting).
"""

from __future__ import annotations

import logging

from marshmallow import EXCLUDE, Schema, fields
from sqlalchemy.orm import Session

from dispatch import services
from dispatch.settings import DispatchSettings
from shared.consumer import batched
from shared.errors import Conflict
from shared.events import Envelope, load_data
from shared.settings import SettingsHolder

log = logging.getLogger("dispatch.handlers")


class _Tolerant(Schema):
    class Meta:
        unknown = EXCLUDE


class ReportedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    ticket_no = fields.String(load_default=None, allow_none=True)
    reporter_id = fields.UUID(required=True)
    category = fields.String(required=True)
    description = fields.String(load_default="", allow_none=True)
    village_id = fields.UUID(required=True)
    address = fields.String(load_default=None, allow_none=True)
    lat = fields.Float(load_default=None, allow_none=True)
    lon = fields.Float(load_default=None, allow_none=True)
    photo_ids = fields.List(fields.UUID(), load_default=list, allow_none=True)
    reported_at = fields.AwareDateTime(required=True)
    contact_name = fields.String(load_default=None, allow_none=True)
    contact_phone = fields.String(load_default=None, allow_none=True)
    submitted_by = fields.UUID(load_default=None, allow_none=True)


class FollowUpData(_Tolerant):
    """intake's ``issue.urged`` / ``issue.details_added`` / ``issue.withdrawn``."""

    issue_id = fields.UUID(required=True)
    reporter_id = fields.UUID(load_default=None, allow_none=True)
    text = fields.String(load_default=None, allow_none=True)
    photo_ids = fields.List(fields.UUID(), load_default=list, allow_none=True)
    urged_at = fields.AwareDateTime(load_default=None, allow_none=True)
    added_at = fields.AwareDateTime(load_default=None, allow_none=True)
    withdrawn_at = fields.AwareDateTime(load_default=None, allow_none=True)


class RatedData(_Tolerant):
    issue_id = fields.UUID(required=True)
    reporter_id = fields.UUID(load_default=None, allow_none=True)
    rating = fields.String(required=True)
    comment = fields.String(load_default=None, allow_none=True)
    rated_at = fields.AwareDateTime(load_default=None, allow_none=True)
    resolution_no = fields.Integer(load_default=None, allow_none=True)


class AccountData(_Tolerant):
    user_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    roles = fields.List(fields.String(), load_default=list)
    phone = fields.String(load_default=None, allow_none=True)
    village_id = fields.UUID(load_default=None, allow_none=True)
    active = fields.Boolean(load_default=True)
    revision = fields.Integer(load_default=None, allow_none=True)
    tokens_valid_after = fields.AwareDateTime(load_default=None, allow_none=True)


_settings = SettingsHolder(DispatchSettings)
# The service's settings (the app's inside a request, else the worker's or the environment's).
settings, use_settings = _settings.get, _settings.use


@batched
def handle_issue_reported(session: Session, events: list[Envelope]) -> None:
    """Reports enter the admin's queue (a run of them together: ``shared.consumer.batched``)."""
    services.receive_reports(session, [load_data(ReportedData, event.data) for event in events])


def handle_issue_rated(session: Session, event: Envelope) -> None:
    """(Basically) satisfied closes the item; unsatisfied sends it back with the area leader.

    A rating naming another resolution than the current one is recorded, not applied.
    """
    data = load_data(RatedData, event.data)
    try:
        services.apply_rating(
            session,
            settings(),
            issue_id=data["issue_id"],
            rating=data["rating"],
            comment=data["comment"],
            reporter_id=data["reporter_id"],
            resolution_no=data["resolution_no"],
        )
    except Conflict as exc:
        # A rating the life cycle cannot take (already closed by the scheduler, say): no retry
        # will change that, so it is logged and acknowledged rather than dead-lettered.
        log.warning("rating of %s ignored: %s", data["issue_id"], exc.message)


def handle_account_upserted(session: Session, event: Envelope) -> None:
    """Keep the names and roles of staff (and residents: cheap, and roles may change); an
    older or equal ``revision`` than the one held is ignored."""
    services.upsert_staff(session, load_data(AccountData, event.data))


def handle_issue_urged(session: Session, event: Envelope) -> None:
    """催办: counted on the item (``urge_count``, ``last_urged_at``) for its holder to see."""
    services.receive_urge(session, load_data(FollowUpData, event.data), event.occurred_at)


def handle_issue_details_added(session: Session, event: Envelope) -> None:
    """补充说明: the resident's words and photos join the item's history."""
    services.receive_details(session, load_data(FollowUpData, event.data), event.occurred_at)


def handle_issue_withdrawn(session: Session, event: Envelope) -> None:
    """撤回: the item leaves the queue, unless it was assigned meanwhile (then it is kept)."""
    services.receive_withdrawal(session, load_data(FollowUpData, event.data), event.occurred_at)


SUBSCRIPTIONS = {
    "issue.reported": handle_issue_reported,
    "issue.urged": handle_issue_urged,
    "issue.details_added": handle_issue_details_added,
    "issue.withdrawn": handle_issue_withdrawn,
    "issue.rated": handle_issue_rated,
    "account.upserted": handle_account_upserted,
}
