"""Settings of the dispatch service (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings

DEFAULT_DUE_HOURS = {
    "water_power": 24,
    "medical_elderly": 48,
    "road_traffic": 72,
    "neighbor_dispute": 72,
    "admin_affairs": 72,
    "other": 72,
}


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    port: int = 8002

    # Deadlines: per-category default when the admin gives none (JSON in DUE_HOURS_BY_CATEGORY).
    due_hours_by_category: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_DUE_HOURS))
    due_hours_default: int = Field(72, ge=1, le=24 * 90)
    reopen_due_hours: int = Field(48, ge=1, le=24 * 90)

    # Scheduler.
    scheduler_interval_seconds: float = Field(60.0, gt=0, le=3600)
    scheduler_batch_size: int = Field(500, ge=1, le=10_000)
    remind_before_hours: float = Field(4.0, ge=0, le=24 * 30)
    overdue_grace_hours: float = Field(24.0, ge=0, le=24 * 90)
    auto_close_days: float = Field(7.0, gt=0, le=365)
    callback_sample_share: float = Field(0.1, ge=0, le=1)

    ledger_prefix: str = Field("YN", pattern=r"^[A-Z]{1,6}$")

    def due_hours(self, category: str) -> int:
        return self.due_hours_by_category.get(category, self.due_hours_default)
