"""Open311 GeoReport v2 edge (filled in by the Open311 work)."""

from flask import Blueprint

blp = Blueprint("open311", __name__, url_prefix="/open311/v2")
