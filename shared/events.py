"""The event envelope of DESIGN.md, built and checked in one place, and ``emit`` into the outbox.

Example::

    emit(session, "issue.reported", {"issue_id": issue.id, ...})   # row in the caller's txn
    envelope = parse_envelope(body)                                 # raises InvalidEnvelope
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy.orm import Session

from shared.logging import current_correlation_id

EVENT_TYPE = re.compile(r"^[a-z][a-z_]*\.[a-z][a-z_]*$")
ENVELOPE_VERSION = 1


class InvalidEnvelope(ValueError):
    """A message that is not a Service365 envelope; it goes straight to the DLQ."""


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(required=True)
    type = fields.String(required=True, validate=validate.Regexp(EVENT_TYPE))
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    occurred_at = fields.AwareDateTime(required=True)
    producer = fields.String(required=True, validate=validate.Length(min=1, max=40))
    correlation_id = fields.String(required=True, validate=validate.Length(min=1, max=80))
    data = fields.Dict(required=True)


_schema = EnvelopeSchema()


@functools.cache
def _schema_of(schema: type[Schema]) -> Schema:
    return schema()


def load_data(schema: type[Schema], data: Mapping[str, Any]) -> Any:
    """An event's ``data`` checked and converted by ``schema`` (a marshmallow class).

    One instance per class per process: building a schema costs about a millisecond, more than
    applying most events; a schema instance is safe to reuse for ``load``.
    """
    return _schema_of(schema).load(data)


@dataclass(frozen=True)
class Envelope:
    id: uuid.UUID
    type: str
    version: int
    occurred_at: datetime
    producer: str
    correlation_id: str
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "producer": self.producer,
            "correlation_id": self.correlation_id,
            "data": self.data,
        }


def json_safe(value: Any) -> Any:
    """UUIDs, datetimes and decimals into JSON types, recursively (datetimes in UTC ISO-8601)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in event data")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def make_envelope(
    event_type: str,
    data: dict[str, Any],
    *,
    producer: str,
    correlation_id: str | None = None,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """Build a checked envelope as a JSON-ready dict."""
    envelope = {
        "id": str(event_id or uuid.uuid4()),
        "type": event_type,
        "version": ENVELOPE_VERSION,
        "occurred_at": (occurred_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "producer": producer,
        "correlation_id": correlation_id or current_correlation_id(),
        "data": json_safe(data),
    }
    errors = _schema.validate(envelope)
    if errors:
        raise ValueError(f"bad envelope for {event_type}: {errors}")
    return envelope


def parse_envelope(body: bytes | str | dict[str, Any]) -> Envelope:
    """Parse and check a message body; ``InvalidEnvelope`` if it is not one of ours."""
    try:
        raw = body if isinstance(body, dict) else json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEnvelope(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidEnvelope("envelope is not a JSON object")
    try:
        loaded = _schema.load(raw)
    except ValidationError as exc:
        raise InvalidEnvelope(f"envelope fields: {exc.messages}") from None
    return Envelope(**loaded)


def emit(session: Session, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """Write an event to the outbox in the caller's transaction; the relay publishes it later.

    The session must come from the service's ``Database`` (it carries the outbox table).
    """
    return emit_many(session, event_type, [data])[0]


def emit_many(
    session: Session, event_type: str, datas: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``emit`` for several events of one type: one statement (an executemany) for them all."""
    outbox: sa.Table | None = session.info.get("outbox")
    producer: str | None = session.info.get("producer")
    if outbox is None or producer is None:
        raise RuntimeError("session has no outbox: make it with the service's Database")
    envelopes = [make_envelope(event_type, data, producer=producer) for data in datas]
    if envelopes:
        now = datetime.now(UTC)
        session.execute(
            sa.insert(outbox),
            [
                {
                    "id": uuid.UUID(envelope["id"]),
                    "event_type": event_type,
                    "envelope": envelope,
                    # a microsecond apart: the relay publishes in created_at order, as emitted
                    "created_at": now + timedelta(microseconds=k),
                    "attempts": 0,
                }
                for k, envelope in enumerate(envelopes)
            ],
        )
    return envelopes
