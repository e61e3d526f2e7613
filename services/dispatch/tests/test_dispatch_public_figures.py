"""The township's public figures (the mini-program's home page): no login, the seed's numbers,
aggregates only, cached in the process and by HTTP caches."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from dispatch_helpers import SEED, load_seed_reports, settings_with

from dispatch import domain
from dispatch.app import create_app
from dispatch.models import Issue
from shared.testing import wait_for

FIGURES = "/api/v1/public/figures"
UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
PERSONAL = {
    "id",
    "reporter_id",
    "assignee_id",
    "name",
    "phone",
    "description",
    "address",
    "lat",
    "lon",
    "village_id",
    "village_name",
    "by_village",
    "photo_ids",
}


def _keys_and_texts(value: Any) -> tuple[set[str], list[str]]:
    keys: set[str] = set()
    texts: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            keys.add(key)
            more_keys, more_texts = _keys_and_texts(item)
            keys |= more_keys
            texts += more_texts
    elif isinstance(value, list):
        for item in value:
            more_keys, more_texts = _keys_and_texts(item)
            keys |= more_keys
            texts += more_texts
    elif isinstance(value, str):
        texts.append(value)
    return keys, texts


def _rate(db, ids, rating: str) -> None:
    with db.transaction() as session:
        session.execute(sa.update(Issue).where(Issue.id.in_(ids)).values(rating=rating))


def test_public_figures_reproduce_the_seed_without_a_token_and_carry_no_personal_data(
    client, db, town
):
    seed = load_seed_reports(db, town)
    closed = seed.done_ids[1::2]  # every other group of the done reports was closed
    _rate(db, closed[:80], "satisfied")
    _rate(db, closed[80:90], "basically_satisfied")
    _rate(db, closed[90:100], "unsatisfied")

    response = client.get(FIGURES)  # no Authorization header at all
    assert response.status_code == 200, response.json
    body = response.json
    assert body["reports"] == 2811 and body["completed"] == 2750
    assert body["completion_rate"] == 97.83
    assert body["open"] == 61
    assert {c["category"]: c["reports"] for c in body["by_category"]} == SEED
    assert [c["label"] for c in body["by_category"]] == list(domain.CATEGORIES.values())
    assert sum(c["completed"] for c in body["by_category"]) == 2750
    assert (body["rated"], body["satisfied"], body["satisfaction_rate"]) == (100, 90, 90.0)
    assert body["as_of"].endswith("+08:00")

    keys, texts = _keys_and_texts(body)
    assert not keys & PERSONAL, keys & PERSONAL
    assert not [t for t in texts if UUID_TEXT.search(t)]
    assert "村东头" not in response.get_data(as_text=True)  # no report's text

    # The admin's statistics count satisfaction the same way (one source of the figures).
    stats = client.get("/api/v1/stats", headers=town.admin.headers).json
    assert (stats["rated"], stats["satisfied"], stats["satisfaction_rate"]) == (100, 90, 90.0)


def test_public_figures_are_cacheable_and_answer_304_to_their_etag(client, report):
    report()
    first = client.get(FIGURES)
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "public, max-age=60"
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    again = client.get(FIGURES, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    other = client.get(FIGURES, headers={"If-None-Match": 'W/"something-else"'})
    assert other.status_code == 200 and other.json["reports"] == 1


def test_public_figures_are_kept_in_the_process_for_the_configured_seconds(client, report):
    report()
    assert client.get(FIGURES).json["reports"] == 1
    report()
    # Within PUBLIC_FIGURES_CACHE_SECONDS (60) the process answers what it computed.
    cached = client.get(FIGURES)
    assert cached.json["reports"] == 1


def test_public_figures_follow_new_reports_once_the_cache_expires(
    database_url, jwt_keys, db, town, report
):
    short = create_app(settings_with(database_url, jwt_keys, public_figures_cache_seconds=1))
    try:
        client = short.test_client()
        report()
        first = client.get(FIGURES)
        assert first.json["reports"] == 1
        assert first.headers["Cache-Control"] == "public, max-age=1"
        report()
        later = wait_for(lambda: (r := client.get(FIGURES)).json["reports"] == 2 and r, timeout=5)
        assert later.headers["ETag"] != first.headers["ETag"]
    finally:
        short.extensions["db"].dispose()


def test_public_figures_are_computed_every_time_when_the_cache_is_off(
    database_url, jwt_keys, report
):
    app = create_app(settings_with(database_url, jwt_keys, public_figures_cache_seconds=0))
    try:
        client = app.test_client()
        assert client.get(FIGURES).json["reports"] == 0
        report()
        answer = client.get(FIGURES)
        assert answer.json["reports"] == 1
        assert answer.headers["Cache-Control"] == "public, max-age=0"
    finally:
        app.extensions["db"].dispose()


def test_public_figures_ignore_a_bad_token_rather_than_refusing_the_home_page(client):
    answer = client.get(FIGURES, headers={"Authorization": "Bearer not-a-token"})
    assert answer.status_code == 200
    assert answer.json["reports"] == 0 and answer.json["satisfaction_rate"] == 0.0
    assert len(answer.json["by_category"]) == len(domain.CATEGORIES)
