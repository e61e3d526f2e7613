"""Open311 GeoReport v2 use cases: the service catalogue, reading reports, creating one.

The GeoReport vocabulary meets ours here: a *service* is one of our six categories, a *service
request* is a report (its ``service_request_id`` is our ticket number), and an API client reports
through a system account of its own. Nothing here knows HTTP, XML or JSON; ``open311.py`` does.
Spec: http://wiki.open311.org/GeoReport_v2
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from intake import domain
from intake.accounts import ACCOUNT_UPSERTED, account_event_data
from intake.models import Issue, User, Village
from intake.services import NewReport, report_issue
from intake.settings import IntakeSettings
from shared.clock import utcnow
from shared.errors import BadRequest, Forbidden, NotFound
from shared.events import emit

# "Default query limit is a span of 90 days or first 1000 requests returned, whichever is
# smallest" (GeoReport v2, GET Service Requests, Response Volume).
MAX_SPAN = timedelta(days=90)
MAX_RESULTS = 1000

CLOSED_STATES = frozenset({"resolved", "closed", "rejected", "withdrawn"})
TOWNSHIP_AGENCY = "沙口集乡人民政府"
AGENCY_BY_LEVEL = {
    "township": TOWNSHIP_AGENCY,
    "area_leader": f"{TOWNSHIP_AGENCY}（包片领导）",
    "county": "魏县县直有关部门",
}
# When the catalogue texts below were last edited; the villages' own changes move it later.
CATALOGUE_EDITED = datetime(2026, 1, 1, tzinfo=UTC)
SYSTEM_USERNAME_PREFIX = "open311:"


@dataclass(frozen=True)
class ServiceType:
    """One GeoReport *service*: a category of ours, with the words clients show people."""

    code: str
    name: str
    description: str
    keywords: str
    group: str


_SERVICE_TEXTS: dict[str, tuple[str, str, str]] = {
    "admin_affairs": (
        "证件办理、政策咨询、证明开具等需要乡村代办的事项。",
        "办事,代办,证明,咨询",
        "便民服务",
    ),
    "road_traffic": (
        "道路破损、路灯损坏、交通设施缺失、道路占用等。",
        "道路,路灯,坑洼,交通",
        "基础设施",
    ),
    "neighbor_dispute": (
        "邻里之间的宅基地、排水、噪音等矛盾纠纷，需要调解。",
        "纠纷,调解,邻里",
        "社会治理",
    ),
    "medical_elderly": (
        "就医、养老、残疾人帮扶、独居老人照看等。",
        "医疗,养老,老人,帮扶",
        "民生保障",
    ),
    "water_power": (
        "停水停电、管道漏水、线路老化、灌溉用电等。",
        "停水,停电,漏水,线路",
        "基础设施",
    ),
    "other": ("不属于以上类别的其他问题和建议。", "其他,建议", "其他"),
}

SERVICE_TYPES: dict[str, ServiceType] = {
    code: ServiceType(code, label, *_SERVICE_TEXTS[code])
    for code, label in domain.CATEGORIES.items()
}


def check_jurisdiction(settings: IntakeSettings, jurisdiction_id: str | None) -> None:
    """We serve one jurisdiction: the parameter may be left out, but if given it must be ours."""
    if jurisdiction_id and jurisdiction_id != settings.open311_jurisdiction_id:
        raise NotFound(
            f"jurisdiction_id「{jurisdiction_id}」不存在，本接口只服务于"
            f"「{settings.open311_jurisdiction_id}」。",
            code="jurisdiction_not_found",
        )


def client_for_key(settings: IntakeSettings, api_key: str | None, action: str = "提交诉求") -> str:
    """The client name an api_key belongs to; 403 when it is missing or unknown."""
    if not api_key:
        raise Forbidden(f"缺少 api_key，无法{action}。", code="api_key_missing")
    found = None
    for key, name in settings.open311_keys.items():
        # compare every key in constant time, so the answer time says nothing about the keys
        if hmac.compare_digest(key.encode(), api_key.encode()):
            found = name
    if found is None:
        raise Forbidden(f"api_key 无效，无法{action}。", code="api_key_invalid")
    return found


@dataclass(frozen=True)
class Audience:
    """Who reads reports: the public, or an API client holding a key.

    The public sees only the public categories, and of each report only what names nobody:
    category, status, village, dates and a location rounded to ``decimals`` (a resident's
    description, exact address and the staff's notes can name people, so they are left out).
    A client with a key sees every category with its text and exact location; nobody ever
    sees who reported or how to reach them."""

    client: str | None
    public_categories: frozenset[str]
    decimals: int

    @property
    def full(self) -> bool:
        return self.client is not None

    def may_see(self, category: str) -> bool:
        return self.full or category in self.public_categories


def audience_for(settings: IntakeSettings, api_key: str | None) -> Audience:
    """The public without a key; the key's client with a valid one; 403 for a wrong key."""
    client = client_for_key(settings, api_key, "查询不公开的诉求") if api_key else None
    return Audience(
        client, settings.open311_public_category_set, settings.open311_coordinate_decimals
    )


def catalogue_changeset(session: Session) -> datetime:
    """When the services or their definitions last changed (a definition lists the villages)."""
    latest = session.scalar(sa.select(sa.func.max(Village.updated_at)))
    return max(CATALOGUE_EDITED, latest) if latest else CATALOGUE_EDITED


def service_type(code: str) -> ServiceType:
    service = SERVICE_TYPES.get(code)
    if service is None:
        raise NotFound(f"service_code「{code}」不存在。", code="service_code_not_found")
    return service


def service_definition(session: Session, code: str) -> tuple[ServiceType, list[Village]]:
    """A service and the villages a client must choose from (our reports need a village)."""
    service = service_type(code)
    villages = list(session.scalars(sa.select(Village).order_by(Village.name, Village.id)))
    return service, villages


# --- reading requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """A report as GeoReport shows it: public fields only, never who reported it or how to
    reach them."""

    issue: Issue
    village_name: str | None
    audience: Audience

    @property
    def status(self) -> str:
        return open311_status(self.issue.status)

    @property
    def description(self) -> str | None:
        return self.issue.description if self.audience.full else None

    @property
    def address(self) -> str | None:
        return self.issue.address if self.audience.full else self.village_name

    @property
    def lat(self) -> float | None:
        return self._coordinate(self.issue.lat)

    @property
    def lon(self) -> float | None:
        return self._coordinate(self.issue.lon)

    def _coordinate(self, value: float | None) -> float | None:
        if value is None or self.audience.full:
            return value
        return round(value, self.audience.decimals)

    @property
    def status_notes(self) -> str | None:
        if not self.audience.full:
            return None
        if self.issue.status == "rejected":
            return self.issue.reject_reason
        if self.issue.status in {"resolved", "closed"}:
            return self.issue.resolution_note
        return None

    @property
    def agency_responsible(self) -> str:
        if self.issue.level == "grid" and self.village_name:
            return f"{self.village_name}网格"
        return AGENCY_BY_LEVEL.get(self.issue.level, TOWNSHIP_AGENCY)

    @property
    def service_notice(self) -> str:
        state = domain.STATES.get(self.issue.status, self.issue.status)
        level = domain.LEVELS.get(self.issue.level, self.issue.level)
        return f"当前进度：{state}（办理层级：{level}）"

    @property
    def updated_at(self) -> datetime:
        """For closed requests, the spec wants the time it was closed."""
        issue = self.issue
        if issue.status == "closed" and issue.closed_at:
            return issue.closed_at
        if issue.status == "resolved" and issue.resolved_at:
            return issue.resolved_at
        return issue.state_changed_at or issue.updated_at or issue.reported_at


def open311_status(status: str) -> str:
    """GeoReport knows only ``open`` and ``closed``; a rejected report is closed with a note."""
    return "closed" if status in CLOSED_STATES else "open"


@dataclass(frozen=True)
class RequestQuery:
    """The filters of GET requests, already split into lists."""

    ticket_nos: tuple[str, ...] = ()
    service_codes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None


def request_window(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The span searched: the last 90 days by default, and never more than 90 days."""
    if start is None and end is None:
        return now - MAX_SPAN, now
    if start is None:
        assert end is not None
        return _shifted(end, -MAX_SPAN), end
    if end is None:
        return start, _shifted(start, MAX_SPAN)
    if end < start:
        raise BadRequest("end_date 不能早于 start_date。", code="bad_date_range")
    if end - start > MAX_SPAN:
        raise BadRequest(
            "start_date 与 end_date 之间的跨度不能超过 90 天。", code="date_range_too_long"
        )
    return start, end


def _shifted(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, stopping at the calendar's ends (a start of 9999-12-31 is fine)."""
    try:
        return moment + delta
    except OverflowError:
        return (datetime.max if delta > timedelta(0) else datetime.min).replace(tzinfo=UTC)


def find_requests(
    session: Session, query: RequestQuery, audience: Audience, now: datetime | None = None
) -> list[RequestView]:
    """Reports matching the filters that ``audience`` may see, newest first, at most 1000 (the
    spec's response volume)."""
    stmt = sa.select(Issue)
    if not audience.full:
        hidden = [code for code in query.service_codes if code not in audience.public_categories]
        if hidden and all(code in SERVICE_TYPES for code in hidden):
            raise Forbidden(
                f"类别「{'、'.join(SERVICE_TYPES[c].name for c in hidden)}」的诉求不公开，"
                "查询需要 api_key。",
                code="api_key_missing",
            )
        stmt = stmt.where(Issue.category.in_(sorted(audience.public_categories)))
    if query.ticket_nos:
        # "This overrides all other arguments."
        stmt = stmt.where(Issue.ticket_no.in_(query.ticket_nos))
    else:
        unknown = [code for code in query.service_codes if code not in SERVICE_TYPES]
        if unknown:
            raise BadRequest(f"service_code 未知：{'、'.join(unknown)}。", code="unknown_filter")
        start, end = request_window(query.start, query.end, now or utcnow())
        stmt = stmt.where(Issue.reported_at >= start, Issue.reported_at <= end)
        if query.service_codes:
            stmt = stmt.where(Issue.category.in_(query.service_codes))
        wanted = set(query.statuses)
        if wanted == {"closed"}:
            stmt = stmt.where(Issue.status.in_(CLOSED_STATES))
        elif wanted == {"open"}:
            stmt = stmt.where(Issue.status.not_in(CLOSED_STATES))
    stmt = stmt.order_by(Issue.reported_at.desc(), Issue.id.desc()).limit(MAX_RESULTS)
    return _with_villages(session, list(session.scalars(stmt)), audience)


def get_request(session: Session, ticket_no: str, audience: Audience) -> RequestView:
    """One report; one of a category ``audience`` may not see is answered as not found."""
    issue = session.scalar(sa.select(Issue).where(Issue.ticket_no == ticket_no))
    if issue is None or not audience.may_see(issue.category):
        raise NotFound(f"service_request_id「{ticket_no}」不存在。", code="request_not_found")
    return _with_villages(session, [issue], audience)[0]


def _with_villages(session: Session, issues: list[Issue], audience: Audience) -> list[RequestView]:
    ids = {i.village_id for i in issues}
    names = (
        dict(session.execute(sa.select(Village.id, Village.name).where(Village.id.in_(ids))).all())
        if ids
        else {}
    )
    return [RequestView(issue, names.get(issue.village_id), audience) for issue in issues]


# --- creating a request ------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """A POSTed service request, parsed and checked for shape at the edge."""

    service_code: str
    description: str
    village_id: uuid.UUID
    address: str | None = None
    lat: float | None = None
    lon: float | None = None
    contact_name: str | None = None
    contact_phone: str | None = None


def submit_request(
    session: Session, settings: IntakeSettings, client_name: str, submission: Submission
) -> Issue:
    """Store a report from an Open311 client, in the caller's transaction, via ``report_issue``."""
    service_type(submission.service_code)
    reporter_id = system_reporter(session, client_name)
    return report_issue(
        session,
        settings,
        reporter_id,
        NewReport(
            category=submission.service_code,
            description=submission.description,
            village_id=submission.village_id,
            address=submission.address,
            lat=submission.lat,
            lon=submission.lon,
            source="open311",
            contact_name=submission.contact_name,
            contact_phone=submission.contact_phone,
        ),
    )


def system_reporter(session: Session, client_name: str) -> uuid.UUID:
    """The account an API client reports as: found, or created (and announced) on first use.

    INSERT .. ON CONFLICT DO NOTHING makes two first reports of one client at once safe.
    """
    username = (SYSTEM_USERNAME_PREFIX + client_name)[:64]
    dialect = session.get_bind().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(User)
    now = utcnow()
    created = session.execute(
        insert.values(
            id=uuid.uuid4(),
            username=username,
            name=client_name[:64],
            roles=["resident"],
            active=True,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[User.username])
        .returning(User.id)
    ).scalar_one_or_none()
    if created is not None:
        user = session.get(User, created)
        assert user is not None
        emit(session, ACCOUNT_UPSERTED, account_event_data(user))
        return created
    return session.execute(sa.select(User.id).where(User.username == username)).scalar_one()
