"""Routes for reports (我要办事), photos, categories and villages."""

from flask_smorest import Blueprint

blp = Blueprint("reports", __name__, url_prefix="/api/v1", description="群众办事 Reports")
