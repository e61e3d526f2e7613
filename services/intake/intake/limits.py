"""Rate limits (flask-limiter): Redis when REDIS_URL is set, memory otherwise.

Limits are keyed by the signed-in user for reports and uploads (a whole village may share one
carrier address), by username and address and by address alone for password login, by address
for WeChat login. The address is the client's as ProxyFix found it (``TRUSTED_PROXY_HOPS``).
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from shared.auth import current_principal

limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


def init_limiter(app: Flask, settings) -> None:
    app.config["RATELIMIT_STORAGE_URI"] = settings.redis_url or "memory://"
    app.config["RATELIMIT_KEY_PREFIX"] = f"service365-{settings.service_name}"
    app.config["RATELIMIT_HEADERS_ENABLED"] = True
    limiter.init_app(app)


def user_key() -> str:
    """The caller's user id (401 first if there is no valid token)."""
    principal = current_principal()
    return f"user:{principal.id}"


def login_username_key() -> str:
    """One username from one address: tries for a username from elsewhere are not held back."""
    body = request.get_json(silent=True) or {}
    username = body.get("username") if isinstance(body, dict) else None
    return f"login-user:{str(username or '').strip().lower()[:64]}@{get_remote_address()}"


def settings_limit(name: str):
    """A limit string read from the app's settings at request time (each limit is a setting)."""

    def read() -> str:
        from flask import current_app

        return getattr(current_app.extensions["settings"], name)

    return read
