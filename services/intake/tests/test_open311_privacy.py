"""What Open311 shows to anyone, and what only a client with an api_key reads (real PostgreSQL).

Without a key: public categories only (not neighbour disputes nor care of the elderly), and of
each report only category, status, village, dates and a location rounded to about 1 km. With a
key from OPEN311_API_KEYS: every category, its text and its exact location."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from intake.settings import IntakeSettings

API_KEY = "k-7f3a9c2e"
BASE = "/open311/v2"
DESCRIPTION = "张三家和李四家因宅基地吵架，李四的老母亲独居无人照看。"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"open311_api_keys": f"城市通:{API_KEY}"})


@pytest.fixture
def ticket(client, village):
    """``ticket(code)``: POST a report of that category at an exact spot; its ticket number."""

    def post(code: str, **form: str) -> str:
        data = {
            "api_key": API_KEY,
            "service_code": code,
            "lat": "36.352149",
            "long": "114.941276",
            "address_string": "沙口集村东大街12号李四家",
            "description": DESCRIPTION,
            "attribute[village_id]": str(village.id),
        } | form
        response = client.post(f"{BASE}/requests.json", data=data)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()[0]["service_request_id"]

    return post


def ids(client, query: str = "") -> list[str]:
    response = client.get(f"{BASE}/requests.json{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return [r["service_request_id"] for r in response.get_json()]


def test_the_public_list_leaves_out_neighbour_disputes_and_care_of_the_elderly(client, ticket):
    water = ticket("water_power")
    dispute = ticket("neighbor_dispute")
    elderly = ticket("medical_elderly")

    assert ids(client) == [water]
    assert ids(client, f"?service_request_id={water},{dispute},{elderly}") == [water]
    assert set(ids(client, f"?api_key={API_KEY}")) == {water, dispute, elderly}


def test_a_non_public_report_is_not_found_without_a_key_and_shown_with_one(client, ticket):
    dispute = ticket("neighbor_dispute")
    for fmt in ("json", "xml"):
        hidden = client.get(f"{BASE}/requests/{dispute}.{fmt}")
        assert hidden.status_code == 404
        assert DESCRIPTION not in hidden.get_data(as_text=True)
    [shown] = client.get(f"{BASE}/requests/{dispute}.json?api_key={API_KEY}").get_json()
    assert shown["service_code"] == "neighbor_dispute"
    assert shown["description"] == DESCRIPTION


def test_asking_for_a_non_public_category_without_a_key_is_403(client, ticket):
    ticket("medical_elderly")
    response = client.get(f"{BASE}/requests.json?service_code=medical_elderly")
    assert response.status_code == 403
    assert "api_key" in response.get_json()[0]["description"]
    keyed = client.get(f"{BASE}/requests.json?service_code=medical_elderly&api_key={API_KEY}")
    assert keyed.status_code == 200 and len(keyed.get_json()) == 1


@pytest.mark.parametrize("path", ["/requests.json", "/requests/SKJ-20260101-0001.json"])
def test_a_wrong_api_key_on_a_read_is_403(client, path):
    response = client.get(f"{BASE}{path}?api_key=wrong")
    assert response.status_code == 403
    assert "api_key" in response.get_json()[0]["description"]


def test_the_public_sees_no_free_text_and_a_rounded_location(client, db, village, ticket):
    water = ticket("water_power")
    [public] = client.get(f"{BASE}/requests/{water}.json").get_json()
    assert public["description"] is None
    assert public["address"] == village.name
    assert (public["lat"], public["long"]) == (36.35, 114.94)
    assert public["service_code"] == "water_power" and public["status"] == "open"
    assert public["requested_datetime"].endswith("+08:00")
    for fmt in ("json", "xml"):
        for url in (f"{BASE}/requests/{water}.{fmt}", f"{BASE}/requests.{fmt}"):
            body = client.get(url).get_data(as_text=True)
            for secret in ("张三", "李四", "东大街12号", "36.352149", "114.941276"):
                assert secret not in body, (url, secret)

    [full] = client.get(f"{BASE}/requests/{water}.json?api_key={API_KEY}").get_json()
    assert full["description"] == DESCRIPTION
    assert full["address"] == "沙口集村东大街12号李四家"
    assert (full["lat"], full["long"]) == (36.352149, 114.941276)


def test_which_categories_are_public_and_the_rounding_are_settings(app, settings, ticket):
    road = ticket("road_traffic")
    elderly = ticket("medical_elderly")
    app.extensions["settings"] = settings.model_copy(
        update={"open311_public_categories": "medical_elderly", "open311_coordinate_decimals": 1}
    )
    client = app.test_client()
    assert ids(client) == [elderly]
    assert client.get(f"{BASE}/requests/{road}.json").status_code == 404
    [shown] = client.get(f"{BASE}/requests/{elderly}.json").get_json()
    assert (shown["lat"], shown["long"]) == (36.4, 114.9)
    assert shown["description"] is None


def test_an_unknown_public_category_is_refused_at_start():
    with pytest.raises(ValidationError, match="graffiti"):
        IntakeSettings(open311_public_categories="water_power,graffiti")
    assert IntakeSettings().open311_public_category_set == {
        "admin_affairs",
        "road_traffic",
        "water_power",
        "other",
    }
