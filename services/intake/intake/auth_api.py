"""Routes for login and account management (filled in by the accounts work)."""

from flask_smorest import Blueprint

blp = Blueprint("auth", __name__, url_prefix="/api/v1", description="登录与账号 Login and accounts")
