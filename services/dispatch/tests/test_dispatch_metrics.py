"""dispatch's own series: the township's figures read from the running aggregates at scrape time,
and the scheduler's heartbeat and actions."""

from __future__ import annotations

from dispatch_helpers import assign

from dispatch import scheduler
from dispatch.metrics import SCHEDULER_ACTIONS, SCHEDULER_LAST_RUN, SCHEDULER_RUNS


def test_metrics_show_reports_per_village_and_category_by_state(client, town, report):
    first = report()
    report(category="road_traffic")
    report(village_id=town.village2)
    assign(client, first, town.admin, town.worker1)

    text = client.get("/metrics").data.decode()

    def line(village: str, category: str, state: str, n: int) -> str:
        return (
            f'issues_by_village{{category="{category}",service="dispatch",state="{state}",'
            f'village="{village}"}} {n:.1f}'
        )

    assert line("沙口集村", "water_power", "assigned", 1) in text
    assert line("沙口集村", "road_traffic", "reported", 1) in text
    assert line("王营村", "water_power", "reported", 1) in text
    assert "issue_ratings_by_village{" not in text  # nobody has rated yet


def test_a_scheduler_pass_moves_the_heartbeat_and_counts_what_it_did():
    def sample(metric, **labels):
        return metric.labels(**labels)._value.get()

    before_ok = sample(SCHEDULER_RUNS, service="dispatch", outcome="ok")
    before_closed = sample(SCHEDULER_ACTIONS, service="dispatch", action="closed")

    scheduler.record_pass("dispatch", scheduler.SchedulerReport(closed=2))

    assert sample(SCHEDULER_RUNS, service="dispatch", outcome="ok") == before_ok + 1
    assert sample(SCHEDULER_ACTIONS, service="dispatch", action="closed") == before_closed + 2
    assert sample(SCHEDULER_LAST_RUN, service="dispatch") > 0
