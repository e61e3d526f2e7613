"""feed's commands: demo news and posts (idempotent, refused in production), the skeleton every
web process has."""

from __future__ import annotations

import argparse

import sqlalchemy as sa

from feed.commands import TOWNSHIP_FILE, load_villages, run_seed_demo, seed_demo
from feed.models import Article, Comment, Post
from shared.clock import utcnow


def test_health_and_openapi_answer(client) -> None:
    assert client.get("/healthz").status_code == 200
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    assert "/api/v1/news" in spec.json["paths"] and "/api/v1/posts" in spec.json["paths"]


def test_demo_news_and_posts_load_once_and_read_in_chinese(client, db, settings, person) -> None:
    villages = load_villages(TOWNSHIP_FILE)
    with db.transaction() as session:
        first = seed_demo(session, settings, villages, utcnow())
    with db.transaction() as session:
        second = seed_demo(session, settings, villages, utcnow())
    assert len(first.news) == 5 and first.posts == 5 and first.comments == 3
    assert (second.news, second.posts, second.comments, second.villages) == ([], 0, 0, 0)
    with db.transaction() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Article)) == 5
        assert session.scalar(sa.select(sa.func.count()).select_from(Post)) == 5
        assert session.scalar(sa.select(sa.func.count()).select_from(Comment)) == 3
    news = client.get("/api/v1/news").json["items"]
    assert news[0]["title"] == "关于冬季安全用电的通知" and news[0]["pinned"]
    posts = client.get("/api/v1/posts", headers=person("resident").headers).json["items"]
    assert posts[0]["village_name"] and posts[0]["author_name"].endswith("党支部")


def test_demo_data_is_refused_in_production(settings, capsys) -> None:
    production = settings.model_copy(update={"app_env": "production"})
    assert run_seed_demo(argparse.Namespace(township=TOWNSHIP_FILE), production) == 2
    assert "生产环境不能写入演示数据" in capsys.readouterr().err
