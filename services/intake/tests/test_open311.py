"""The Open311 GeoReport v2 edge, through HTTP, on the real PostgreSQL (and the outbox)."""

from __future__ import annotations

import threading
import uuid
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
import sqlalchemy as sa

from intake.domain import CATEGORIES
from intake.models import Issue, User
from intake.open311_services import system_reporter
from intake.services import NewReport, report_issue
from shared.clock import SHANGHAI, utcnow
from shared.testing import wait_for

API_KEY = "k-7f3a9c2e"
CLIENT = "城市通"
BASE = "/open311/v2"


@pytest.fixture
def settings(settings):
    """Intake's test settings with one Open311 client key."""
    return settings.model_copy(update={"open311_api_keys": f"{CLIENT}:{API_KEY},spare-key"})


@pytest.fixture
def post_report(client, village):
    """``post_report(fmt="json", **form)``: POST a valid report, changed by ``form``."""

    def post(fmt: str = "json", **fields):
        form = {
            "api_key": API_KEY,
            "service_code": "water_power",
            "lat": "36.3521",
            "long": "114.9412",
            "description": "村东头自来水管破裂，水流了一地。",
            "attribute[village_id]": str(village.id),
        }
        form.update(fields)
        return client.post(f"{BASE}/requests.{fmt}", data={k: v for k, v in form.items() if v})

    return post


@pytest.fixture
def created_ticket(post_report):
    """``created_ticket(**form)``: POST a report and return its ticket number."""

    def create(**fields) -> str:
        response = post_report(**fields)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()[0]["service_request_id"]

    return create


def change_issue(db, ticket_no: str, **fields) -> None:
    with db.transaction() as session:
        session.execute(sa.update(Issue).where(Issue.ticket_no == ticket_no).values(**fields))


def parse_xml(response) -> ET.Element:
    assert response.headers["Content-Type"] == "text/xml; charset=utf-8"
    body = response.get_data(as_text=True)
    assert body.startswith('<?xml version="1.0" encoding="utf-8"?>')
    return ET.fromstring(response.get_data())


def assert_open311_error(response, status: int, fmt: str = "json") -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    if fmt == "json":
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        errors = response.get_json()
        assert isinstance(errors, list) and errors
        assert errors[0]["code"] == status
        return " ".join(e["description"] for e in errors)
    root = parse_xml(response)
    assert root.tag == "errors"
    assert root.findtext("error/code") == str(status)
    return " ".join(e.findtext("description") for e in root.findall("error"))


def test_services_list_all_six_categories_in_json_and_xml(client):
    as_json = client.get(f"{BASE}/services.json")
    assert as_json.status_code == 200
    assert as_json.headers["Content-Type"] == "application/json; charset=utf-8"
    services = as_json.get_json()
    assert {s["service_code"] for s in services} == set(CATEGORIES)
    water = next(s for s in services if s["service_code"] == "water_power")
    assert water["service_name"] == "用水用电"
    assert water["metadata"] is True and water["type"] == "realtime"
    assert water["description"] and water["keywords"] and water["group"]
    assert "用水用电" in as_json.get_data(as_text=True)  # Chinese unescaped

    root = parse_xml(client.get(f"{BASE}/services.xml"))
    assert root.tag == "services"
    codes = {s.findtext("service_code") for s in root.findall("service")}
    assert codes == set(CATEGORIES)
    assert {s.findtext("metadata") for s in root.findall("service")} == {"true"}


def test_services_of_another_jurisdiction_are_not_found(client, settings):
    mine = client.get(f"{BASE}/services.json?jurisdiction_id={settings.open311_jurisdiction_id}")
    assert mine.status_code == 200
    other = client.get(f"{BASE}/services.xml?jurisdiction_id=sfgov.org")
    assert "jurisdiction_id" in assert_open311_error(other, 404, "xml")


def test_service_definition_offers_the_villages_as_a_required_single_value_list(client, village):
    definition = client.get(f"{BASE}/services/road_traffic.json").get_json()
    assert definition["service_code"] == "road_traffic"
    [attribute] = definition["attributes"]
    assert attribute["code"] == "village_id"
    assert attribute["datatype"] == "singlevaluelist"
    assert attribute["required"] is True and attribute["variable"] is True
    assert attribute["order"] == 1
    assert attribute["description"] and "datatype_description" in attribute
    assert attribute["values"] == [{"key": str(village.id), "name": "沙口集村"}]

    root = parse_xml(client.get(f"{BASE}/services/road_traffic.xml"))
    assert root.tag == "service_definition"
    value = root.find("attributes/attribute/values/value")
    assert value is not None
    assert (value.findtext("key"), value.findtext("name")) == (str(village.id), "沙口集村")
    assert root.findtext("attributes/attribute/required") == "true"


def test_an_unknown_service_definition_is_a_404_open311_error(client):
    text = assert_open311_error(client.get(f"{BASE}/services/potholes.json"), 404)
    assert "service_code" in text


def test_discovery_points_clients_at_this_endpoint(client, village):
    doc = client.get(f"{BASE}/discovery.json").get_json()
    assert doc["changeset"] and doc["contact"] and doc["key_service"]
    [endpoint] = doc["endpoints"]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["url"] == "http://localhost/open311/v2"
    assert endpoint["type"] == "production"
    assert endpoint["formats"] == ["text/xml", "application/json"]

    root = parse_xml(client.get(f"{BASE}/discovery.xml"))
    assert root.tag == "discovery"
    formats = [f.text for f in root.findall("endpoints/endpoint/formats/format")]
    assert formats == ["text/xml", "application/json"]


def test_a_request_with_a_valid_key_stores_one_report_and_its_event(
    db, village, post_report, outbox_rows
):
    response = post_report(first_name="五", last_name="王", phone="13900002222")
    assert response.status_code == 200
    [answer] = response.get_json()
    ticket = answer["service_request_id"]
    assert ticket.startswith("SKJ-") and ticket in answer["service_notice"]
    assert answer["account_id"] is None

    [row] = outbox_rows("issue.reported")
    data = row["envelope"]["data"]
    assert data["ticket_no"] == ticket
    assert data["source"] == "open311"
    assert data["category"] == "water_power"
    assert data["village_id"] == str(village.id)
    with db.transaction() as session:
        issue = session.scalars(sa.select(Issue).where(Issue.ticket_no == ticket)).one()
        reporter = session.get(User, issue.reporter_id)
        assert (issue.contact_name, issue.contact_phone) == ("王五", "13900002222")
        assert (issue.lat, issue.lon) == (36.3521, 114.9412)
        assert reporter.username == f"open311:{CLIENT}"
        assert reporter.name == CLIENT and reporter.roles == ["resident"]
    assert len(outbox_rows("account.upserted")) == 1

    again = post_report(fmt="xml")
    assert again.status_code == 200
    root = parse_xml(again)
    assert root.tag == "service_requests"
    assert root.findtext("request/service_request_id").startswith("SKJ-")
    assert root.find("request/account_id") is not None
    assert len(outbox_rows("issue.reported")) == 2
    assert len(outbox_rows("account.upserted")) == 1  # the client's account is reused


@pytest.mark.parametrize("key", ["wrong-key", ""])
def test_a_wrong_or_missing_api_key_is_403_and_stores_nothing(
    db, village, key, post_report, outbox_rows
):
    response = post_report(fmt="xml", api_key=key)
    assert "api_key" in assert_open311_error(response, 403, "xml")
    assert outbox_rows() == []
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Issue)) == 0


def test_a_request_without_a_location_is_400(db, village, post_report, outbox_rows):
    response = post_report(lat="", long="")
    assert "lat" in assert_open311_error(response, 400)
    assert outbox_rows() == []


def test_an_address_string_is_location_enough(client, db, village, created_ticket):
    ticket = created_ticket(lat="", long="", address_string="沙口集村东大街12号")
    [shown] = client.get(f"{BASE}/requests/{ticket}.json?api_key={API_KEY}").get_json()
    assert shown["address"] == "沙口集村东大街12号"
    assert shown["lat"] is None and shown["long"] is None
    [public] = client.get(f"{BASE}/requests/{ticket}.json").get_json()
    assert public["address"] == village.name  # the public sees the village, not the house
    assert public["lat"] is None and public["long"] is None


def test_a_missing_service_code_is_400_and_an_unknown_one_404(
    db, village, post_report, outbox_rows
):
    assert "service_code" in assert_open311_error(post_report(service_code=""), 400)
    assert "service_code" in assert_open311_error(post_report(service_code="graffiti"), 404)
    assert outbox_rows() == []


def test_a_missing_or_unknown_village_is_400(db, village, post_report, outbox_rows):
    missing = post_report(**{"attribute[village_id]": ""})
    assert "attribute[village_id]" in assert_open311_error(missing, 400)
    unknown = post_report(**{"attribute[village_id]": str(uuid.uuid4())})
    assert "attribute[village_id]" in assert_open311_error(unknown, 400)
    garbled = post_report(**{"attribute[village_id]": "沙口集村"})
    assert "attribute[village_id]" in assert_open311_error(garbled, 400)
    assert outbox_rows() == []


def test_our_description_rule_applies_and_names_the_parameter(
    db, village, post_report, outbox_rows
):
    assert "description" in assert_open311_error(post_report(description="漏水"), 400)
    assert "description" in assert_open311_error(post_report(description=""), 400)
    too_long = post_report(fmt="xml", description="水" * 2001)
    assert "description" in assert_open311_error(too_long, 400, "xml")
    assert outbox_rows() == []


def test_get_requests_filters_by_id_status_dates_and_service_code(
    client, db, village, created_ticket
):
    water = created_ticket()
    road = created_ticket(service_code="road_traffic")
    old = created_ticket(service_code="road_traffic")
    change_issue(db, road, status="resolved", resolved_at=utcnow())
    long_ago = utcnow() - timedelta(days=120)
    change_issue(db, old, reported_at=long_ago)

    def ids(query: str) -> list[str]:
        response = client.get(f"{BASE}/requests.json{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return [r["service_request_id"] for r in response.get_json()]

    assert ids("") == [road, water]  # newest first; the last 90 days by default
    assert ids(f"?service_request_id={old},{water}") == [water, old]
    assert ids(f"?service_request_id={old}&status=open&service_code=water_power") == [old]
    assert ids(f"?service_request_id={water}&status=nonsense&start_date=never") == [water]
    assert ids("?status=open") == [water]
    assert ids("?status=closed") == [road]
    assert ids("?status=open,closed") == [road, water]
    assert ids("?service_code=road_traffic") == [road]
    assert ids("?service_code=water_power,road_traffic") == [road, water]
    start = (long_ago - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (long_ago + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(f"?start_date={start}&end_date={end}") == [old]
    local_end = (long_ago + timedelta(days=1)).astimezone(SHANGHAI).isoformat(timespec="seconds")
    assert ids(f"?start_date={start}&end_date={local_end.replace('+', '%2B')}") == [old]
    # a client that forgets to encode "+08:00" sends " 08:00"; it still means Shanghai time
    assert ids(f"?start_date={start}&end_date={local_end}") == [old]
    assert ids(f"?end_date={end}") == [old]
    assert ids(f"?start_date={start}") == [old]

    root = parse_xml(client.get(f"{BASE}/requests.xml?status=closed"))
    assert root.tag == "service_requests"
    assert [r.findtext("service_request_id") for r in root.findall("request")] == [road]


def test_bad_request_filters_are_400(client):
    assert "status" in assert_open311_error(client.get(f"{BASE}/requests.json?status=done"), 400)
    wide = client.get(f"{BASE}/requests.json?start_date=2026-01-01T00:00:00Z&end_date=2026-06-01")
    assert "90" in assert_open311_error(wide, 400)
    garbled = client.get(f"{BASE}/requests.xml?start_date=yesterday")
    assert "start_date" in assert_open311_error(garbled, 400, "xml")
    unknown = client.get(f"{BASE}/requests.json?service_code=graffiti")
    assert "service_code" in assert_open311_error(unknown, 400)


def test_a_resolved_issue_shows_closed_with_its_resolution_note(
    client, db, village, created_ticket
):
    ticket = created_ticket()
    keyed = f"?api_key={API_KEY}"  # the notes are free text: clients with a key only
    [shown] = client.get(f"{BASE}/requests/{ticket}.json{keyed}").get_json()
    assert shown["status"] == "open" and shown["status_notes"] is None
    resolved_at = utcnow()
    due_at = resolved_at + timedelta(days=2)
    change_issue(
        db,
        ticket,
        status="resolved",
        resolved_at=resolved_at,
        due_at=due_at,
        resolution_note="已更换水管，恢复供水。",
        level="township",
    )
    [shown] = client.get(f"{BASE}/requests/{ticket}.json{keyed}").get_json()
    assert shown["status"] == "closed"
    assert shown["status_notes"] == "已更换水管，恢复供水。"
    assert shown["agency_responsible"] == "沙口集乡人民政府"
    assert shown["service_name"] == "用水用电" and shown["service_code"] == "water_power"
    assert shown["updated_datetime"] == resolved_at.astimezone(SHANGHAI).isoformat(
        timespec="seconds"
    )

    change_issue(db, ticket, status="rejected", reject_reason="重复上报。")
    root = parse_xml(client.get(f"{BASE}/requests/{ticket}.xml{keyed}"))
    assert root.findtext("request/status") == "closed"
    assert root.findtext("request/status_notes") == "重复上报。"
    [public] = client.get(f"{BASE}/requests/{ticket}.json").get_json()
    assert public["status"] == "closed" and public["status_notes"] is None


def test_times_carry_the_shanghai_offset(client, db, village, created_ticket):
    ticket = created_ticket()
    change_issue(db, ticket, due_at=utcnow() + timedelta(days=3))
    [shown] = client.get(f"{BASE}/requests/{ticket}.json").get_json()
    for field in ("requested_datetime", "updated_datetime", "expected_datetime"):
        assert shown[field].endswith("+08:00"), (field, shown[field])
    root = parse_xml(client.get(f"{BASE}/requests.xml"))
    assert root.findtext("request/requested_datetime").endswith("+08:00")


def test_output_never_shows_who_reported_or_how_to_reach_them(
    client, db, village, make_user, settings, created_ticket
):
    resident, _ = make_user(name="李四", phone="13800001111", openid="wx-openid-li-si")
    with db.transaction() as session:
        report_issue(
            session,
            settings,
            resident.id,
            NewReport(
                category="road_traffic", description="路灯坏了三天了。", village_id=village.id
            ),
        )
    ticket = created_ticket(
        first_name="五", last_name="王", phone="13900002222", email="wang@example.cn"
    )
    with db.transaction() as session:
        system_id = session.scalar(sa.select(Issue.reporter_id).where(Issue.ticket_no == ticket))
    secrets = [
        "李四",
        "13800001111",
        "wx-openid-li-si",
        str(resident.id),
        "王五",
        "13900002222",
        "wang@example.cn",
        str(system_id),
        "open311:",
        "reporter",
        "contact",
    ]
    for url in (
        f"{BASE}/requests.json",
        f"{BASE}/requests.xml",
        f"{BASE}/requests/{ticket}.json",
        f"{BASE}/requests/{ticket}.xml",
        f"{BASE}/requests.json?api_key={API_KEY}",  # not even to a client with a key
        f"{BASE}/requests/{ticket}.xml?api_key={API_KEY}",
    ):
        body = client.get(url).get_data(as_text=True)
        assert ticket in body
        for secret in secrets:
            assert secret not in body, (url, secret)


def test_public_output_never_links_the_residents_photos(client, db, village, created_ticket):
    ticket = created_ticket()
    photo = uuid.uuid4()
    change_issue(db, ticket, photo_ids=[str(photo)])
    [shown] = client.get(f"{BASE}/requests/{ticket}.json").get_json()
    assert shown["media_url"] is None
    for fmt in ("json", "xml"):
        assert str(photo) not in client.get(f"{BASE}/requests/{ticket}.{fmt}").get_data(
            as_text=True
        )


def test_an_unknown_request_id_is_a_404_open311_error(client):
    missing = client.get(f"{BASE}/requests/SKJ-20260101-9999.xml")
    assert "SKJ-20260101-9999" in assert_open311_error(missing, 404, "xml")
    assert_open311_error(client.get(f"{BASE}/requests/SKJ-20260101-9999.json"), 404)


def test_an_unknown_format_is_a_404_open311_error(client):
    assert "yaml" in assert_open311_error(client.get(f"{BASE}/services.yaml"), 404, "xml")
    as_json = client.get(f"{BASE}/requests.yaml", headers={"Accept": "application/json"})
    assert_open311_error(as_json, 404, "json")


def test_unknown_paths_and_methods_under_open311_answer_in_open311_format(client):
    assert_open311_error(client.get(f"{BASE}/tokens/123.json"), 404, "json")
    wrong_method = client.delete(f"{BASE}/requests.json")
    assert_open311_error(wrong_method, 405, "json")
    assert "GET" in wrong_method.headers["Allow"]
    # outside /open311/v2 the app's own error body is untouched
    elsewhere = client.get("/api/v1/no-such-route")
    assert elsewhere.status_code == 404
    assert elsewhere.get_json()["error"]["code"] == "not_found"


def test_xml_escapes_what_clients_send(client, created_ticket):
    text = "水管<破裂> & 漏水\x0b，请尽快处理 ]]>"
    ticket = created_ticket(description=text, address_string="东大街 <12> & 13号")
    root = parse_xml(client.get(f"{BASE}/requests/{ticket}.xml?api_key={API_KEY}"))
    assert root.findtext("request/description") == text.replace("\x0b", "")
    assert root.findtext("request/address") == "东大街 <12> & 13号"


def test_two_first_reports_of_one_client_at_once_share_one_account(db, outbox_rows):
    first = db.session()
    first.begin()
    first_id = system_reporter(first, "并发客户端")
    found: dict[str, uuid.UUID] = {}

    def second() -> None:
        with db.transaction() as session:
            found["id"] = system_reporter(session, "并发客户端")

    racer = threading.Thread(target=second)
    racer.start()
    # the second insert waits on the first one's uncommitted row (unique username)
    wait_for(lambda: _sessions_waiting_on_a_lock(db) > 0)
    first.commit()
    first.close()
    racer.join(timeout=10)
    assert found["id"] == first_id
    with db.transaction() as session:
        users = session.scalars(sa.select(User).where(User.username == "open311:并发客户端"))
        assert len(list(users)) == 1
    assert len(outbox_rows("account.upserted")) == 1


def _sessions_waiting_on_a_lock(db) -> int:
    with db.engine.connect() as conn:
        return conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
