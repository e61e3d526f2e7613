"""What feed consumes: scoring's monthly 红黑榜, intake's accounts (names, and whether a token
still speaks for its account) and dispatch's villages (names).

One ``handle_<event>`` per event type and the one table ``SUBSCRIPTIONS`` the worker binds.
Each handler declares only the fields it reads (tolerant reader). The consumer runs it in the
transaction that records the event id, so a redelivery changes nothing.

Published by feed (``services._publish``, ``services.publish_post``, ``services.publish_board``):
news.published, post.published.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate
from sqlalchemy.orm import Session

from feed import domain, services
from shared.events import Envelope, load_data


class _Tolerant(Schema):
    class Meta:
        unknown = EXCLUDE


class BoardRow(_Tolerant):
    user_id = fields.UUID(required=True)
    name = fields.String(load_default="", allow_none=True)
    points = fields.Integer(required=True)
    rank = fields.Integer(required=True)


class BoardData(_Tolerant):
    period = fields.String(required=True, validate=validate.Regexp(domain.PERIOD))
    top = fields.List(fields.Nested(BoardRow), load_default=list)
    bottom = fields.List(fields.Nested(BoardRow), load_default=list)


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
    revision = fields.Integer(load_default=0, allow_none=True)


def _rows(rows: list[dict]) -> list[dict]:
    return [
        {
            "user_id": str(r["user_id"]),
            "name": (r["name"] or "")[:64],
            "points": r["points"],
            "rank": r["rank"],
        }
        for r in rows
    ]


def handle_leaderboard_published(session: Session, event: Envelope) -> None:
    """The month's 红黑榜 becomes a township post, once per month (a second copy is ignored)."""
    data = load_data(BoardData, event.data)
    services.publish_board(
        session, data["period"], _rows(data["top"]), _rows(data["bottom"]), event.occurred_at
    )


def handle_account_upserted(session: Session, event: Envelope) -> None:
    """Names, roles, village and status (newer revisions only); never phones."""
    services.upsert_person(session, load_data(AccountData, event.data))


def handle_village_upserted(session: Session, event: Envelope) -> None:
    """Village names (newer revisions only)."""
    services.upsert_village(session, load_data(VillageData, event.data))


SUBSCRIPTIONS = {
    "leaderboard.published": handle_leaderboard_published,
    "account.upserted": handle_account_upserted,
    "village.upserted": handle_village_upserted,
}
