"""Settings of the scoring service (environment variables; see the README's table)."""

from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import ServiceSettings


class ScoringSettings(ServiceSettings):
    service_name: str = "scoring"
    port: int = 8003

    # KPI "response rate": an assigned item counts as answered when it was started within this
    # many hours of its assignment (RESPONSE_LIMIT_HOURS).
    response_limit_hours: float = Field(24.0, gt=0, le=24 * 30)
    # Weights of the composite KPI on response, on-time and satisfaction rates, in percent;
    # they must add up to 100 (KPI_WEIGHT_RESPONSE / _ON_TIME / _SATISFACTION).
    kpi_weight_response: int = Field(30, ge=0, le=100)
    kpi_weight_on_time: int = Field(35, ge=0, le=100)
    kpi_weight_satisfaction: int = Field(35, ge=0, le=100)
    # The monthly 红黑榜: how many workers at the top and at the bottom (BOARD_SIZE).
    board_size: int = Field(10, ge=1, le=100)
    # The worker publishes last month's 红黑榜 once the month has ended (Asia/Shanghai),
    # looking every PUBLISH_BOARD_CHECK_SECONDS; publishing twice is refused, so copies agree.
    publish_board_monthly: bool = True
    publish_board_check_seconds: float = Field(3600.0, gt=0, le=86400)
    # Leaderboard page size when the caller gives none, and the most it may ask for.
    leaderboard_default_limit: int = Field(20, ge=1, le=500)

    @model_validator(mode="after")
    def _weights_add_up(self) -> ScoringSettings:
        total = self.kpi_weight_response + self.kpi_weight_on_time + self.kpi_weight_satisfaction
        if total != 100:
            raise ValueError(f"KPI weights must add up to 100, got {total}")
        return self

    @property
    def kpi_weights(self) -> dict[str, int]:
        return {
            "response_rate": self.kpi_weight_response,
            "on_time_rate": self.kpi_weight_on_time,
            "satisfaction_rate": self.kpi_weight_satisfaction,
        }
