"""WeChat mini-program login (``auth.code2Session``): a login code in, the resident's openid out.

The real host is a setting (``WECHAT_API_BASE``) so that tests point it at a local server that
answers the way WeChat does (see WECHAT.md). ``session_key`` never leaves this module: it is not
even kept on the result. ``WECHAT_MODE=dev`` takes the code itself as the openid, for ``make run``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import requests
from flask import Flask

from intake.settings import IntakeSettings
from shared.errors import (
    DomainError,
    Forbidden,
    Invalid,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)

log = logging.getLogger(__name__)

# WeChat answers 100 code2Session calls per user per minute before 45011.
RATE_LIMIT_RETRY_SECONDS = 60

UNAVAILABLE_MESSAGE = "微信登录服务暂时不可用，请稍后再试。"


@dataclass(frozen=True)
class WeChatIdentity:
    """Who WeChat says the resident is (never the session key)."""

    openid: str
    unionid: str | None = None


class WeChatLogin(Protocol):
    def code_to_session(self, code: str) -> WeChatIdentity: ...


def _invalid_code() -> DomainError:
    return Unauthorized(
        "微信登录凭证无效或已过期，请重新进入小程序后再试。", code="wechat_code_invalid"
    )


def _rate_limited() -> DomainError:
    return TooManyRequests(
        "微信登录过于频繁，请一分钟后再试。",
        code="wechat_rate_limited",
        retry_after=RATE_LIMIT_RETRY_SECONDS,
    )


def _blocked() -> DomainError:
    return Forbidden("微信判定该账号存在风险，暂时无法登录。", code="wechat_user_blocked")


def _busy() -> DomainError:
    return ServiceUnavailable(UNAVAILABLE_MESSAGE, code="wechat_unavailable")


# errcode → what the person is told; anything else is our configuration's fault (503, logged).
ERRCODES = {
    40029: _invalid_code,  # invalid code
    40163: _invalid_code,  # code already used
    45011: _rate_limited,
    40226: _blocked,
    -1: _busy,
}


class WeChatClient:
    """Calls ``{base}/sns/jscode2session`` with the app's id and secret."""

    def __init__(self, base_url: str, app_id: str, app_secret: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.app_secret = app_secret
        self.timeout = timeout

    def code_to_session(self, code: str) -> WeChatIdentity:
        """Exchange a single-use ``wx.login()`` code; errcode is checked even on HTTP 200."""
        if not self.app_id or not self.app_secret:
            raise ServiceUnavailable(
                "微信登录尚未配置（缺少小程序 AppID 或 AppSecret），请联系管理员。",
                code="wechat_not_configured",
            )
        try:
            response = requests.get(
                f"{self.base_url}/sns/jscode2session",
                params={
                    "appid": self.app_id,
                    "secret": self.app_secret,
                    "js_code": code,
                    "grant_type": "authorization_code",
                },
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            # Only the type: requests' messages carry the URL, and the URL carries the secret.
            log.warning("wechat jscode2session failed: %s", type(exc).__name__)
            raise _busy() from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            log.warning("wechat jscode2session answered HTTP %s without JSON", response.status_code)
            raise _busy()
        errcode = body.get("errcode") or 0
        if errcode != 0:
            make_error = ERRCODES.get(errcode)
            if make_error is None:
                log.error("wechat jscode2session errcode %s: %s", errcode, body.get("errmsg"))
                raise _busy()
            log.info("wechat jscode2session errcode %s", errcode)
            raise make_error()
        openid = body.get("openid")
        if response.status_code != 200 or not isinstance(openid, str) or not openid:
            log.warning("wechat jscode2session HTTP %s without openid", response.status_code)
            raise _busy()
        unionid = body.get("unionid")
        return WeChatIdentity(openid=openid, unionid=unionid if isinstance(unionid, str) else None)


class DevWeChatLogin:
    """``WECHAT_MODE=dev``: the code is the openid (settings refuse this in production)."""

    def code_to_session(self, code: str) -> WeChatIdentity:
        return WeChatIdentity(openid=code)


def make_wechat_login(settings: IntakeSettings) -> WeChatLogin:
    if settings.wechat_mode == "dev":
        return DevWeChatLogin()
    return WeChatClient(
        settings.wechat_api_base,
        settings.wechat_app_id,
        settings.wechat_app_secret,
        settings.wechat_timeout_seconds,
    )


def wechat_login_for(app: Flask) -> WeChatLogin:
    """The app's WeChat login, built on first use from its settings."""
    login = app.extensions.get("wechat_login")
    if login is None:
        login = app.extensions["wechat_login"] = make_wechat_login(app.extensions["settings"])
    return login


# --- the resident's phone number (``phonenumber.getPhoneNumber``) --------------------------------

PHONE_UNAVAILABLE_MESSAGE = "微信手机号服务暂时不可用，请稍后再试，或手动填写手机号。"
# WeChat's credential errors: the cached access token is no longer good; fetch a new one.
TOKEN_ERRCODES = frozenset({40001, 42001, 40014})
# Refresh the access token this long before WeChat says it expires (WECHAT.md).
TOKEN_REFRESH_MARGIN_SECONDS = 300


class WeChatPhone(Protocol):
    def phone_number(self, code: str) -> str: ...


def _phone_busy() -> DomainError:
    return ServiceUnavailable(PHONE_UNAVAILABLE_MESSAGE, code="wechat_unavailable")


def _phone_code_invalid() -> DomainError:
    return Invalid(
        "微信手机号授权已失效，请重新点击获取手机号。",
        code="wechat_phone_code_invalid",
        details={"code": ["微信手机号授权已失效，请重新获取。"]},
    )


def _phone_rate_limited() -> DomainError:
    return TooManyRequests(
        "获取手机号过于频繁，请一分钟后再试。",
        code="wechat_rate_limited",
        retry_after=RATE_LIMIT_RETRY_SECONDS,
    )


PHONE_ERRCODES = {40029: _phone_code_invalid, 45011: _phone_rate_limited, -1: _phone_busy}


class WeChatPhoneClient:
    """Exchanges a ``getPhoneNumber`` button code for the number, server-side.

    The app's access token comes from ``/cgi-bin/stable_token`` (it does not invalidate the
    token other processes hold), is cached until a few minutes before it expires, and is fetched
    again at once when WeChat answers that it is invalid or expired.
    """

    def __init__(self, base_url: str, app_id: str, app_secret: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.app_secret = app_secret
        self.timeout = timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._token_until = 0.0

    def _post(self, path: str, body: dict, params: dict | None = None) -> dict:
        try:
            response = requests.post(
                f"{self.base_url}{path}", json=body, params=params, timeout=self.timeout
            )
            answer = response.json()
        except requests.RequestException as exc:
            # Only the type: the URL carries the token, the body the secret.
            log.warning("wechat %s failed: %s", path, type(exc).__name__)
            raise _phone_busy() from None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            log.warning("wechat %s answered without JSON", path)
            raise _phone_busy()
        return answer

    def _access_token(self, *, force: bool = False) -> str:
        with self._lock:
            if not force and self._token and time.monotonic() < self._token_until:
                return self._token
            answer = self._post(
                "/cgi-bin/stable_token",
                {
                    "grant_type": "client_credential",
                    "appid": self.app_id,
                    "secret": self.app_secret,
                    "force_refresh": False,
                },
            )
            token = answer.get("access_token")
            if (answer.get("errcode") or 0) != 0 or not isinstance(token, str) or not token:
                log.error(
                    "wechat stable_token errcode %s: %s",
                    answer.get("errcode"),
                    answer.get("errmsg"),
                )
                raise _phone_busy()
            expires_in = answer.get("expires_in")
            lifetime = expires_in if isinstance(expires_in, int) and expires_in > 0 else 7200
            self._token = token
            self._token_until = time.monotonic() + max(0, lifetime - TOKEN_REFRESH_MARGIN_SECONDS)
            return token

    def phone_number(self, code: str) -> str:
        """The number WeChat confirmed for this single-use code (errcode checked on HTTP 200)."""
        if not self.app_id or not self.app_secret:
            raise ServiceUnavailable(
                "微信手机号服务尚未配置（缺少小程序 AppID 或 AppSecret），请手动填写手机号。",
                code="wechat_not_configured",
            )
        answer: dict = {}
        for attempt in range(2):
            token = self._access_token(force=attempt > 0)
            answer = self._post(
                "/wxa/business/getuserphonenumber", {"code": code}, {"access_token": token}
            )
            if (answer.get("errcode") or 0) not in TOKEN_ERRCODES:
                break
            log.info("wechat access token refused (errcode %s); new token", answer["errcode"])
        errcode = answer.get("errcode") or 0
        if errcode != 0:
            make_error = PHONE_ERRCODES.get(errcode)
            if make_error is None:
                log.error("wechat getuserphonenumber errcode %s: %s", errcode, answer.get("errmsg"))
                raise _phone_busy()
            raise make_error()
        info = answer.get("phone_info")
        number = info.get("purePhoneNumber") if isinstance(info, dict) else None
        if not isinstance(number, str) or not number:
            log.warning("wechat getuserphonenumber answered without a number")
            raise _phone_busy()
        return number


class DevWeChatPhone:
    """``WECHAT_MODE=dev``: the code is the phone number (settings refuse this in production)."""

    def phone_number(self, code: str) -> str:
        return code


def wechat_phone_for(app: Flask) -> WeChatPhone:
    """The app's WeChat phone-number client, built on first use (it caches the access token)."""
    client = app.extensions.get("wechat_phone")
    if client is None:
        settings: IntakeSettings = app.extensions["settings"]
        client = (
            DevWeChatPhone()
            if settings.wechat_mode == "dev"
            else WeChatPhoneClient(
                settings.wechat_api_base,
                settings.wechat_app_id,
                settings.wechat_app_secret,
                settings.wechat_timeout_seconds,
            )
        )
        app.extensions["wechat_phone"] = client
    return client
