"""Photos of published news and party posts (feed's ``news.published`` and ``post.published``)
are served to anyone, signed in or not; a photo of a report, or of someone else, never is."""

from __future__ import annotations

import io
import uuid

from PIL import Image

from intake.handlers import SUBSCRIPTIONS
from intake.models import Media
from shared.events import make_envelope, parse_envelope

VILLAGE_ID = uuid.UUID("5a3c0000-0000-4000-8000-000000000001")  # the `village` fixture's id


def _upload(client, headers) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, "JPEG")
    answer = client.post(
        "/api/v1/media",
        data={"file": (io.BytesIO(buffer.getvalue()), "p.jpg")},
        headers=headers,
        content_type="multipart/form-data",
    )
    assert answer.status_code == 201, answer.json
    return answer.json["id"]


def _consume(db, event_type: str, data: dict) -> None:
    event = parse_envelope(make_envelope(event_type, data, producer="feed"))
    with db.transaction() as session:
        SUBSCRIPTIONS[event_type](session, event)


def test_a_party_posts_photos_are_served_to_anyone_once_published(client, db, make_user) -> None:
    member, member_headers = make_user(roles=["party_member"])
    photo = _upload(client, member_headers)
    _, resident = make_user(roles=["resident"])
    assert client.get(f"/api/v1/media/{photo}").status_code == 401
    assert client.get(f"/api/v1/media/{photo}", headers=resident).status_code == 404

    _consume(
        db,
        "post.published",
        {
            "id": str(uuid.uuid4()),
            "author_id": str(member.id),
            "photo_ids": [photo],
            "tag": "study",
        },
    )
    anonymous = client.get(f"/api/v1/media/{photo}")
    assert anonymous.status_code == 200 and anonymous.mimetype == "image/jpeg"
    assert anonymous.headers["Cache-Control"] == "public, max-age=3600"
    assert client.get(f"/api/v1/media/{photo}?size=thumb").status_code == 200
    assert client.get(f"/api/v1/media/{photo}", headers=resident).status_code == 200
    # An unknown id still asks an anonymous caller to sign in: nothing tells what exists.
    assert client.get(f"/api/v1/media/{uuid.uuid4()}").status_code == 401


def test_news_makes_its_cover_and_body_photos_public_by_any_of_its_editors(
    client, db, make_user
) -> None:
    publicist, publicist_headers = make_user(roles=["publicist"])
    admin, admin_headers = make_user(roles=["admin"])
    cover = _upload(client, publicist_headers)
    body_photo = _upload(client, admin_headers)
    _consume(
        db,
        "news.published",
        {
            "id": str(uuid.uuid4()),
            "title": "通知",
            "author_id": str(publicist.id),
            "published_by": str(admin.id),
            "cover_media_id": cover,
            "media_ids": [cover, body_photo],
            "editor_ids": [str(publicist.id), str(admin.id)],
        },
    )
    assert client.get(f"/api/v1/media/{cover}").status_code == 200
    assert client.get(f"/api/v1/media/{body_photo}").status_code == 200


def test_a_post_cannot_publish_a_report_photo_or_someone_elses_photo(
    client, db, make_user, village
) -> None:
    resident, resident_headers = make_user(roles=["resident"])
    report_photo = _upload(client, resident_headers)
    reported = client.post(
        "/api/v1/issues",
        json={
            "category": "water_power",
            "description": "村东头的自来水管破了，一直在漏水。",
            "village_id": str(VILLAGE_ID),
            "photo_ids": [report_photo],
        },
        headers=resident_headers,
    )
    assert reported.status_code == 201, reported.json
    member, member_headers = make_user(roles=["party_member"])
    others_photo = _upload(client, make_user(roles=["party_member"])[1])
    own_photo = _upload(client, member_headers)
    # The party member names the resident's report photo and a colleague's photo in a post.
    _consume(
        db,
        "post.published",
        {
            "id": str(uuid.uuid4()),
            "author_id": str(member.id),
            "photo_ids": [report_photo, others_photo, own_photo],
        },
    )
    assert client.get(f"/api/v1/media/{report_photo}").status_code == 401
    assert client.get(f"/api/v1/media/{others_photo}").status_code == 401
    assert client.get(f"/api/v1/media/{own_photo}").status_code == 200
    with db.transaction() as session:
        assert session.get(Media, uuid.UUID(report_photo)).public is False
    # The reporter still sees their own report's photo as before.
    assert client.get(f"/api/v1/media/{report_photo}", headers=resident_headers).status_code == 200
