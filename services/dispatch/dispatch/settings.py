"""Settings of the dispatch service (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field, field_validator

from shared.settings import ServiceSettings

DEFAULT_DUE_HOURS = {
    "water_power": 24,
    "medical_elderly": 48,
    "road_traffic": 72,
    "neighbor_dispute": 72,
    "admin_affairs": 72,
    "other": 72,
}

# The time limit at each level above the grid, counted afresh when the item reaches it.
DEFAULT_LEVEL_DUE_HOURS = {"township": 72, "area_leader": 120, "county": 240}


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    port: int = 8002

    # Deadlines: per-category default when the admin gives none (JSON in DUE_HOURS_BY_CATEGORY).
    due_hours_by_category: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_DUE_HOURS))
    due_hours_default: int = Field(72, ge=1, le=24 * 90)
    reopen_due_hours: int = Field(48, ge=1, le=24 * 90)
    # Hours at each level above the grid (JSON in LEVEL_DUE_HOURS): an escalated item gets a new
    # deadline by its new level's limit, and so does an item reopened at that level (at the grid
    # level a reopen gets REOPEN_DUE_HOURS, an admin's override to the grid the category default).
    level_due_hours: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_LEVEL_DUE_HOURS))

    # Scheduler.
    scheduler_interval_seconds: float = Field(60.0, gt=0, le=3600)
    scheduler_batch_size: int = Field(500, ge=1, le=10_000)
    remind_before_hours: float = Field(4.0, ge=0, le=24 * 30)
    overdue_grace_hours: float = Field(24.0, ge=0, le=24 * 90)
    auto_close_days: float = Field(7.0, gt=0, le=365)
    callback_sample_share: float = Field(0.1, ge=0, le=1)
    # The daily digest of callbacks waiting (callbacks.pending): from this hour (Asia/Shanghai).
    callback_digest_hour: int = Field(9, ge=0, le=23)

    ledger_prefix: str = Field("YN", pattern=r"^[A-Z]{1,6}$")

    # Public township figures (the mini-program's home page): kept this long in each process.
    public_figures_cache_seconds: int = Field(60, ge=0, le=24 * 3600)
    # Likely duplicates: same village and category, reported within this many hours of each
    # other and (when both have coordinates) within this many metres.
    duplicate_radius_meters: float = Field(200.0, gt=0, le=50_000)
    duplicate_window_hours: float = Field(72.0, gt=0, le=24 * 90)

    @field_validator("level_due_hours")
    @classmethod
    def _level_due_hours(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = set(value) - set(DEFAULT_LEVEL_DUE_HOURS)
        if unknown:
            raise ValueError(f"unknown levels {sorted(unknown)}; use township, area_leader, county")
        if any(not 1 <= hours <= 24 * 365 for hours in value.values()):
            raise ValueError("each level's hours must be between 1 and 8760")
        return {**DEFAULT_LEVEL_DUE_HOURS, **value}

    def due_hours(self, category: str) -> int:
        return self.due_hours_by_category.get(category, self.due_hours_default)

    def level_hours(self, level: str, category: str) -> int:
        """The time limit of an item arriving at ``level`` (the grid: its category's)."""
        if level == "grid":
            return self.due_hours(category)
        return self.level_due_hours[level]

    def reopen_hours(self, level: str) -> int:
        """The time limit of an item reopened at ``level``."""
        if level == "grid":
            return self.reopen_due_hours
        return self.level_due_hours[level]
