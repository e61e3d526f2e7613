"""Likes: once per person, harmless to repeat, undone by unlike, and right under concurrent
requests (threads against the real database)."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from feed.models import Post, PostLike


def _post(client, who) -> str:
    answer = client.post(
        "/api/v1/posts", json={"text": "学习会", "tag": "study"}, headers=who.headers
    )
    assert answer.status_code == 201
    return answer.json["id"]


def _counts(db, post_id: str) -> tuple[int, int]:
    with db.transaction() as session:
        stored = session.scalar(sa.select(Post.like_count).where(Post.id == post_id))
        rows = session.scalar(
            sa.select(sa.func.count()).select_from(PostLike).where(PostLike.post_id == post_id)
        )
    return stored, rows


def test_liking_twice_counts_once_and_unlike_takes_it_back(client, db, person) -> None:
    post_id = _post(client, person("party_member"))
    resident = person("resident")
    first = client.put(f"/api/v1/posts/{post_id}/like", headers=resident.headers)
    again = client.put(f"/api/v1/posts/{post_id}/like", headers=resident.headers)
    assert first.json == again.json == {"post_id": post_id, "liked": True, "like_count": 1}
    shown = client.get(f"/api/v1/posts/{post_id}", headers=resident.headers).json
    assert shown["liked_by_me"] is True and shown["like_count"] == 1
    gone = client.delete(f"/api/v1/posts/{post_id}/like", headers=resident.headers)
    assert gone.json == {"post_id": post_id, "liked": False, "like_count": 0}
    never = client.delete(f"/api/v1/posts/{post_id}/like", headers=person("resident").headers)
    assert never.json["like_count"] == 0
    assert _counts(db, post_id) == (0, 0)


def _together(count: int, work) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` threads that start at the same moment."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_one_person_liking_from_many_requests_at_once_counts_once(app, db, person) -> None:
    client = app.test_client()
    post_id = _post(client, person("party_member"))
    resident = person("resident")
    answers: list[int] = []

    def like(_i: int) -> None:
        answer = app.test_client().put(f"/api/v1/posts/{post_id}/like", headers=resident.headers)
        answers.append(answer.status_code)

    assert _together(12, like) == []
    assert answers == [200] * 12
    assert _counts(db, post_id) == (1, 1)


def test_many_people_liking_and_unliking_at_once_keep_the_count_right(app, db, person) -> None:
    client = app.test_client()
    post_id = _post(client, person("party_member"))
    people = [person("resident", name=f"群众{i}") for i in range(12)]
    for who in people[:6]:  # half of them liked before
        client.put(f"/api/v1/posts/{post_id}/like", headers=who.headers)

    def toggle(i: int) -> None:
        # Those who liked take it back; the others like, each twice, all at once.
        method = "delete" if i < 6 else "put"
        for _ in range(2):
            answer = getattr(app.test_client(), method)(
                f"/api/v1/posts/{post_id}/like", headers=people[i].headers
            )
            assert answer.status_code == 200, answer.json

    assert _together(12, toggle) == []
    assert _counts(db, post_id) == (6, 6)
