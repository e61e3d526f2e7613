"""Script and HTML typed into any text field stay inert in every answer: stored and shown as the
same text (never markup) in JSON that carries no raw ``<``, and the news body's HTML is
sanitised."""

from __future__ import annotations

import json
import re

from feed_helpers import SCRIPT, board

RAW_MARKUP = re.compile(rb"<|>|javascript:alert|onerror=")


def _inert(answer) -> dict:
    """The answer has no raw markup bytes and says it is JSON, not to be sniffed."""
    assert answer.status_code in (200, 201), answer.data[:300]
    assert answer.mimetype == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    body = answer.data
    assert not re.search(rb"<", body), body[:300]
    return json.loads(body)


def test_markup_in_every_text_field_is_inert_in_every_answer(
    client, person, feed_event, newsroom
) -> None:
    publicist, admin = newsroom["publicist"], newsroom["admin"]
    evil_name = person("party_member", name='<b onmouseover="x">党员</b>')
    resident = person("resident", name="<script>名</script>")
    feed_event("leaderboard.published", board(top=[{
        "user_id": str(resident.id), "name": SCRIPT, "points": 9, "rank": 1,
    }]))  # fmt: skip

    article = client.post(
        "/api/v1/news",
        json={
            "title": SCRIPT,
            "summary": SCRIPT,
            "category": "notice",
            "body": f"# 标题\n\n{SCRIPT}\n\n<iframe src=//evil></iframe><svg onload=alert(3)>"
            '<p style="x" onclick="alert(4)">段落</p>[链接](javascript:alert(5))',
        },
        headers=publicist.headers,
    )
    written = _inert(article)
    assert written["title"] == SCRIPT and written["summary"] == SCRIPT  # the same text back
    html = written["body_html"]
    for bad in (
        "<script",
        "onerror",
        "onload",
        "onclick",
        "javascript:",
        "<iframe",
        "<svg",
        "style=",
    ):
        assert bad not in html, bad
    article_id = written["id"]
    patched = client.patch(
        f"/api/v1/news/{article_id}", json={"note": SCRIPT}, headers=publicist.headers
    )
    _inert(patched)
    _inert(
        client.post(
            f"/api/v1/news/{article_id}/submit", json={"note": SCRIPT}, headers=publicist.headers
        )
    )
    _inert(
        client.post(
            f"/api/v1/news/{article_id}/publish", json={"note": SCRIPT}, headers=admin.headers
        )
    )

    comment = _inert(
        client.post(
            f"/api/v1/news/{article_id}/comments", json={"text": SCRIPT}, headers=resident.headers
        )
    )
    assert comment["text"] == SCRIPT
    post = _inert(
        client.post(
            "/api/v1/posts", json={"text": SCRIPT, "tag": "study"}, headers=evil_name.headers
        )
    )
    assert post["text"] == SCRIPT and post["author_name"] == '<b onmouseover="x">党员</b>'
    post_comment = _inert(
        client.post(
            f"/api/v1/posts/{post['id']}/comments", json={"text": SCRIPT}, headers=resident.headers
        )
    )
    held = client.post(
        f"/api/v1/posts/{post['id']}/comments",
        json={"text": SCRIPT + "办证"},
        headers=resident.headers,
    )
    _inert(held)
    _inert(
        client.post(
            f"/api/v1/comments/{post_comment['id']}/hide",
            json={"reason": SCRIPT},
            headers=admin.headers,
        )
    )
    _inert(
        client.post(
            f"/api/v1/comments/{held.json['id']}/restore",
            json={"reason": SCRIPT},
            headers=admin.headers,
        )
    )
    _inert(
        client.post(
            f"/api/v1/posts/{post['id']}/hide", json={"reason": SCRIPT}, headers=admin.headers
        )
    )
    _inert(
        client.post(
            f"/api/v1/posts/{post['id']}/restore", json={"reason": SCRIPT}, headers=admin.headers
        )
    )

    reads = [
        client.get("/api/v1/news"),
        client.get(f"/api/v1/news/{article_id}"),
        client.get(f"/api/v1/news/{article_id}/comments"),
        client.get(f"/api/v1/news/{article_id}/edit", headers=admin.headers),
        client.get("/api/v1/news/desk", headers=admin.headers),
        client.get("/api/v1/posts", headers=resident.headers),
        client.get(f"/api/v1/posts/{post['id']}", headers=resident.headers),
        client.get(f"/api/v1/posts/{post['id']}/comments", headers=resident.headers),
        client.get("/api/v1/moderation/comments?state=hidden", headers=admin.headers),
        client.get("/api/v1/moderation/comments", headers=admin.headers),
    ]
    for answer in reads:
        _inert(answer)
    feed = reads[5].json["items"]
    board_post = next(p for p in feed if p["tag"] == "honor_board")
    assert board_post["board"]["top"][0]["name"] == SCRIPT[:64]  # names are kept to 64
    assert SCRIPT[:64] in board_post["text"]
    # Errors that echo nothing typed are JSON too.
    error = client.post(
        "/api/v1/posts", json={"text": SCRIPT, "tag": SCRIPT}, headers=evil_name.headers
    )
    assert error.status_code == 422 and b"<" not in error.data
