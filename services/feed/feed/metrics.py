"""Feed's own business series (the plumbing's series live in ``shared.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

NEWS_PUBLISHED = Counter(
    "feed_news_published_total", "News articles published, by category", ["service", "category"]
)
POSTS_PUBLISHED = Counter(
    "feed_posts_published_total", "Party-feed posts published, by tag", ["service", "tag"]
)
COMMENTS = Counter(
    "feed_comments_total",
    "Comments written, by target (news, post) and state (visible, pending)",
    ["service", "target", "state"],
)
COMMENTS_HELD = Counter(
    "feed_comments_held_total",
    "Comments held for moderation because they matched the word list",
    ["service", "target"],
)
LIKES = Counter(
    "feed_likes_total",
    "Likes that changed a post's count, by action (like, unlike)",
    ["service", "action"],
)
MODERATION = Counter(
    "feed_moderation_actions_total",
    "Admins' moderation actions, by target (comment, post) and action (hide, restore)",
    ["service", "target", "action"],
)
NEWS_VIEWS = Counter(
    "feed_news_views_total", "News views written to the database (in batches)", ["service"]
)
