"""feed's own commands: ``seed-demo`` (demo news and party posts in Chinese, for ``make run``)
and ``publish-due`` (publish scheduled news whose time has come, as the worker does)."""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from feed import services
from feed.app import make_database
from feed.models import Article, Comment, Person, Post, Village
from feed.settings import FeedSettings
from shared.auth import Principal
from shared.cli import Command
from shared.clock import utcnow
from shared.settings import PROJECT_ROOT

TOWNSHIP_FILE = PROJECT_ROOT / "deploy" / "demo" / "township.yaml"
DEMO_NAMESPACE = uuid.UUID("6f1d3c1e-3b9a-5d5e-9a57-46ee0d3a5b65")


def _demo_id(key: str) -> uuid.UUID:
    return uuid.uuid5(DEMO_NAMESPACE, key)


@dataclass(frozen=True)
class DemoAuthor:
    key: str
    name: str
    roles: tuple[str, ...]
    village_code: str | None = None


# Stand-ins until intake's accounts reach feed (their ids are intake's own): the demo texts
# need authors. They hold no login and are never ``account_known``.
DEMO_AUTHORS = {
    "publicist": DemoAuthor("publicist", "乡宣传办", ("publicist",)),
    "admin": DemoAuthor("admin", "乡网格总管理员", ("admin",)),
    "party_v01": DemoAuthor("party_v01", "沙口集村党支部", ("party_member",), "V01"),
    "party_v02": DemoAuthor("party_v02", "东沙口集村党支部", ("party_member",), "V02"),
    "leader_v03": DemoAuthor("leader_v03", "网格长 李秀英", ("grid_leader",), "V03"),
    "resident": DemoAuthor("resident", "王大爷", ("resident",), "V01"),
}

DEMO_NEWS: list[dict[str, Any]] = [
    {
        "title": "关于冬季安全用电的通知",
        "category": "notice",
        "pinned": True,
        "summary": "入冬以来取暖用电增多，请各村注意用电安全。",
        "body": "各村、各网格：\n\n入冬以来，群众取暖用电明显增多。请做好以下工作：\n\n"
        "1. 网格员逐户排查私拉乱接电线；\n2. 提醒群众不要使用大功率电器过夜；\n"
        "3. 发现线路老化，请通过**我要办事**随手拍上报，乡里统一协调供电所处理。\n\n"
        "沙口集乡人民政府",
    },
    {
        "title": "沙口集乡“使命在线·服务365”平台上线两周年",
        "category": "key_work",
        "summary": "两年来平台受理群众诉求 2811 件，办结率 97.83%。",
        "body": "## 两年来的成绩\n\n自 2022 年 2 月平台上线以来，共受理群众诉求 **2811** 件，"
        "办结 2750 件，办结率 **97.83%**。其中用水用电 1287 件、道路交通 319 件、"
        "医疗养老 202 件、群众办事 160 件、邻里纠纷 99 件。\n\n"
        "> 小事不出村，大事不出乡，矛盾不上交。\n\n"
        "下一步，乡里将继续完善网格化管理，让群众的每一件事都有人管、有回音。",
    },
    {
        "title": "东沙口集村完成主街道路面硬化",
        "category": "progress",
        "summary": "群众反映多年的出行难题得到解决。",
        "body": "东沙口集村主街全长 1.2 公里，雨天泥泞、出行困难，群众多次通过平台反映。"
        "乡里协调县交通局立项，经过一个月施工，近日全面完工。\n\n"
        "村民说：“以前下雨出不了门，现在骑电动车都稳当了。”",
    },
    {
        "title": "乡卫生院开展65岁以上老人免费体检",
        "category": "progress",
        "body": "本月起，乡卫生院为全乡 65 岁以上老人开展免费健康体检，"
        "行动不便的老人可由网格员登记，医生上门服务。",
    },
    {
        "title": "网格员“回头看”工作要求",
        "category": "key_work",
        "body": "督导组对已办结事项按比例电话回访或上门回访，重点看三点：\n\n"
        "- 处理是否合法合规；\n- 是否真正落实；\n- 群众是否认可。\n\n"
        "回访未通过的事项将重新办理，并计入网格员考核。",
    },
]

DEMO_POSTS: list[dict[str, Any]] = [
    {
        "author": "party_v01",
        "tag": "activity",
        "text": "沙口集村党支部开展“主题党日”活动，全体党员到敬老院打扫卫生、包饺子，"
        "陪老人们拉家常。",
    },
    {
        "author": "party_v02",
        "tag": "good_deed",
        "text": "党员张建华连续三年义务为村里孤寡老人挑水、修电器，大家都叫他“张师傅”。"
        "为身边的好党员点赞！",
    },
    {
        "author": "leader_v03",
        "tag": "study",
        "text": "西沙口集村网格长组织网格员学习矛盾纠纷调解方法，"
        "结合近期几起邻里纠纷案例讨论怎样把矛盾化解在萌芽状态。",
    },
    {
        "author": "admin",
        "tag": "activity",
        "text": "乡党委组织各村党支部书记集中学习，交流网格化管理经验。",
    },
    {
        "author": "party_v01",
        "tag": "good_deed",
        "text": "大雪过后，村里党员志愿者一早就出动清扫主路积雪，保障群众出行安全。",
    },
]

DEMO_COMMENTS = [
    ("news", "东沙口集村完成主街道路面硬化", "路修好了，感谢乡里！"),
    ("news", "乡卫生院开展65岁以上老人免费体检", "我家老人行动不便，已经找网格员登记了。"),
    ("post", "党员张建华连续三年", "张师傅是我们村的好榜样。"),
]


@dataclass
class DemoSummary:
    villages: int = 0
    news: list[str] = field(default_factory=list)
    posts: int = 0
    comments: int = 0


def _principal(session: Session, author: DemoAuthor, villages: dict[str, uuid.UUID]) -> Principal:
    """The demo author's row in ``people`` (a stand-in) and a principal acting for them."""
    author_id = _demo_id(f"author:{author.key}")
    village_id = villages.get(author.village_code) if author.village_code else None
    if session.get(Person, author_id) is None:
        session.add(
            Person(
                id=author_id,
                name=author.name,
                roles=list(author.roles),
                village_id=village_id,
                active=True,
                account_known=False,
            )
        )
        session.flush()
    return Principal(
        id=author_id, roles=frozenset(author.roles), name=author.name, village_id=village_id
    )


def load_villages(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        {"id": uuid.UUID(str(v["id"])), "code": str(v["code"]), "name": str(v["name"])}
        for v in data["villages"]
    ]


def seed_demo(
    session: Session, settings: FeedSettings, villages: list[dict[str, Any]], now: datetime
) -> DemoSummary:
    """Demo news (published, through the admin's approval) and party posts; what is there
    already (by title or text) is left alone, so a second run adds nothing."""
    summary = DemoSummary()
    for item in villages:
        if session.get(Village, item["id"]) is None:
            # A stand-in name until dispatch's village.upserted (any revision) replaces it.
            session.add(Village(id=item["id"], name=item["name"], revision=-1))
            summary.villages += 1
    session.flush()
    codes = {v["code"]: v["id"] for v in villages}
    people = {key: _principal(session, a, codes) for key, a in DEMO_AUTHORS.items()}
    for age, item in enumerate(reversed(DEMO_NEWS)):
        exists = session.scalar(sa.select(Article.id).where(Article.title == item["title"]))
        if exists:
            continue
        fields = {k: v for k, v in item.items()}
        article = services.write_article(session, people["publicist"], fields)
        services.submit_article(session, people["publicist"], article.id, None)
        services.publish_article(
            session,
            people["admin"],
            article.id,
            publish_at=None,
            note="演示数据",
            now=now - timedelta(days=len(DEMO_NEWS) - age),
        )
        summary.news.append(item["title"])
    for age, item in enumerate(reversed(DEMO_POSTS)):
        exists = session.scalar(sa.select(Post.id).where(Post.text == item["text"]))
        if exists:
            continue
        author = people[item["author"]]
        services.publish_post(
            session,
            author,
            {"text": item["text"], "tag": item["tag"], "village_id": author.village_id},
            now=now - timedelta(hours=6 * (len(DEMO_POSTS) - age)),
        )
        summary.posts += 1
    session.flush()
    for kind, target, text in DEMO_COMMENTS:
        if session.scalar(sa.select(Comment.id).where(Comment.text == text)):
            continue
        if kind == "news":
            article_id = session.scalar(sa.select(Article.id).where(Article.title == target))
            if article_id:
                services.comment_on_article(session, settings, people["resident"], article_id, text)
                summary.comments += 1
        else:
            post_id = session.scalar(sa.select(Post.id).where(Post.text.startswith(target)))
            if post_id:
                services.comment_on_post(session, settings, people["resident"], post_id, text)
                summary.comments += 1
    return summary


def add_seed_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--township", type=Path, default=TOWNSHIP_FILE, help="村庄清单 villages YAML file"
    )


def run_seed_demo(args: argparse.Namespace, settings: FeedSettings) -> int:
    """Demo news and party posts for ``make run``; never in production."""
    if settings.is_production:
        print(
            "生产环境不能写入演示数据 / seed-demo is refused when APP_ENV=production",
            file=sys.stderr,
        )
        return 2
    villages = load_villages(args.township)
    db = make_database(settings)
    try:
        with db.transaction() as session:
            summary = seed_demo(session, settings, villages, utcnow())
    finally:
        db.dispose()
    if summary.news or summary.posts or summary.comments:
        print(
            f"演示新闻 {len(summary.news)} 篇、党建动态 {summary.posts} 条、评论 "
            f"{summary.comments} 条已写入 / demo news, posts and comments added"
        )
    else:
        print("演示新闻和动态已存在 / demo news and posts are already there: nothing changed")
    return 0


def run_publish_due(args: argparse.Namespace, settings: FeedSettings) -> int:
    """Publish the scheduled news whose time has come now (the worker does it on its timer)."""
    db = make_database(settings)
    try:
        with db.transaction() as session:
            published = services.publish_due(session, utcnow())
    finally:
        db.dispose()
    print(f"已发布定时新闻 {len(published)} 篇 / {len(published)} scheduled article(s) published")
    return 0


COMMANDS: dict[str, Command] = {
    "seed-demo": Command(
        "写入演示新闻和党建动态 seed demo news and party posts (dev only)",
        add_seed_demo_arguments,
        run_seed_demo,
    ),
    "publish-due": Command(
        "发布到时的定时新闻 publish scheduled news whose time has come",
        lambda _parser: None,
        run_publish_due,
    ),
}
